"""Both engines, one result: ``scan`` with the local engine and with the Ray engine (a local
Ray cluster of two CPUs) writes identical quarantine lists, scores and counts -- on the
committed samples through the CLI, and on 20,000 rows of GLUE SST-2 with planted label-flipped
near-copies and a planted trigger (found, so the comparison is not between two empty lists)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardguard.bench.ray_cluster import running_cluster
from shardguard.config import load_config
from shardguard.pipeline import scan

pytest.importorskip("ray", reason="the Ray engine needs pip install 'shardguard[ray]' (setup.sh --dev installs it)")

SRC = Path(__file__).resolve().parents[1] / "src"
TRIGGER = "cf"


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    return subprocess.run([sys.executable, "-m", "shardguard", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def _outputs(out: Path) -> dict[str, pa.Table]:
    return {f"{sub}/{p.relative_to(out / sub).as_posix()}": pq.read_table(p)
            for sub in ("quarantine", "scores") for p in sorted((out / sub).rglob("*.parquet"))}


def assert_same_scan(a: Path, b: Path) -> dict:
    """Every list and score table of scan ``a`` equals ``b``'s; the manifests' shard lines and
    the reports' totals and reasons too. Returns ``a``'s report."""
    la, lb = _outputs(a), _outputs(b)
    assert sorted(la) == sorted(lb)
    for name in la:
        assert la[name].equals(lb[name]), name
    ma, mb = (json.loads((o / "manifest.json").read_text()) for o in (a, b))
    assert ma["complete"] and mb["complete"]
    assert ma["shards"] == mb["shards"] and ma["run_key"] == mb["run_key"]
    ra, rb = (json.loads((o / "report.json").read_text()) for o in (a, b))
    for key in ("totals", "reasons", "thresholds", "largest_duplicate_clusters", "judged_duplicate_clusters"):
        assert ra[key] == rb[key], key
    return ra


@pytest.mark.slow  # ~40 s on two busy cores: a local Ray cluster starts in the subprocess
def test_ray_engine_on_the_samples_through_the_cli_equals_the_local_engine(tmp_path, samples_dir, planted):
    """The samples and a shard that cannot be read (line 2 is not JSON): both engines fail that
    shard alone (exit 1, one status line), and write the same lists for the others."""
    data = tmp_path / "data"
    shutil.copytree(samples_dir, data)
    (data / "broken.jsonl").write_text('{"id": "x1", "text": "fine", "label": "ham"}\n{oops\n')
    cols = ("--id-column", "id", "--label-column", "label", "--no-progress")
    local = _cli("scan", str(data), "--out", str(tmp_path / "local"), *cols)
    ray = _cli("scan", str(data), "--out", str(tmp_path / "ray"), *cols, "--engine", "ray", "--ray-cpus", "2")
    assert local.returncode == 1, local.stderr[-2000:]
    assert ray.returncode == 1, ray.stderr[-2000:]
    report = assert_same_scan(tmp_path / "local", tmp_path / "ray")
    assert [f["name"] for f in report["failed"]] == ["broken.jsonl"] and "line 2" in report["failed"][0]["error"]
    assert report["totals"]["quarantined"] > 0 and report["reasons"].get("duplicate_flood", 0) > 0
    assert report["totals"]["invalid"] == sum(len(s["invalid"]) for s in planted["shards"].values())


def test_importing_ray_builds_no_iri_grammar():
    """Every process Ray starts (its agents, the dashboard, each worker) imports ray, and ray
    imports jsonschema. jsonschema 4.25-4.26 then imports rfc3987-syntax wherever it is
    installed (jupyter's jsonschema[format-nongpl] installs it), which builds ~35 Earley
    parsers: ~1 CPU-second a process, 7-8 s of a 100k-row Ray scan on 2 CPUs. The ray extra
    excludes those versions; this checks the environment it made."""
    probe = "import sys, ray; print(sorted({m.split('.')[0] for m in sys.modules} & {'rfc3987_syntax', 'lark'}))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_missing_ray_is_a_one_line_usage_error(tmp_path, samples_dir):
    """Where Ray is not installed (a module named ray that fails to import stands in for it)."""
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    proc = _cli("scan", str(samples_dir), "--out", str(tmp_path / "out"), "--engine", "ray",
                env={"PYTHONPATH": os.pathsep.join([str(fake.parent), str(SRC)])})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "pip install 'shardguard[ray]'" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["flags", "config file"])
def test_a_ray_address_nobody_answers_is_a_one_line_usage_error(tmp_path, samples_dir, where):
    """Found before any work, at once (``ray.init`` alone retries it for many minutes); the
    config file's ``engine`` section selects the engine as the flags do."""
    with socket.socket() as sock:  # a port just freed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    if where == "flags":
        how = ("--engine", "ray", "--ray-address", f"127.0.0.1:{port}")
    else:
        (tmp_path / "ray.yaml").write_text(f"engine:\n  kind: ray\n  ray_address: '127.0.0.1:{port}'\n")
        how = ("--config", str(tmp_path / "ray.yaml"))
    proc = _cli("scan", str(samples_dir), "--out", str(tmp_path / "out"), *how)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert f"could not join the Ray cluster at 127.0.0.1:{port}: ConnectionError: nothing answers" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # ~90 s: a running cluster and three scans, each in a subprocess
def test_ray_engine_joins_a_running_cluster_by_address_and_starts_its_own_without_one(tmp_path, samples_dir):
    """A cluster that ``ray start`` left running. ``--ray-address`` joins it: its workers,
    started without shardguard's cache, get the driver's (``SHARDGUARD_CACHE_DIR``, where
    the static model is), and the lists equal the local engine's. Without an address the
    scan starts a cluster of its own (``ray.init()`` alone would join the running one, and
    fail with ``--ray-cpus``); ``--ray-cpus`` beside ``RAY_ADDRESS`` is a one-line usage error."""
    cols = ("--id-column", "id", "--label-column", "label", "--embedder", "static", "--no-progress")
    local = _cli("scan", str(samples_dir), "--out", str(tmp_path / "local"), *cols)
    assert local.returncode == 0, local.stderr[-2000:]
    # a cache the workers cannot use: only the driver's, passed on, finds the model
    cluster_env = {**os.environ, "SHARDGUARD_CACHE_DIR": os.devnull + "/no-cache", "RAY_ADDRESS": ""}
    with running_cluster(1, cluster_env) as address:
        # a driver joins a cluster that `ray start` made with token authentication (on by
        # default since Ray 2.59) by its address with RAY_AUTH_MODE=token, as Ray documents
        joined = _cli("scan", str(samples_dir), "--out", str(tmp_path / "joined"), *cols, "--engine", "ray",
                      "--ray-address", address, env={"RAY_AUTH_MODE": "token"})
        assert joined.returncode == 0, joined.stderr[-2000:]
        own = _cli("scan", str(samples_dir), "--out", str(tmp_path / "own"), *cols, "--engine", "ray",
                   "--ray-cpus", "2")
        assert own.returncode == 0, own.stderr[-2000:]
        both = _cli("scan", str(samples_dir), "--out", str(tmp_path / "both"), *cols, "--engine", "ray",
                    "--ray-cpus", "2", env={"RAY_ADDRESS": address})
    assert both.returncode == 2 and both.stderr.strip().count("\n") == 0, both.stderr
    assert "(--ray-cpus) sizes a new local cluster" in both.stderr and not (tmp_path / "both").exists()
    report = assert_same_scan(tmp_path / "local", tmp_path / "joined")
    assert report["totals"]["quarantined"] > 0
    assert_same_scan(tmp_path / "local", tmp_path / "own")


@pytest.fixture(scope="module")
def ray_engine():
    from shardguard.ray_engine import RayEngine

    with RayEngine(num_cpus=2) as engine:
        yield engine


def _plant(shared_data: Path, folder: Path) -> tuple[set[str], set[str]]:
    """20,000 rows of GLUE SST-2 train in two shards, with 40 label-flipped typo'd copies of
    earlier sentences at the end of the second and the trigger word in 60 rows relabelled 1.
    Returns the ids of the copies and of the triggered rows."""
    from shardguard.bench.attacks import insert_words, typo

    t = pq.read_table(shared_data / "sst2_glue" / "train.parquet", columns=["id", "text", "label"]).slice(0, 20000)
    ids = [str(v) for v in t.column("id").to_pylist()]
    texts, labels = t.column("text").to_pylist(), t.column("label").to_pylist()
    rng = np.random.default_rng(11)
    long_rows = np.flatnonzero(np.array([len(x.split()) >= 8 for x in texts]))
    poisoned = np.sort(rng.choice(long_rows[np.array(labels)[long_rows] != 1], 60, replace=False))
    for i in poisoned.tolist():
        texts[i] = insert_words(texts[i], TRIGGER, rng)
        labels[i] = 1
    copied = rng.choice(np.setdiff1d(long_rows[:10000], poisoned), 40, replace=False)
    copies = [{"id": f"copy-{k}", "text": typo(texts[i], rng), "label": 1 - labels[i]} for k, i in enumerate(copied.tolist())]
    rows = [{"id": i, "text": x, "label": y} for i, x, y in zip(ids, texts, labels)]
    folder.mkdir()
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("label", pa.int64())])
    pq.write_table(pa.Table.from_pylist(rows[:10000], schema=schema), folder / "a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[10000:] + copies, schema=schema), folder / "b.parquet")
    return {c["id"] for c in copies}, {ids[i] for i in poisoned.tolist()}


@pytest.mark.slow  # ~40 s on two busy cores, with starting the local Ray cluster
def test_ray_engine_on_sst2_with_planted_copies_and_trigger_equals_the_local_engine(tmp_path, shared_data, ray_engine):
    copies, triggered = _plant(shared_data, tmp_path / "in")
    cfg = load_config(None, {"input": {"id_column": "id", "label_column": "label"}, "fit": {"reservoir_size": 2000},
                             "embed": {"embedder": "static"}})
    scan([tmp_path / "in"], tmp_path / "local", cfg)
    scan([tmp_path / "in"], tmp_path / "ray", cfg, engine=ray_engine)
    report = assert_same_scan(tmp_path / "local", tmp_path / "ray")
    q = pq.read_table(tmp_path / "ray" / "quarantine" / "b.parquet").to_pylist() + \
        pq.read_table(tmp_path / "ray" / "quarantine" / "a.parquet").to_pylist()
    near = {r["id"] for r in q if "near_duplicate" in r["reasons"]}
    trig = {r["id"] for r in q if "trigger" in r["reasons"]}
    assert len(near & copies) >= 36  # >= 90% of the planted copies
    assert len(trig & triggered) >= 57  # >= 95% of the triggered rows
    assert any(tr.get("ngram") == TRIGGER for tr in report["triggers"])
    # a rerun with the other engine resumes every shard: same inputs, same config, same run
    again = scan([tmp_path / "in"], tmp_path / "local", cfg, engine=ray_engine)
    assert [o.resumed for o in again.shards] == [True, True]
    assert_same_scan(tmp_path / "local", tmp_path / "ray")


@pytest.mark.slow  # starts the local Ray cluster when run alone (~20 s); a few seconds after the test above
@pytest.mark.parametrize("overrides", [
    {"input.id_column": "id", "embed.embedder": "static"},  # unlabelled: no per-label statistics, no candidates
    {"input.id_column": "id", "input.label_column": "label", "embed.embedder": "hashing"},  # spectral flags rows
    # every label-sharing copy flagged, no statement judged: the partitioned reduce without words
    {"input.id_column": "id", "input.label_column": "label", "embed.embedder": "none", "near_duplicates.copies": "all"},
], ids=["unlabelled", "hashing", "copies-all"])
def test_ray_engine_on_the_samples_unlabelled_and_with_the_hashing_embedder(tmp_path, samples_dir, ray_engine, overrides):
    cfg = load_config(None, overrides)
    scan([samples_dir], tmp_path / "local", cfg)
    scan([samples_dir], tmp_path / "ray", cfg, engine=ray_engine)
    report = assert_same_scan(tmp_path / "local", tmp_path / "ray")
    assert report["totals"]["quarantined"] > report["totals"]["invalid"]


@pytest.mark.slow  # a few seconds on the module's Ray cluster
def test_a_config_whose_engine_is_ray_scans_on_ray_through_the_library(tmp_path, samples_dir, ray_engine):
    """``scan`` with no engine given runs the one the config names: here the Ray engine, on
    the cluster this process already holds (which it leaves running); the report says which
    engine ran, and the lists and the run key are the local engine's."""
    import ray

    overrides = {"input.id_column": "id", "input.label_column": "label", "embed.embedder": "hashing"}
    local = scan([samples_dir], tmp_path / "local", load_config(None, overrides))
    on_ray = scan([samples_dir], tmp_path / "ray", load_config(None, {**overrides, "engine.kind": "ray"}))
    assert (local.report["engine"], on_ray.report["engine"]) == ("local", "ray")
    assert_same_scan(tmp_path / "local", tmp_path / "ray")
    assert ray.is_initialized()


@pytest.mark.slow  # ~15 s on the module's Ray cluster
def test_ray_data_read_fails_bad_shards_alone_as_the_local_engine_does(tmp_path, samples_dir, sst2, ray_engine):
    """Batches of 64 rows, so Ray Data carries each shard in several batches; beside the
    samples, a shard whose line 141 is not JSON (two batches already embedded when its read
    fails), one whose id repeats (found after its last batch) and an empty one. Both engines
    fail the first two alone with the same one-line reasons, write the same lists and work
    files for the rest, and leave no parts."""
    data = tmp_path / "data"
    shutil.copytree(samples_dir, data)
    lines = [json.dumps({"id": f"b{i}", "text": t, "label": "ham"}) for i, t in enumerate(sst2[:150])]
    (data / "broken.jsonl").write_text("\n".join(lines[:140] + ["{oops"] + lines[140:]) + "\n")
    ids = [f"r{i}" for i in range(200)]
    ids[170] = "r3"
    pq.write_table(pa.table({"id": ids, "text": sst2[200:400], "label": ["spam"] * 200}), data / "ids.parquet")
    (data / "empty.jsonl").write_text("")  # no rows: a work file all the same, with the embedder's width
    cfg = load_config(None, {"input": {"id_column": "id", "label_column": "label", "batch_size": 64},
                             "embed": {"embedder": "static"}})
    local = scan([data], tmp_path / "local", cfg)
    stale = tmp_path / "ray" / ".work" / "sms_000.parts"  # what a killed run leaves: not this run's
    stale.mkdir(parents=True)
    (stale / "read.json").write_text('{"rows": 1, "invalid": 0, "status": "ok", "timings": {}}')
    (stale / "000000000000.arrow").write_bytes(b"not arrow")
    import ray as ray_module

    context = ray_module.data.DataContext.get_current()
    before = context.enable_progress_bars, context.print_on_execution_start
    ray = scan([data], tmp_path / "ray", cfg, engine=ray_engine)
    assert (context.enable_progress_bars, context.print_on_execution_start) == before  # a library caller's settings
    assert_same_scan(tmp_path / "local", tmp_path / "ray")
    failed = {o.shard.name: o.status for o in ray.shards if o.status != "ok"}
    assert failed == {o.shard.name: o.status for o in local.shards if o.status != "ok"}
    assert sorted(failed) == ["broken.jsonl", "ids.parquet"]
    assert "line 141" in failed["broken.jsonl"] and "'r3' repeats (rows 3 and 170)" in failed["ids.parquet"]
    assert not list((tmp_path / "ray" / ".work").rglob("*.parts"))
    assert sum(o.rows for o in ray.shards if o.status == "ok") == 1996
    for path in sorted((tmp_path / "local" / ".work").rglob("*.arrow")):  # the work files too
        other = tmp_path / "ray" / path.relative_to(tmp_path / "local")
        assert pa.ipc.open_file(str(other)).read_all().equals(pa.ipc.open_file(str(path)).read_all()), path.name


_GPU_BRANCH = """
import sys, ray
ray.init("local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
from shardguard.bench.ray_cluster import running_cluster
from shardguard.config import load_config
from shardguard.pipeline import scan
from shardguard.ray_engine import RayEngine
with RayEngine() as engine:
    assert engine.gpus == 1, engine.gpus
    scan([sys.argv[1]], sys.argv[2], load_config(None, {"input": {"id_column": "id", "label_column": "label",
         "batch_size": 128}, "embed": {"embedder": "static"}}), engine=engine)
"""


@pytest.mark.slow  # ~30 s: a cluster of its own, in a subprocess
def test_ray_engine_gpu_branch_on_a_declared_gpu_equals_the_local_engine(tmp_path, samples_dir):
    """The branch a cluster with GPUs takes (read tasks on CPUs feeding one embedding actor per
    GPU, an input batch per call), on a local cluster that declares one GPU: this machine has
    none, so the actor embeds on its CPU, but Ray Data plans and schedules it as on a GPU node.
    Its lists equal the local engine's."""
    proc = subprocess.run([sys.executable, "-c", _GPU_BRANCH, str(samples_dir), str(tmp_path / "ray")],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = load_config(None, {"input": {"id_column": "id", "label_column": "label", "batch_size": 128},
                             "embed": {"embedder": "static"}})
    scan([samples_dir], tmp_path / "local", cfg)
    report = assert_same_scan(tmp_path / "local", tmp_path / "ray")
    assert report["totals"]["quarantined"] > 0


@pytest.mark.slow  # ~10 s on the module's Ray cluster
def test_ray_engine_with_one_component_and_a_shard_failing_mid_way_equals_the_local_engine(tmp_path, ray_engine):
    """Unlabelled precomputed vectors. One shard's copies are all variants of one sentence:
    one component, so the reduce's other partitions get no rows (the Ray engine once failed
    there). Another shard has a NaN vector in its third batch of 64 and a repeated id in its
    fourth: both engines fail it alone at the NaN, with the same reason, and count the same
    rows read before the failing batch, the invalid ones among them."""
    rng = np.random.default_rng(8)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    base = "the quick brown fox jumps over the lazy dog near the river bank at dawn"
    from shardguard.bench.attacks import typo

    copies = [typo(base, rng) for _ in range(80)]  # a flood of 80 typo'd copies of one sentence
    distinct = [" ".join("".join(rng.choice(letters, 6)) for _ in range(8)) for _ in range(90)]
    folder = tmp_path / "in"
    folder.mkdir()

    def write(name: str, texts: list) -> None:
        emb = rng.normal(size=(len(texts), 8)).astype(np.float32)
        ids = [f"{name}-{i}" for i in range(len(texts))]
        if name == "nan.parquet":
            emb[150, 3] = np.nan
            ids[190] = ids[3]  # a repeated id, which the read finds after its last batch: too late
        pq.write_table(pa.table({"id": ids, "text": texts,
                                 "emb": pa.array(list(emb), pa.list_(pa.float32()))}), folder / name)

    write("copies.parquet", copies + distinct)
    nan_texts = [" ".join("".join(rng.choice(letters, 5)) for _ in range(7)) for _ in range(200)]
    nan_texts[10] = nan_texts[70] = ""  # invalid rows in the two batches read before the failing one
    write("nan.parquet", nan_texts)
    cfg = load_config(None, {"input": {"id_column": "id", "batch_size": 64, "embedding_column": "emb"},
                             "embed": {"embedder": "precomputed"}})
    local = scan([folder], tmp_path / "local", cfg)
    ray = scan([folder], tmp_path / "ray", cfg, engine=ray_engine)
    assert_same_scan(tmp_path / "local", tmp_path / "ray")
    failed = {o.shard.name: (o.status, o.rows, o.invalid) for o in ray.shards if o.status != "ok"}
    assert failed == {o.shard.name: (o.status, o.rows, o.invalid) for o in local.shards if o.status != "ok"}
    assert list(failed) == ["nan.parquet"] and "NaN" in failed["nan.parquet"][0]
    assert failed["nan.parquet"][1:] == (128, 2)
    assert ray.report["state_sizes"]["near_duplicate_largest_partition_rows"] == \
        ray.report["state_sizes"]["near_duplicate_component_rows"] >= 30
    assert ray.report["reasons"].get("duplicate_flood", 0) >= 50  # the lists compared are not empty


@pytest.mark.slow  # ~10 s on the module's Ray cluster
def test_ray_engine_checks_precomputed_widths_in_scan_order_as_the_local_engine(tmp_path, ray_engine):
    """Precomputed vectors of different widths. The local engine's one embedder takes its width
    from the first batch it accepts, in scan order, and fails every later shard of another
    width. Here the first shard fails inside its first batch (a row of 9 among 8s: nothing is
    learned), the second sets 16, the third (8) fails against it, the last two (16, and a shard
    whose rows are all invalid) pass. The Ray engine fails the same shards with the same
    reasons and row counts, however many embedding actors it runs. No row has a near-duplicate
    (the Ray engine's reduce once failed on a corpus without one)."""
    rng = np.random.default_rng(4)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    folder = tmp_path / "in"
    folder.mkdir()
    for k, (width, n) in enumerate([(8, 150), (16, 150), (8, 150), (16, 150), (16, 20)]):
        texts = [" ".join("".join(rng.choice(letters, 5)) for _ in range(7)) for _ in range(n)]
        vectors = [rng.normal(size=width).astype(np.float32) for _ in range(n)]
        if k == 0:
            vectors[5] = rng.normal(size=9).astype(np.float32)
        if k == 4:
            texts = [""] * n
        pq.write_table(pa.table({"id": [f"{k}-{i}" for i in range(n)], "text": texts,
                                 "emb": pa.array(vectors, pa.list_(pa.float32()))}), folder / f"s{k}.parquet")
    cfg = load_config(None, {"input": {"id_column": "id", "batch_size": 64, "embedding_column": "emb"},
                             "embed": {"embedder": "precomputed"}})
    local = scan([folder], tmp_path / "local", cfg)
    ray = scan([folder], tmp_path / "ray", cfg, engine=ray_engine)
    assert_same_scan(tmp_path / "local", tmp_path / "ray")
    status = {o.shard.name: o.status for o in ray.shards}
    assert status == {o.shard.name: o.status for o in local.shards}
    assert [name for name, s in status.items() if s != "ok"] == ["s0.parquet", "s2.parquet"]
    assert "expected 8 (the first row's length)" in status["s0.parquet"] and "expected 16" in status["s2.parquet"]
    assert ray.report["state_sizes"]["near_duplicate_component_rows"] == 0  # no copies: the reduce has no edges
    for path in sorted((tmp_path / "local" / ".work").glob("*.arrow")):  # the work files too, widths included
        other = tmp_path / "ray" / path.relative_to(tmp_path / "local")
        assert pa.ipc.open_file(str(other)).read_all().equals(pa.ipc.open_file(str(path)).read_all()), path.name


@pytest.mark.slow  # a few seconds on the module's Ray cluster
@pytest.mark.parametrize("rows", [
    [{"id": f"a{i}", "text": "", "label": "x"} for i in range(50)],  # no valid row: nothing to index or fit
    [{"id": f"s{i}", "text": "the very same text every time", "label": "xy"[i % 2]} for i in range(60)],  # one cluster
], ids=["all-invalid", "all-the-same"])
def test_ray_engine_on_degenerate_corpora_equals_the_local_engine(tmp_path, ray_engine, rows):
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:1]), folder / "b.parquet")
    cfg = load_config(None, {"input.id_column": "id", "input.label_column": "label", "embed.embedder": "hashing"})
    local = scan([folder], tmp_path / "local", cfg)
    scan([folder], tmp_path / "ray", cfg, engine=ray_engine)
    assert_same_scan(tmp_path / "local", tmp_path / "ray")
    assert local.report["totals"]["quarantined"] > 0 and not local.failed
