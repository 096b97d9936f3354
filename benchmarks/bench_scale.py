"""Scale benchmark (issue 14): throughput and peak memory of both engines, 100k to 2M rows.

    python benchmarks/bench_scale.py [--data ../shared/data] [--cache /tmp/shardguard-bench-scale]
                                     [--local-sizes 100000 500000 2000000] [--ray-sizes 100000 500000]
                                     [--ray-cpus 2] [--ray-running] [--json bench-out/scale.json]

Run by hand, not a test. Every scan is ``python -m shardguard scan`` in a fresh process with
the default CPU embedder (static) and every knob at its default; unlabelled unless
``--labelled`` (then the label column below is read, the trigger detector counts n-grams and
gathers its candidates' rows: with labels that name each row's source many frequent n-grams
are pure on one label, and at 100k rows the fit then took 137 of the scan's 179 s, with
904,293 candidate rows).

Requires the Ray extra and psutil (``pip install -e '.[ray,dev]'``).

**Corpus.** The four larger shared sets, ~502k distinct texts: Wikipedia 2021 paragraphs
(label ``wikipedia``), TweetEval (label ``<task>:<label name>``), GoEmotions (its first label
name) and Stanford Alpaca (instruction, input and output joined; label ``instruction``). To
reach 2M rows each text appears in :data:`VARIANTS` variants: the text itself and copies with
1-3 seeded random character edits (substitute, insert or delete a letter), so the copies are
near-duplicates, not exact ones, as repeated web text is. The variants are shuffled with one
seed and cut into shards of :data:`SHARD_ROWS` rows; a size of ``n`` rows scans the first
``n / SHARD_ROWS`` shards, so a smaller set is a prefix of a larger one (the share of copies
grows with the size: a text's later variants meet earlier ones more often). The shards are
written once into ``--cache`` (not the repository) and reused.

**Measured**, per scan: wall time of the process (start to exit: Python start-up, model
load and Ray start included) and rows/s over it; the scan's own ``wall_s`` from report.json
(excludes start-up); peak RSS of the process (``wait4``'s ``ru_maxrss``: the largest single
process among it and its waited-for descendants) and the peak of the summed RSS of its process
tree, sampled every 0.2 s with psutil (for Ray: the driver, raylet, GCS and workers; pages of
Ray's shared object store count in every process that maps them, so this over-counts); and
report.json's ``state_sizes``: the near-duplicate index's ``nbytes`` (local; the Ray engine
reports the rows its partitioned reduce replayed, its largest component and partition, and the
edges the driver joined), the root features
(``StatementFeatures`` and label hashes of the indexed rows) and the trigger detector's
candidate rows (16 bytes each while gathered); and the disk the scan's ``OUT/.work`` held
(work files: texts and float16 embeddings; n-gram runs).

With ``--ray-running`` each Ray size is scanned a second time (``ray-running``) on a cluster
of ``--ray-cpus`` CPUs that ``ray start --head`` started once before the first scan, joined
with ``--ray-address``: a team's cluster runs between jobs, so the scan pays neither its
start nor its stop (Ray Data's helper actors start with the first scan that uses them).

**Targets** (issue 14): the Ray engine within 1.5x of the local engine's wall time at each
size; local peak-RSS growth from the smallest to the largest size no more than the growth of
the near-duplicate index (with its root features) plus 16 bytes per candidate row. Printed
beside it, what else grows with the copies: 57 B per copy in the clusters and the cluster
roots' table (``report.json["state_sizes"]["cluster_roots_bytes"]``: 32 B per cluster plus
its id's bytes).
Results are printed and written to ``--json`` after every scan, so a run cut short keeps
what it measured. The machine is shared: timings swing by up to 2x between runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from shardguard.bench.ray_cluster import running_cluster  # noqa: E402

#: Each distinct text appears this many times: itself, then copies with seeded edits.
VARIANTS = 4
SHARD_ROWS = 100_000
SEED = 14
#: Bytes a near-duplicate copy costs the clusters (their docstring): with the cluster roots'
#: table (measured, report.json), the bookkeeping that grows with the copies besides the index.
COPY_BYTES = 57
_LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)


def base_texts(data: Path) -> tuple[list[str], list[str]]:
    """Texts and labels of the four larger shared sets, empty texts dropped."""
    texts: list[str] = []
    labels: list[str] = []

    def add(ts: list, ls: list) -> None:
        for t, lab in zip(ts, ls):
            if t and t.strip():
                texts.append(t)
                labels.append(lab)

    wiki = pq.read_table(data / "wikipedia_2021" / "train.parquet", columns=["text"])
    add(wiki.column("text").to_pylist(), ["wikipedia"] * wiki.num_rows)
    tw = pq.read_table(data / "tweeteval" / "all.parquet", columns=["text", "label_name", "task"])
    add(tw.column("text").to_pylist(),
        [f"{task}:{name}" for task, name in zip(tw.column("task").to_pylist(), tw.column("label_name").to_pylist())])
    ge = pq.read_table(data / "goemotions" / "all.parquet", columns=["text", "label_names"])
    add(ge.column("text").to_pylist(), [names[0] if names else "none" for names in ge.column("label_names").to_pylist()])
    al = pq.read_table(data / "alpaca_full" / "train.parquet").to_pylist()
    add(["\n".join(p for p in (r["instruction"], r["input"], r["output"]) if p) for r in al], ["instruction"] * len(al))
    return texts, labels


def edited(text: str, rng: np.random.Generator) -> str:
    """``text`` with 1-3 random character edits (substitute, insert or delete one letter)."""
    chars = list(text)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(3))
        pos = int(rng.integers(len(chars) + (kind == 1)))
        letter = chr(int(_LETTERS[rng.integers(26)]))
        if kind == 0 and chars:
            chars[min(pos, len(chars) - 1)] = letter
        elif kind == 1:
            chars.insert(pos, letter)
        elif len(chars) > 1:
            del chars[min(pos, len(chars) - 1)]
    return "".join(chars)


def write_shards(data: Path, folder: Path, n_rows: int) -> list[Path]:
    """The first ``n_rows`` of the shuffled variant stream as Parquet shards (written once)."""
    n_shards = -(-n_rows // SHARD_ROWS)
    paths = [folder / f"part-{i:03d}.parquet" for i in range(n_shards)]
    if all(p.exists() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    texts, labels = base_texts(data)
    n_base = len(texts)
    rng = np.random.default_rng(SEED)
    order = rng.permutation(n_base * VARIANTS)[:n_rows]  # stream position -> variant * n_base + text
    for i, path in enumerate(paths):
        chunk = order[i * SHARD_ROWS : (i + 1) * SHARD_ROWS]
        out_t, out_l, out_id = [], [], []
        for code in chunk.tolist():
            variant, j = divmod(code, n_base)
            # each copy's edits seeded by its own code, so a shard's text does not depend on the size
            out_t.append(texts[j] if variant == 0 else edited(texts[j], np.random.default_rng([SEED, code])))
            out_l.append(labels[j])
            out_id.append(f"{j}-{variant}")
        tmp = path.with_suffix(".tmp")
        pq.write_table(pa.table({"id": out_id, "text": out_t, "label": out_l}), tmp)
        tmp.rename(path)
    print(f"wrote {n_shards} shards of {SHARD_ROWS:,} rows ({n_base:,} distinct texts x {VARIANTS}) "
          f"in {time.perf_counter() - t:.0f} s", flush=True)
    return paths


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # exited between the listing and the read
            pass
    return total


def _du(folder: Path) -> int:
    """Bytes of the files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_scan(shards: list[Path], out: Path, engine: str, ray_cpus: int, labelled: bool,
             ray_address: str | None = None) -> dict:
    """One scan in a fresh process: wall time, peak RSS, and report.json's figures. With
    ``ray_address`` the Ray engine joins that running cluster instead of starting one."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "shardguard", "-q", "scan", *map(str, shards), "--out", str(out),
           "--id-column", "id", "--embedder", "static", "--no-progress"]
    if labelled:
        cmd += ["--label-column", "label"]
    if engine == "ray":
        cmd += ["--engine", "ray"] + (["--ray-address", ray_address] if ray_address else ["--ray-cpus", str(ray_cpus)])
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    if ray_address:  # `ray start` clusters use token authentication (Ray >= 2.59): join with it
        env["RAY_AUTH_MODE"] = "token"
    t = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tree = psutil.Process(child.pid)
    peak_tree = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peak_tree[0] = max(peak_tree[0], _tree_rss(tree))
            except psutil.Error:
                return
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = child.stdout.read()  # drained before waiting, so a chatty child cannot block
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t
    done.set()
    sampler.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:  # 1: a shard failed
        raise RuntimeError(f"scan failed ({child.returncode}):\n{output[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    rows = report["totals"]["rows"]
    result = {
        "engine": "ray-running" if ray_address else engine,
        "rows": rows,
        "shards": len(shards),
        "process_wall_s": round(wall, 1),
        "process_rows_per_s": round(rows / wall),
        "scan_wall_s": report["wall_s"],
        "scan_rows_per_s": report["throughput_rows_per_s"],
        "timings_s": report["timings_s"],
        "peak_rss_mib": round(usage.ru_maxrss / 1024),
        "peak_tree_rss_mib": round(peak_tree[0] / 2**20),
        "state_sizes": report.get("state_sizes", {}),
        "reasons": report["reasons"],
        "quarantined": report["totals"].get("quarantined"),
    }
    result["disk_mib"] = {name: round(_du(out / ".work" / name) / 2**20, 1) for name in ("ngrams", "")}
    result["disk_mib"]["work_files"] = round(result["disk_mib"].pop("") - result["disk_mib"]["ngrams"], 1)
    shutil.rmtree(out, ignore_errors=True)  # the work files are ~1 KB a row
    return result


def summarise(results: list[dict]) -> dict:
    """The issue's two targets, from the scans that ran."""
    local = {r["rows"]: r for r in results if r["engine"] == "local"}
    summary: dict = {}
    for engine in ("ray", "ray-running"):
        ray = {r["rows"]: r for r in results if r["engine"] == engine}
        for n in sorted(set(local) & set(ray)):
            summary.setdefault(f"{engine.replace('-', '_')}_over_local_wall", {})[n] = {
                "process": round(ray[n]["process_wall_s"] / local[n]["process_wall_s"], 2),
                "scan": round(ray[n]["scan_wall_s"] / local[n]["scan_wall_s"], 2),
            }
    if len(local) >= 2:
        lo, hi = local[min(local)], local[max(local)]

        def state(r: dict) -> dict:
            s = r["state_sizes"]
            cand = sum(v for k, v in s.items() if k.endswith("_candidate_rows"))
            return {"index": s.get("near_duplicate_index_bytes", 0), "features": s.get("root_features_bytes", 0),
                    "candidates": 16 * cand}

        a, b = state(lo), state(hi)
        growth = {k: b[k] - a[k] for k in a}
        summary["local_growth"] = {
            "from_rows": lo["rows"], "to_rows": hi["rows"],
            "peak_rss_mib": hi["peak_rss_mib"] - lo["peak_rss_mib"],
            "index_mib": round(growth["index"] / 2**20, 1),
            "root_features_mib": round(growth["features"] / 2**20, 1),
            "candidate_rows_mib": round(growth["candidates"] / 2**20, 1),
            "allowance_mib": round(sum(growth.values()) / 2**20, 1),
        }
        summary["local_growth"]["met"] = summary["local_growth"]["peak_rss_mib"] <= summary["local_growth"]["allowance_mib"]
        # What else grows with the copies: the clusters' arrays (57 B a copy, stages.DuplicateClusters)
        # and the cluster roots' table (scoring.RootTable, its nbytes in report.json).
        copies = [r["rows"] - r["state_sizes"]["near_duplicate_roots"] for r in (lo, hi)]
        summary["local_growth"]["duplicate_copies_mib"] = round((copies[1] - copies[0]) * COPY_BYTES / 2**20, 1)
        if all("cluster_roots_bytes" in r["state_sizes"] for r in (lo, hi)):
            grown = hi["state_sizes"]["cluster_roots_bytes"] - lo["state_sizes"]["cluster_roots_bytes"]
            summary["local_growth"]["cluster_roots_mib"] = round(grown / 2**20, 1)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/shardguard-bench-scale"))
    ap.add_argument("--local-sizes", type=int, nargs="*", default=[100_000, 500_000, 2_000_000])
    ap.add_argument("--ray-sizes", type=int, nargs="*", default=[100_000, 500_000])
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--ray-running", action="store_true",
                    help="also scan each Ray size on a cluster started once beforehand (ray start --head, "
                         "--ray-cpus CPUs) with --ray-address: a scan without the cluster's start and stop")
    ap.add_argument("--labelled", action="store_true", help="scan with the label column (default: unlabelled)")
    ap.add_argument("--json", type=Path, default=REPO / "bench-out" / "scale.json")
    args = ap.parse_args()

    largest = max(args.local_sizes + args.ray_sizes)
    shards = write_shards(args.data, args.cache / "shards", largest)
    # Each Ray size right after the local scan of the same size, so both meet similar load
    # from the other jobs on the machine; the largest local size last.
    plan = []
    for n in sorted(set(args.local_sizes) | set(args.ray_sizes)):
        plan += [("local", n)] * (n in args.local_sizes) + [("ray", n)] * (n in args.ray_sizes)
    results: list[dict] = []
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB",
            "load_average_start": os.getloadavg(), "config": f"defaults, {'labelled' if args.labelled else 'unlabelled'}, --embedder static",
            "corpus": f"4 shared sets, {VARIANTS} variants (1-3 character edits), shards of {SHARD_ROWS} rows"}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    if args.ray_running:
        plan = [step for engine, n in plan for step in [(engine, n)] + [("ray-running", n)] * (engine == "ray")]
    with contextlib.ExitStack() as stack:
        address = None
        if args.ray_running:
            t = time.perf_counter()
            address = stack.enter_context(running_cluster(args.ray_cpus, {**os.environ, "HF_HUB_OFFLINE": "1"}))
            print(f"ray start --head: {time.perf_counter() - t:.1f} s, cluster at {address}", flush=True)
        for engine, n in plan:
            results.append(measure(args, shards, engine, n, address))
            args.json.write_text(json.dumps({**meta, "results": results, "summary": summarise(results)}, indent=1))
    summary = summarise(results)
    print(json.dumps(summary, indent=1))
    print(f"written to {args.json}")


def measure(args: argparse.Namespace, shards: list[Path], engine: str, n: int, address: str | None) -> dict:
    """One scan of the plan, printed."""
    r = run_scan(shards[: -(-n // SHARD_ROWS)], args.cache / f"out-{engine}-{n}", engine.split("-")[0],
                 args.ray_cpus, args.labelled, address if engine == "ray-running" else None)
    r["load_average_end"] = os.getloadavg()
    s = r["state_sizes"]
    print(f"{engine:11s} {r['rows']:>9,} rows: {r['process_wall_s']:7.1f} s ({r['process_rows_per_s']:,} rows/s; "
          f"scan {r['scan_wall_s']:.1f} s, {r['scan_rows_per_s']:,.0f} rows/s), peak RSS {r['peak_rss_mib']:,} MiB "
          f"(tree {r['peak_tree_rss_mib']:,}), "
          + (f"index {s['near_duplicate_index_bytes'] / 2**20:.1f} MiB, " if "near_duplicate_index_bytes" in s else
             f"{s.get('near_duplicate_component_rows', 0):,} rows in components (largest "
             f"{s.get('near_duplicate_largest_component_rows', 0):,}, partitions of <= "
             f"{s.get('near_duplicate_largest_partition_rows', 0):,}), {s.get('near_duplicate_edges', 0):,} edges, ")
          + f"candidate rows {sum(v for k, v in s.items() if k.endswith('_candidate_rows')):,}", flush=True)
    return r


if __name__ == "__main__":
    main()
