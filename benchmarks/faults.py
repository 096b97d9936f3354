"""Fault benchmark: hostile inputs and kill-and-resume against the real ``shardguard`` command.

Run by hand (not part of the test suite)::

    python benchmarks/faults.py [--work DIR] [--resumes 20] [--seed 0]

1. A catalogue of hostile inputs (files, folders, rows, configs, output paths,
   concurrent runs), each next to one good shard, each run as a user runs it:
   ``python -m shardguard ...`` in a subprocess with a timeout. Every case says
   what a *clear error* is for it: exit 2 with one line naming the problem
   (usage and config), exit 1 with the hostile shard failed by a one-line reason
   naming it while the good shard completes, or the hostile rows ``invalid`` with
   a detail naming the column, the counts adding up.
2. Kill-and-resume: a multi-shard scan SIGKILLed at a random point of pass 1 or
   pass 2, rerun, and compared with an uninterrupted run (every quarantine and
   scores table equal).

It prints one line: inputs tried, clear errors, crashes (a traceback, a signal,
an unexpected exit code), rows lost or changed (counts that do not add up, a
good shard's rows missing, a resumed table that differs), hangs (past the
timeout) and identical resumes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
GOOD = REPO / "data" / "samples" / "sms_000.parquet"
SST2 = REPO.parent / "shared" / "data" / "sst2_glue" / "train.parquet"
FAST = ["--embedder", "hashing", "--id-column", "id", "--label-column", "label", "--no-progress"]
TIMEOUT = 60


@dataclass
class Outcome:
    clear: bool = False
    crash: bool = False
    lost: bool = False
    hang: bool = False
    note: str = ""


def run(args: list[str], timeout: int = TIMEOUT, **kw) -> subprocess.CompletedProcess | None:
    """``python -m shardguard ARGS``; None when it had to be killed after ``timeout`` seconds."""
    try:
        return subprocess.run([sys.executable, "-m", "shardguard", *args], capture_output=True, text=True,
                              timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        return None


def crashed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode not in (0, 1, 2) or "Traceback" in proc.stderr


def manifest_of(out: Path) -> dict | None:
    try:
        return json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def counts_add_up(m: dict, good_rows: int) -> bool:
    ok = [s for s in m["shards"] if s["status"] == "ok"]
    good = [s for s in ok if s["name"].endswith("good.parquet")]
    return all(s["rows"] == s["clean"] + s["quarantined"] for s in ok) and \
        (not good or good[0]["rows"] == good_rows)


# -- the catalogue --------------------------------------------------------------------------------
# Each case builds its input folder and returns what to check: ("shard", name) -- the named shard
# must fail with a one-line reason naming it; ("rows", name, n_rows, n_invalid) -- the shard is read
# with n_rows rows, n_invalid of them invalid with a detail; ("usage", args) -- the command must exit
# 2 with one line; ("exit", args, code, text) -- another command with its expected exit and message.
Case = Callable[[Path], tuple]


def _jsonl(d: Path, name: str, body: str | bytes) -> None:
    (d / name).write_bytes(body if isinstance(body, bytes) else body.encode("utf-8"))


def _rows(objs) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def _ok_rows(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"r{i}", "text": f"an ordinary message number {i} about the weather", "label": "ham"}
            for i in range(start, start + n)]


def catalogue() -> dict[str, Case]:
    c: dict[str, Case] = {}

    def shard(name):
        return ("shard", name)

    # files that are not shards
    c["dangling symlink"] = lambda d: ((d / "x.jsonl").symlink_to(d / "gone.jsonl"), shard("x.jsonl"))[1]
    c["symlink loop"] = lambda d: ((d / "x.jsonl").symlink_to(d / "x.jsonl"), shard("x.jsonl"))[1]
    c["FIFO named like a shard"] = lambda d: (os.mkfifo(d / "x.jsonl"), shard("x.jsonl"))[1]
    c["link to /dev/zero"] = lambda d: ((d / "x.parquet").symlink_to("/dev/zero"), shard("x.parquet"))[1]
    c["link to /dev/urandom"] = lambda d: ((d / "x.jsonl").symlink_to("/dev/urandom"), shard("x.jsonl"))[1]
    c["link to /dev/null"] = lambda d: ((d / "x.arrow").symlink_to("/dev/null"), shard("x.arrow"))[1]
    c["empty parquet file"] = lambda d: ((d / "x.parquet").write_bytes(b""), shard("x.parquet"))[1]
    c["truncated parquet"] = lambda d: ((d / "x.parquet").write_bytes(GOOD.read_bytes()[:3000]), shard("x.parquet"))[1]
    c["random bytes as parquet"] = lambda d: ((d / "x.parquet").write_bytes(os.urandom(5000)), shard("x.parquet"))[1]
    c["random bytes as arrow"] = lambda d: ((d / "x.arrow").write_bytes(os.urandom(5000)), shard("x.arrow"))[1]
    c["PAR1 magic, garbage inside"] = lambda d: ((d / "x.parquet").write_bytes(b"PAR1" + b"\0" * 500 + b"PAR1"),
                                                shard("x.parquet"))[1]
    c["plain text named .jsonl.gz"] = lambda d: (_jsonl(d, "x.jsonl.gz", _rows(_ok_rows(3))), shard("x.jsonl.gz"))[1]
    c["truncated gzip"] = lambda d: (_jsonl(d, "x.jsonl.gz", gzip.compress(_rows(_ok_rows(200)).encode())[:300]),
                                     shard("x.jsonl.gz"))[1]
    c["JSON nested 30,000 deep"] = lambda d: (_jsonl(d, "x.jsonl", '{"id": "a", "text": ' + "[" * 30000 + "]" * 30000
                                                     + "}\n"), shard("x.jsonl"))[1]
    c["JSON nested 100,000 deep (objects)"] = lambda d: (_jsonl(d, "x.jsonl", '{"a":' * 100000 + "1" + "}" * 100000),
                                                         shard("x.jsonl"))[1]
    c["invalid UTF-8 in a row"] = lambda d: (_jsonl(d, "x.jsonl", _rows(_ok_rows(2)).encode() + b'{"id": "z", "text": "caf\xe9"}\n'),
                                             shard("x.jsonl"))[1]
    c["UTF-16 file"] = lambda d: (_jsonl(d, "x.jsonl", _rows(_ok_rows(2)).encode("utf-16")), shard("x.jsonl"))[1]
    c["broken JSON line"] = lambda d: (_jsonl(d, "x.jsonl", _rows(_ok_rows(2)) + "{oops\n"), shard("x.jsonl"))[1]
    c["unterminated string at EOF"] = lambda d: (_jsonl(d, "x.jsonl", _rows(_ok_rows(2)) + '{"text": "abc'), shard("x.jsonl"))[1]
    c["missing text column"] = lambda d: (pq.write_table(pa.table({"id": ["a"], "body": ["x"], "label": ["ham"]}), d / "x.parquet"),
                                          shard("x.parquet"))[1]
    c["integer text column"] = lambda d: (pq.write_table(pa.table({"id": ["a"], "text": [1], "label": ["ham"]}), d / "x.parquet"),
                                          shard("x.parquet"))[1]
    c["list<string> text column"] = lambda d: (pq.write_table(pa.table({"id": ["a"], "text": [["x"]], "label": ["h"]}),
                                                              d / "x.parquet"), shard("x.parquet"))[1]
    c["repeated id"] = lambda d: (_jsonl(d, "x.jsonl", _rows(_ok_rows(3) + _ok_rows(1))), shard("x.jsonl"))[1]
    c["unreadable sub-folder"] = _unreadable_folder

    # hostile rows: read, marked invalid where they must be, nothing lost
    def rows(name, body, n, invalid):
        def make(d):
            _jsonl(d, name, body)
            return ("rows", name, n, invalid)
        return make

    c["two objects on one line"] = rows("x.jsonl", json.dumps(_ok_rows(1)[0]) + " " + json.dumps(_ok_rows(1, 1)[0]) + "\n", 2, 0)
    c["one object over three lines"] = rows("x.jsonl", json.dumps(_ok_rows(1)[0], indent=1) + "\n", 1, 0)
    c["no newline at EOF"] = rows("x.jsonl", _rows(_ok_rows(3)).rstrip("\n"), 3, 0)
    c["CRLF line ends"] = rows("x.jsonl", _rows(_ok_rows(3)).replace("\n", "\r\n"), 3, 0)
    c["UTF-8 byte order mark"] = rows("x.jsonl", "\ufeff" + _rows(_ok_rows(3)), 3, 0)
    c["blank lines everywhere"] = rows("x.jsonl", "\n\n" + _rows(_ok_rows(3)).replace("\n", "\n\n  \n"), 3, 0)
    c["empty jsonl"] = rows("x.jsonl", "", 0, 0)
    c["a top-level array row"] = rows("x.jsonl", _rows(_ok_rows(2)) + "[1, 2]\n", 3, 1)
    c["a top-level string row"] = rows("x.jsonl", _rows(_ok_rows(2)) + '"hello"\n', 3, 1)
    c["string label among integers"] = rows("x.jsonl", _rows([{**o, "label": i % 2} for i, o in enumerate(_ok_rows(4))]
                                                             + [{**_ok_rows(1, 9)[0], "label": "spam"}]), 5, 0)
    c["integer ids among strings"] = rows("x.jsonl", _rows([{**o, "id": i} for i, o in enumerate(_ok_rows(2))] + _ok_rows(2, 5)), 4, 0)
    c["object as label"] = rows("x.jsonl", _rows(_ok_rows(2) + [{**_ok_rows(1, 7)[0], "label": {"a": 1}}]), 3, 1)
    c["number as text"] = rows("x.jsonl", _rows(_ok_rows(2) + [{"id": "n", "text": 12345, "label": "ham"}]), 3, 1)
    c["null and empty text"] = rows("x.jsonl", _rows(_ok_rows(2) + [{"id": "n", "text": None, "label": "ham"},
                                                                    {"id": "e", "text": "  \t ", "label": "ham"}]), 4, 2)
    c["null id"] = rows("x.jsonl", _rows(_ok_rows(2) + [{"id": None, "text": "no id here at all", "label": "ham"}]), 3, 1)
    c["text over max_text_chars"] = rows("x.jsonl", _rows(_ok_rows(2) + [{"id": "big", "text": "x" * 100_001, "label": "ham"}]), 3, 1)
    c["NaN and huge numbers as labels"] = rows("x.jsonl", _rows(_ok_rows(2)) + '{"id": "n", "text": "nan label here", "label": NaN}\n'
                                               + '{"id": "h", "text": "huge label here", "label": 1' + "0" * 30 + "}\n", 4, 0)
    c["NUL and escape codes in text and id"] = rows("x.jsonl", _rows(_ok_rows(2) + [{"id": "\x1b[31mred\x1b[0m", "text": "nul \x00 here",
                                                                                      "label": "ham"}]), 3, 0)
    c["brackets in the file name"] = rows("[red]x[0].jsonl", _rows(_ok_rows(3)), 3, 0)

    # usage and config errors: exit 2, one line, before any work
    def usage(*extra, out="out"):
        def make(d):
            _jsonl(d, "x.jsonl", _rows(_ok_rows(3)))
            return ("usage", [str(d), "--out", str(d.parent / out) if out != "IN" else str(d), *FAST, *extra])
        return make

    c["--set broken YAML"] = usage("--set", "detectors.outlier.threshold_z=[1,")
    c["--set NaN threshold"] = usage("--set", "detectors.spectral.threshold_z=.nan")
    c["--set negative batch size"] = usage("--set", "input.batch_size=-1")
    c["--set absurd batch size"] = usage("--set", "input.batch_size=1000000000000")
    c["--set absurd reservoir"] = usage("--set", "fit.reservoir_size=100000000000")
    c["--set enabled: 'no'"] = usage("--set", "detectors.outlier.enabled='no'")
    c["--set unknown key"] = usage("--set", "near_duplicates.treshold=0.9")
    c["--set wrong type"] = usage("--set", "near_duplicates.num_perm=lots")
    c["--disable unknown detector"] = usage("--disable", "nope")
    c["--out is the input"] = usage(out="IN")
    c["--out inside the input"] = lambda d: (_jsonl(d, "x.jsonl", _rows(_ok_rows(3))),
                                             ("usage", [str(d), "--out", str(d / "out"), *FAST]))[1]
    c["--out is a file"] = lambda d: (_jsonl(d, "x.jsonl", _rows(_ok_rows(3))), (d.parent / "f").write_text("x"),
                                      ("usage", [str(d), "--out", str(d.parent / "f"), *FAST]))[2]
    c["config file not YAML"] = lambda d: ((d.parent / "c.yaml").write_text("a: [1,\n"), _jsonl(d, "x.jsonl", _rows(_ok_rows(3))),
                                           ("usage", [str(d), "--out", str(d.parent / "out"), "--config", str(d.parent / "c.yaml")]))[2]
    c["config file a list"] = lambda d: ((d.parent / "c.yaml").write_text("- 1\n"), _jsonl(d, "x.jsonl", _rows(_ok_rows(3))),
                                         ("usage", [str(d), "--out", str(d.parent / "out"), "--config", str(d.parent / "c.yaml")]))[2]

    # outputs and concurrent runs
    c["apply --to the input folder"] = _apply_case(lambda d, out: str(d), 2)
    c["apply --to OUT/quarantine"] = _apply_case(lambda d, out: str(out / "quarantine"), 2)
    c["verify after a shard swap"] = _verify_case
    c["second scan into a locked OUT"] = _lock_case
    return c


def _unreadable_folder(d: Path) -> tuple:
    sub = d / "locked"
    sub.mkdir()
    _jsonl(sub, "y.jsonl", _rows(_ok_rows(2)))
    sub.chmod(0)
    if os.geteuid() == 0:  # root reads it anyway: then it is simply read
        return ("rows", "locked/y.jsonl", 2, 0)
    return ("shard", "locked")


def _scan_first(d: Path) -> Path:
    _jsonl(d, "x.jsonl", _rows(_ok_rows(5)))
    out = d.parent / "out"
    proc = run(["-q", "scan", str(d), "--out", str(out), *FAST])
    assert proc is not None and proc.returncode == 0, proc and proc.stderr
    return out


def _apply_case(target, code):
    def make(d):
        out = _scan_first(d)
        return ("exit", ["apply", str(out), "--to", target(d, out)], code, "--to")
    return make


def _verify_case(d: Path) -> tuple:
    out = _scan_first(d)
    _jsonl(d, "x.jsonl", _rows(_ok_rows(5)).replace("ham", "spam", 1))
    return ("exit", ["verify", str(out)], 1, "input changed: x.jsonl")


def _lock_case(d: Path) -> tuple:
    out = d.parent / "out"
    _jsonl(d, "x.jsonl", _rows(_ok_rows(5)))
    holder = subprocess.Popen([sys.executable, "-c", "import time; from shardguard.io.outputs import OutputLock\n"
                               f"l = OutputLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    holder.stdout.readline()
    _HOLDERS.append(holder)
    return ("exit", ["scan", str(d), "--out", str(out), *FAST], 2, "is in use")


_HOLDERS: list[subprocess.Popen] = []


def judge(kind: tuple, d: Path, good_rows: int) -> Outcome:
    out = d.parent / "out"
    if kind[0] in ("usage", "exit"):
        args = ["scan", *kind[1]] if kind[0] == "usage" else kind[1]
        proc = run(args)
        if proc is None:
            return Outcome(hang=True)
        want = 2 if kind[0] == "usage" else kind[2]
        lines = [x for x in proc.stderr.strip().splitlines() if x.startswith("shardguard: error")]
        text = proc.stderr + proc.stdout
        clear = proc.returncode == want and (want != 2 or len(proc.stderr.strip().splitlines()) == 1 and lines) \
            and (kind[0] == "usage" or kind[3] in text)
        wrote = kind[0] == "usage" and (out / "quarantine").exists()
        return Outcome(clear=bool(clear) and not wrote, crash=crashed(proc), note=proc.stderr.strip()[-200:])
    shutil.copy(GOOD, d / "good.parquet")
    proc = run(["scan", str(d), "--out", str(out), *FAST])
    if proc is None:
        return Outcome(hang=True)
    m = manifest_of(out)
    if m is None:
        return Outcome(crash=True, note=proc.stderr[-300:])
    by = {s["name"]: s for s in m["shards"]}
    lost = not counts_add_up(m, good_rows) or by.get("good.parquet", {}).get("status") != "ok"
    if kind[0] == "shard":
        s = by.get(kind[1])
        clear = proc.returncode == 1 and s is not None and s["status"] != "ok" and "\n" not in s["status"] \
            and kind[1].split("/")[-1] in s["status"]
    else:
        _, name, n, invalid = kind
        s = by.get(name)
        clear = s is not None and s["status"] == "ok" and s["rows"] == n and s["invalid"] == invalid
        lost |= s is None or s.get("rows") != n
        if clear and invalid:
            q = pq.read_table(out / s["output"]).to_pylist()
            clear = sum(1 for r in q if r["detail"]) == invalid
        if clear and name == "x.jsonl" and "label" in (json.loads(_first_line(d / name)) or {}):
            scores = pq.read_table(out / "scores" / s["output"].split("/", 1)[1]).to_pylist()
            clear = all(r["label"] is not None for r in scores if r["status"] != "invalid")  # no label nulled
        if clear:  # apply writes exactly the clean rows
            clean = d.parent / "clean"
            ap = run(["apply", str(out), "--to", str(clean)])
            applied = manifest_of(clean) if ap is not None else None
            clear = ap is not None and ap.returncode == 0 and applied is not None and \
                all(a["rows_out"] == by[a["name"]]["clean"] for a in applied["shards"])
            lost |= not clear
    if "\x1b" in proc.stdout:
        clear = False
    return Outcome(clear=bool(clear), crash=crashed(proc), lost=lost, note=proc.stderr.strip()[-200:])


def _first_line(p: Path) -> str:
    try:
        line = p.read_text(encoding="utf-8").strip().splitlines()[0]
        json.loads(line)
        return line
    except (ValueError, IndexError, OSError):
        return "null"


# -- kill and resume -------------------------------------------------------------------------------
def _tables(out: Path) -> dict[str, pa.Table]:
    return {p.relative_to(out).as_posix(): pq.read_table(p)
            for sub in ("quarantine", "scores") for p in sorted((out / sub).glob("*.parquet"))}


def kill_and_resume(work: Path, n: int, rng: random.Random) -> tuple[int, int, int, int]:
    """(tried, identical, crashes, hangs) over ``n`` SIGKILLs at random points of pass 1 and pass 2."""
    data = work / "resume-data"
    data.mkdir()
    table = pq.read_table(SST2).slice(0, 24000)
    for i in range(6):
        pq.write_table(table.slice(i * 4000, 4000), data / f"part-{i}.parquet", row_group_size=1000)
    ref = work / "resume-ref"
    proc = run(["-q", "scan", str(data), "--out", str(ref), *FAST], timeout=600)
    assert proc is not None and proc.returncode == 0, proc and proc.stderr
    want = _tables(ref)
    identical = crashes = hangs = 0
    for it in range(n):
        out = work / f"resume-{it}"
        phase, k = rng.choice(["pass1", "pass2"]), rng.randint(0, 5)
        extra = rng.uniform(0, 0.3)
        p = subprocess.Popen([sys.executable, "-m", "shardguard", "-q", "scan", str(data), "--out", str(out), *FAST],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def ready() -> bool:
            if phase == "pass1":
                return (out / ".work").is_dir() and len(list((out / ".work").glob("*.arrow"))) >= k
            m = manifest_of(out)
            return m is not None and m.get("run_key") is not None and len(m["shards"]) >= k and not m.get("complete")

        t0 = time.time()
        while p.poll() is None and time.time() - t0 < 300 and not ready():
            time.sleep(0.005)
        time.sleep(extra)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
        again = run(["-q", "scan", str(data), "--out", str(out), *FAST], timeout=600)
        if again is None:
            hangs += 1
            continue
        if crashed(again):
            crashes += 1
            continue
        got = _tables(out)
        if got.keys() == want.keys() and all(got[k].equals(want[k]) for k in want) \
                and not list(out.rglob(".tmp-*")) and not (out / ".lock").exists():
            identical += 1
        shutil.rmtree(out, ignore_errors=True)
    return n, identical, crashes, hangs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--resumes", type=int, default=20, help="kill-and-resume iterations (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="shardguard-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    good_rows = pq.read_metadata(GOOD).num_rows
    tried = clear = crashes = lost = hangs = 0
    try:
        for i, (name, make) in enumerate(catalogue().items()):
            d = work / f"case-{i:02d}" / "in"
            d.mkdir(parents=True)
            o = judge(make(d), d, good_rows)
            for h in _HOLDERS:
                h.kill()
                h.wait()
            _HOLDERS.clear()
            tried += 1
            clear += o.clear
            crashes += o.crash
            lost += o.lost
            hangs += o.hang
            if args.verbose or not o.clear or o.crash or o.lost or o.hang:
                flags = " ".join(k for k in ("clear", "crash", "lost", "hang") if getattr(o, k))
                print(f"  {name}: {flags or 'UNCLEAR'} {o.note!r}", file=sys.stderr)
            shutil.rmtree(work / f"case-{i:02d}", ignore_errors=True)
        r_tried, r_same, r_crash, r_hang = kill_and_resume(work, args.resumes, random.Random(args.seed))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"faults: {tried} hostile inputs tried, {clear} clear errors, {crashes + r_crash} crashes, "
          f"{lost} rows lost or changed, {hangs + r_hang} hangs; kill-and-resume: {r_same}/{r_tried} identical")


if __name__ == "__main__":
    main()
