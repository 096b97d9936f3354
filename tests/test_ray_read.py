"""The Ray engine's read-and-embed map (:mod:`shardguard.ray_read`), its stage functions run
in this process: the read task's tables, the actor's parts (handed over in any order, as Ray
Data may finish them) and the shard's commit give the work file the local engine's map
writes, row for row; a shard whose read fails, whose embedding fails or whose parts did not
all arrive fails alone, with the local engine's message, and leaves no work file or parts.
``tests/test_engines.py`` runs the same functions on a Ray cluster."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardguard.config import load_config
from shardguard.embed import make_embedder
from shardguard.io.readers import discover_shards
from shardguard.passes.read_embed import hashed, pass1_key, read_embed_shard, work_path
from shardguard.ray_read import SUMMARY_SCHEMA, EmbedParts, commit_parts, parts_dir, read_shard


def _local(cfg, shard, out: Path):
    """The local engine's map of one shard: (outcome, work file table or None)."""
    embedder = make_embedder(cfg.embed, cfg.random_state)
    o = read_embed_shard(cfg, hashed(shard), embedder, _info(cfg), out, Counter())
    path = work_path(out, shard)
    return o, (pa.ipc.open_file(str(path)).read_all() if path.exists() else None)


def _info(cfg):
    embedder = make_embedder(cfg.embed, cfg.random_state)
    return embedder.describe() if embedder is not None else None


def _ray_parts(cfg, shard, out: Path, keep=lambda summaries: summaries, stopped=None, reblock=lambda blocks: blocks):
    """The Ray engine's map of one shard, its stages in this process: read task -> actor ->
    commit. ``reblock`` makes blocks of the read task's rows, as Ray Data may; ``keep`` picks the summaries that reach the commit, which come in reverse
    order (Ray Data may finish parts in any order)."""
    o = hashed(shard)
    folder = parts_dir(out, shard)
    folder.mkdir(parents=True)
    embed = EmbedParts(cfg, [str(folder)], [str(shard.path)])
    summaries = [embed(block) for block in reblock(list(read_shard(cfg, o, 0, str(folder))))]
    kept = keep(summaries[::-1])
    table = pa.concat_tables(kept) if kept else SUMMARY_SCHEMA.empty_table()
    done, timings = commit_parts(cfg, o, pass1_key(cfg, o.sha256, _info(cfg)), out, table, stopped)
    assert not folder.exists()  # the parts are gone, whatever the outcome
    path = work_path(out, shard)
    return done, timings, (pa.ipc.open_file(str(path)).read_all() if path.exists() else None)


@pytest.fixture
def cfg():
    # batches of 64 rows: each sample shard comes in 8 parts
    return load_config(None, {"input": {"id_column": "id", "label_column": "label", "batch_size": 64},
                              "embed": {"embedder": "static"}})


def _joined(blocks):  # Ray Data joins a read task's rows (input batches) up to its block size target
    return [pa.concat_tables(blocks)]


@pytest.mark.parametrize("name, reblock", [("sms_000.parquet", _joined), ("sms_001.jsonl", _joined),
                                           ("extra/sms_003.jsonl.gz", lambda blocks: blocks)])
def test_parts_committed_in_row_order_equal_the_local_work_file(tmp_path, samples_dir, cfg, name, reblock):
    """The work file has the local engine's rows and batches (the index's calls), whatever
    blocks Ray Data made of the read task's rows."""
    shard = [s for s in discover_shards([samples_dir]) if s.name == name][0]
    lo, local = _local(cfg, shard, tmp_path / "local")
    ro, timings, ray = _ray_parts(cfg, shard, tmp_path / "ray", reblock=reblock)
    assert ro.status == lo.status == "ok"
    assert (ro.rows, ro.invalid) == (lo.rows, lo.invalid) and ro.invalid > 0  # the samples plant invalid rows
    assert ray.equals(local)
    batches = [b.num_rows for b in ray.to_batches()]  # the file's record batches: the index's calls
    assert batches == [b.num_rows for b in local.to_batches()] == [64] * (ro.rows // 64) + [ro.rows % 64]
    assert ray.column("row").to_pylist() == list(range(ro.rows))
    meta = json.loads(work_path(tmp_path / "ray", shard).with_suffix(".arrow.json").read_text())
    assert meta["rows"] == ro.rows and meta["valid"] == ro.rows - ro.invalid and meta["dim"] == 256
    assert timings["read"] > 0 and timings["write_work"] > 0


def test_a_batch_run_twice_counts_once(tmp_path, samples_dir, cfg):
    """Ray Data retries a task whose node was lost: the same part is written again under its
    name and its summary row arrives twice."""
    shard = [s for s in discover_shards([samples_dir]) if s.name == "sms_000.parquet"][0]
    _, local = _local(cfg, shard, tmp_path / "local")
    o, _, ray = _ray_parts(cfg, shard, tmp_path / "ray", keep=lambda s: s + s[2:4])
    assert o.status == "ok" and ray.equals(local)


def test_a_lost_part_fails_the_shard_with_ray_datas_error(tmp_path, samples_dir, cfg):
    shard = [s for s in discover_shards([samples_dir]) if s.name == "sms_000.parquet"][0]
    o, _, table = _ray_parts(cfg, shard, tmp_path, keep=lambda s: s[:3] + s[4:],
                             stopped="RayTaskError: worker died")
    assert table is None and not work_path(tmp_path, shard).exists()
    assert o.status == f"{shard.path}: 429 of 493 rows embedded: Ray Data stopped: RayTaskError: worker died"


def test_a_read_that_fails_midway_fails_the_shard_as_the_local_engine_does(tmp_path, sst2, cfg):
    folder = tmp_path / "in"
    folder.mkdir()
    lines = [json.dumps({"id": f"r{i}", "text": t, "label": i % 2}) for i, t in enumerate(sst2[:150])]
    (folder / "broken.jsonl").write_text("\n".join(lines[:140] + ["{oops"] + lines[140:]) + "\n")
    shard = discover_shards([folder])[0]
    lo, local = _local(cfg, shard, tmp_path / "local")
    ro, _, ray = _ray_parts(cfg, shard, tmp_path / "ray")
    assert local is None and ray is None
    assert ro.status == lo.status and "line 141" in ro.status and str(shard.path) in ro.status


def test_a_repeated_id_fails_the_shard_after_its_last_part(tmp_path, sst2, cfg):
    folder = tmp_path / "in"
    folder.mkdir()
    ids = [f"r{i}" for i in range(200)]
    ids[170] = "r3"
    pq.write_table(pa.table({"id": ids, "text": sst2[:200], "label": [i % 2 for i in range(200)]}), folder / "ids.parquet")
    shard = discover_shards([folder])[0]
    lo, _ = _local(cfg, shard, tmp_path / "local")
    ro, _, ray = _ray_parts(cfg, shard, tmp_path / "ray")
    assert ray is None and ro.status == lo.status
    assert "'r3' repeats (rows 3 and 170)" in ro.status


def test_an_embedding_that_fails_fails_the_shard_with_the_local_message(tmp_path, cfg):
    """Precomputed vectors, one with a NaN in the second batch: the actor's embedding fails
    for that part alone; the commit fails the shard with the embedder's message."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    vectors = [rng.normal(size=8).astype(np.float32).tolist() for _ in range(150)]
    vectors[100][3] = float("nan")
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(150)], "text": [f"row {i}" for i in range(150)],
                             "vec": pa.array(vectors, pa.list_(pa.float32()))}), folder / "vec.parquet")
    pcfg = load_config(None, {"input": {"id_column": "id", "batch_size": 64, "embedding_column": "vec"},
                              "embed": {"embedder": "precomputed"}})
    shard = discover_shards([folder])[0]
    lo, _ = _local(pcfg, shard, tmp_path / "local")
    ro, _, ray = _ray_parts(pcfg, shard, tmp_path / "ray")
    assert ray is None and lo.status != "ok"
    assert ro.status == lo.status and "NaN or infinity" in ro.status and "row 100" in ro.status
