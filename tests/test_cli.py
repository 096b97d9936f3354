"""The command line as a user runs it: exit codes, help, summary, and a killed run resuming."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardguard.cli import build_parser, main

FAST = ["--embedder", "hashing", "--id-column", "id", "--label-column", "label", "--no-progress"]


@pytest.mark.parametrize("command", ["scan", "apply", "report", "verify", "diff"])
def test_help_documents_every_flag(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        for flag in action.option_strings:
            assert flag in text
        if action.dest != "help":
            assert action.help, f"{action.option_strings or action.dest} has no help text"


def test_scan_prints_summary_and_exits_0(tmp_path, samples_dir, capsys):
    code = main(["scan", str(samples_dir), "--out", str(tmp_path / "out"), *FAST])
    assert code == 0
    out = capsys.readouterr().out
    assert "sms_000.parquet" in out and "quarantined" in out and "total" in out
    assert "duplicate_flood" in out


def test_usage_and_config_errors_exit_2(tmp_path, capsys):
    assert main(["scan", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("near_duplicates: {threshold: 7}\n")
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    assert main(["scan", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "o"), "--config", str(bad)]) == 2
    assert "threshold must be in (0, 1]" in capsys.readouterr().err
    assert main(["scan", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "o"), "--disable", "nope"]) == 2
    assert main(["scan", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "o"), "--enable", "nope"]) == 2
    assert "--enable nope: unknown detector" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["scan"])
    assert exc.value.code == 2


def test_failed_shard_exits_1_and_others_complete(tmp_path, samples_dir):
    data = tmp_path / "in"
    data.mkdir()
    for p in samples_dir.glob("*.parquet"):
        (data / p.name).write_bytes(p.read_bytes())
    (data / "broken.jsonl").write_text('{"id": "1", "text": "fine", "label": "ham"}\n{oops\n')
    out = tmp_path / "out"
    assert main(["scan", str(data), "--out", str(out), *FAST]) == 1
    assert (out / "quarantine" / "sms_000.parquet").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    bad = [s for s in manifest["shards"] if s["status"] != "ok"]
    assert len(bad) == 1 and "broken.jsonl" in bad[0]["status"] and "line 2" in bad[0]["status"]


def planted_invalid(samples_dir, shard):
    planted = json.loads((samples_dir / "PLANTED.json").read_text())
    return len(planted["shards"][shard]["invalid"])


def test_flags_reach_the_config(tmp_path, samples_dir):
    out = tmp_path / "out"
    code = main(["scan", str(samples_dir), "--out", str(out), *FAST, "--flood-size", "1000",
                 "--disable", "spectral", "--set", "detectors.outlier.threshold_z=50",
                 "--enable", "label_mismatch", "--copies", "all"])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["near_duplicates"]["flood_size"] == 1000
    assert manifest["config"]["near_duplicates"]["copies"] == "all"
    assert manifest["config"]["detectors"]["spectral"]["enabled"] is False
    report = json.loads((out / "report.json").read_text())
    assert "duplicate_flood" not in report["reasons"]
    assert report["reasons"]["near_duplicate"] > 0  # every copy, with --copies all
    assert "spectral" not in report["thresholds"]
    # the opt-in detector ran: its threshold is reported and every row has its score
    assert "label_mismatch" in report["thresholds"]
    scores = pq.read_table(out / "scores" / "sms_000.parquet")
    assert scores.column("label_mismatch_score").null_count == planted_invalid(samples_dir, "sms_000.parquet")


def _make_shards(src, folder, n_shards=6):
    table = pq.read_table(src)
    folder.mkdir()
    per = table.num_rows // n_shards
    for i in range(n_shards):
        pq.write_table(table.slice(i * per, per), folder / f"part-{i:03d}.parquet", row_group_size=4096)


def _run_until(args, env, ready, timeout=120):
    """Start a scan and SIGKILL it as soon as ``ready()`` holds."""
    proc = subprocess.Popen([sys.executable, "-m", "shardguard", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < timeout:
        if ready():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    return proc.returncode


@pytest.mark.slow
@pytest.mark.parametrize("when", ["pass1", "pass2"])
def test_killed_scan_resumes_to_identical_lists(tmp_path, shared_data, when):
    data = tmp_path / "data"
    _make_shards(shared_data / "sst2_glue" / "train.parquet", data)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    def args_for(out):
        return ["-q", "scan", str(data), "--out", str(out), "--embedder", "hashing", "--id-column", "id",
                "--label-column", "label", "--no-progress"]

    ref = tmp_path / "ref"
    args = args_for(ref)
    assert subprocess.run([sys.executable, "-m", "shardguard", *args], env=env).returncode == 0

    out = tmp_path / "killed"
    args = args_for(out)

    def ready():
        if when == "pass1":
            return len(list((out / ".work").glob("*.arrow"))) >= 2 if (out / ".work").exists() else False
        try:
            return len(json.loads((out / "manifest.json").read_text())["shards"]) >= 2
        except (OSError, ValueError, KeyError):
            return False

    code = _run_until(args, env, ready)
    assert code == -signal.SIGKILL, "the scan finished before it could be killed"
    manifest_before = (out / "manifest.json").exists()
    assert subprocess.run([sys.executable, "-m", "shardguard", *args], env=env).returncode == 0
    if when == "pass2":
        assert manifest_before
    for p in sorted((ref / "quarantine").glob("*.parquet")):
        assert pq.read_table(p).equals(pq.read_table(out / "quarantine" / p.name)), p.name
        assert pq.read_table(ref / "scores" / p.name).equals(pq.read_table(out / "scores" / p.name))
    assert not list(out.rglob(".tmp-*"))


def _cli(*args, **kw):
    """Run the installed command's module in a subprocess, as a user does."""
    return subprocess.run([sys.executable, "-m", "shardguard", *args], capture_output=True, text=True, **kw)


def _one_line_usage_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("shardguard: error: "), proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


class _Ran:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


def test_config_and_output_errors_are_one_line_exit_2_before_any_work(tmp_path, samples_dir, capsys):
    def _cli(*args):  # in-process: the same entry point, without a new interpreter per case
        code = main(list(args))
        return _Ran(code, capsys.readouterr().err)

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"text": "hello there"}\n')
    out = tmp_path / "out"
    cases = [
        (["--set", "detectors.outlier.threshold_z=[1,"], "--set detectors.outlier.threshold_z"),
        (["--set", "detectors.outlier.enabled='no'"], "detectors.outlier.enabled"),
        (["--set", "detectors.spectral.threshold_z=.nan"], "detectors.spectral.threshold_z"),
        (["--set", "input.batch_size=1000000000000"], "input.batch_size"),
        (["--set", "detectors.trigger.min_support=-1"], "detectors.trigger.min_support"),
        (["--response-column", "output"], "input.response_column"),  # not a column of a template
        (["--text-template", "{instruction} {output}", "--response-column", "answer"], "input.response_column"),
    ]
    for extra, key in cases:
        _one_line_usage_error(_cli("scan", str(data), "--out", str(out), *extra), key)
        assert not out.exists(), "a config error must stop the run before it writes anything"
    afile = tmp_path / "file"
    afile.write_text("x")
    _one_line_usage_error(_cli("scan", str(data), "--out", str(afile)), "is not a folder")
    _one_line_usage_error(_cli("scan", str(data), "--out", "/proc/shardguard-out"), "not writable")
    _one_line_usage_error(_cli("scan", str(data), "--out", str(data / "out")), "inside the input folder")
    _one_line_usage_error(_cli("scan", str(data), "--out", str(data)), "is the input")
    _one_line_usage_error(_cli("scan", str(data / "a.jsonl"), "--out", str(tmp_path)), "inside --out")
    assert sorted(p.name for p in data.iterdir()) == ["a.jsonl"]


def test_a_config_error_in_the_command_prints_no_traceback(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "hello there"}\n')
    proc = _cli("scan", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "out"), "--set", "fit.reservoir_size=1e99")
    _one_line_usage_error(proc, "fit.reservoir_size")


def test_outputs_take_the_umask_and_odd_names_print(tmp_path, samples_dir):
    data = tmp_path / "in [x]"
    data.mkdir()
    shutil.copy(samples_dir / "sms_000.parquet", data / "[red]odd[x].parquet")
    out = tmp_path / "out"
    proc = _cli("scan", str(data), "--out", str(out), *FAST,
                preexec_fn=lambda: os.umask(0o022))
    assert proc.returncode == 0, proc.stderr
    assert "[red]odd[x].parquet" in proc.stdout
    for p in [out / "manifest.json", out / "report.json", out / "quarantine" / "[red]odd[x].parquet"]:
        assert p.stat().st_mode & 0o777 == 0o644, p


def test_one_writer_per_out_and_a_stale_lock_is_taken_over(tmp_path, samples_dir, capsys):
    from shardguard.io.outputs import OutputLock

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from shardguard.io.outputs import OutputLock\n"
        f"lock = OutputLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["scan", str(samples_dir), "--out", str(out), *FAST]) == 2
        err = capsys.readouterr().err
        assert f"is in use: scan by pid {holder.pid} on host" in err
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock file stays, and the next run takes it over
    assert json.loads((out / ".lock").read_text())["pid"] == holder.pid
    assert main(["scan", str(samples_dir), "--out", str(out), *FAST]) == 0
    assert not (out / ".lock").exists()
    with OutputLock(out):  # and it was released at the end
        pass


def test_report_refuses_an_unfinished_scan(tmp_path, samples_dir, capsys):
    out = tmp_path / "out"
    assert main(["scan", str(samples_dir), "--out", str(out), *FAST]) == 0
    assert main(["report", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    assert "the scan did not finish" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_scan_says_one_line_leaves_no_temporary_files_and_resumes(tmp_path, shared_data, sig, code):
    data = tmp_path / "data"
    _make_shards(shared_data / "sst2_glue" / "train.parquet", data)
    out = tmp_path / "out"
    # small batches: the scan lasts long enough after its first work file for the signal to land
    # inside it however busy the machine is (at the default batch size it is over in ~3 s)
    args = ["scan", str(data), "--out", str(out), *FAST, "--batch-size", "256"]
    proc = subprocess.Popen([sys.executable, "-m", "shardguard", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < 120:
        if (out / ".work").exists() and list((out / ".work").glob("*.arrow")):
            proc.send_signal(sig)
            break
        time.sleep(0.01)
    _, err = proc.communicate()
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == "shardguard: interrupted; rerun the same command to resume"
    assert "Traceback" not in err
    assert not list(out.rglob(".tmp-*")) and not (out / ".lock").exists()
    assert subprocess.run([sys.executable, "-m", "shardguard", *args], capture_output=True).returncode == 0
    manifest = json.loads((out / "manifest.json").read_text())
    rows = sum(pq.read_metadata(p).num_rows for p in data.glob("*.parquet"))
    assert manifest["complete"] and sum(s["rows"] for s in manifest["shards"]) == rows


def test_text_template_keeps_non_ascii_and_turns_escapes_into_characters(tmp_path):
    """`--text-template` as typed in a shell: `\\n` becomes a newline, `Réponse` stays `Réponse`."""
    shard = tmp_path / "fr.jsonl"
    shard.write_text('{"q": "Où est la gare ?", "a": "À droite."}\n', encoding="utf-8")
    out = tmp_path / "out"
    code = main(["scan", str(shard), "--out", str(out), "--embedder", "none", "--no-progress",
                 "--text-template", r"Question : {q}\nRéponse : {a}"])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["config"]["input"]["text_template"] == "Question : {q}\nRéponse : {a}"
    work = next((out / ".work").glob("*.arrow"))
    with pa.ipc.open_file(work) as f:
        texts = f.read_all().column("text").to_pylist()
    assert texts == ["Question : Où est la gare ?\nRéponse : À droite."]


def test_report_html_without_matplotlib_exits_2_with_the_pip_line(tmp_path, samples_dir):
    """An install without matplotlib: `report --html` says how to get it instead of a traceback."""
    out = tmp_path / "out"
    assert main(["scan", str(samples_dir), "--out", str(out), *FAST]) == 0
    blocked = ("import sys; sys.modules['matplotlib'] = None; "  # `import matplotlib` raises ImportError
               "from shardguard.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", blocked, "report", str(out), "--html", str(tmp_path / "r.html")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f'{sys.executable} -m pip install "matplotlib>=3.8"' in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r.html").exists()
    # the text summary needs no matplotlib
    proc = subprocess.run([sys.executable, "-c", blocked, "report", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "quarantined" in proc.stdout, proc.stderr
