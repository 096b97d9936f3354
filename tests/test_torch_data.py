"""A fitted guard in real multi-process loaders: torch DataLoader workers (fork, spawn,
forkserver) and ``datasets.filter(num_proc=2)``; rows split across workers with none lost
or repeated; the embedding memo on the second epoch."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from shardguard.config import load_config
from shardguard.guard import Guard
from shardguard.io.readers import ShardReader, discover_shards

torch = pytest.importorskip("torch")

OPTS = {"embed.embedder": "hashing", "input.id_column": "id", "input.label_column": "label"}


@pytest.fixture(scope="module")
def fitted(samples_dir):
    return Guard.fit(samples_dir, load_config(None, OPTS))


@pytest.fixture(scope="module")
def rows(samples_dir) -> list[dict]:
    """Every sample row, as the dict samples a loader yields."""
    return [r for s in discover_shards([samples_dir]) for b in ShardReader(s, 512, ["id", "text", "label"])
            for r in pa.Table.from_batches([b]).to_pylist()]


def _expected(guard: Guard, rows: list[dict]) -> list[str]:
    """The ids a single-process guard keeps (a fresh copy of the fitted guard)."""
    import pickle

    g = pickle.loads(pickle.dumps(guard))
    return [r["id"] for r, keep in zip(rows, g.keep_mask({k: [r[k] for r in rows] for k in rows[0]})) if keep]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
@pytest.mark.parametrize("as_list", [True, False])
def test_two_workers_yield_every_clean_row_once(fitted, rows, method, as_list):
    if method not in mp.get_all_start_methods():
        pytest.skip(f"{method} is not available here")

    source = rows if as_list else iter_source(rows)
    ds = fitted.wrap(source, batch_size=100)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2,
                                         multiprocessing_context=mp.get_context(method))
    got = [s["id"] for s in loader]
    expected = _expected(fitted, rows)
    assert len(got) == len(set(got))  # no row twice (a plain list used to come out twice)
    assert sorted(got) == sorted(expected)  # no row lost
    assert len(expected) < len(rows)  # the guard did drop the planted rows


class iter_source(torch.utils.data.IterableDataset):
    """A source that is only iterable (no len, no indexing): the workers split its stream."""

    def __init__(self, rows):
        super().__init__()
        self.rows = rows

    def __iter__(self):
        return iter(self.rows)


def test_spawn_workers_warn_that_new_rows_are_not_shared(samples_dir, tmp_path):
    """Run as a user would (a script, spawn workers): the warning reaches stderr once per worker."""
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing as mp, torch
        from shardguard import Guard, load_config
        from shardguard.io.readers import ShardReader, discover_shards
        if __name__ == "__main__":
            g = Guard.fit({str(samples_dir)!r}, load_config(None, {OPTS!r}))
            rows = [r for s in discover_shards([{str(samples_dir)!r}])
                    for b in ShardReader(s, 512, ["id", "text", "label"]) for r in b.to_pylist()]
            loader = torch.utils.data.DataLoader(g.wrap(rows), batch_size=None, num_workers=2,
                                                 multiprocessing_context=mp.get_context("spawn"))
            ids = [s["id"] for s in loader]
            print("rows", len(ids), "distinct", len(set(ids)))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("keeps its own near-duplicate index") == 2
    n = int(proc.stdout.split()[1])
    assert proc.stdout.split() == ["rows", str(n), "distinct", str(n)] and n > 1800


def test_datasets_filter_with_two_processes(fitted, samples_dir):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_parquet(str(samples_dir / "sms_000.parquet"))
    one = ds.filter(fitted.hf_filter(), batched=True, batch_size=64)
    two = ds.filter(fitted.hf_filter(), batched=True, batch_size=64, num_proc=2)
    # every row of this shard is judged against the fitted data alone: the split changes nothing
    assert two["id"] == one["id"] and 0 < len(one) < len(ds)


def test_second_epoch_makes_no_model_call(samples_dir):
    guard = Guard.fit(samples_dir, load_config(None, OPTS))
    batches = [b for s in discover_shards([samples_dir]) for b in ShardReader(s, 256, ["id", "text", "label"])]
    first = [guard.score(b) for b in batches]
    misses = guard._memo.misses
    assert misses > 0 and guard._memo.hits < misses
    second = [guard.score(b) for b in batches]
    assert guard._memo.misses == misses  # every text of epoch 2 came from the memo
    for a, b in zip(first, second):
        assert a.column("status").to_pylist() == b.column("status").to_pylist()
        for c in ("outlier_score", "spectral_score"):
            assert pc.all(pc.equal(a.column(c), b.column(c))).as_py() is not False
    # a guard without the memo scores the same
    plain = Guard.fit(samples_dir, load_config(None, {**OPTS, "guard.cache_rows": 0}))
    assert plain._memo is None
    for b, a in zip(batches, second):
        assert plain.score(b).column("spectral_score").to_pylist() == a.column("spectral_score").to_pylist()


@pytest.mark.slow
def test_default_model_in_spawn_workers_and_a_forked_datasets_filter(samples_dir, tmp_path):
    """With the default model (a SentenceTransformer holds locks and a thread pool): spawn
    DataLoader workers load it themselves, and ``datasets.filter(num_proc=2)`` -- forked
    after the parent ran the model -- finishes (it used to hang at 0% CPU inside torch)."""
    shard = samples_dir / "sms_000.parquet"
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing as mp, torch, datasets
        from shardguard import Guard, load_config
        if __name__ == "__main__":
            cfg = load_config(None, {{"input.id_column": "id", "input.label_column": "label"}})
            g = Guard.fit({str(shard)!r}, cfg)
            ds = datasets.Dataset.from_parquet({str(shard)!r})
            one = ds.filter(g.hf_filter(), batched=True, batch_size=64)
            two = ds.filter(g.hf_filter(), batched=True, batch_size=64, num_proc=2)
            rows = ds.to_list()
            loader = torch.utils.data.DataLoader(g.wrap(rows), batch_size=None, num_workers=2,
                                                 multiprocessing_context=mp.get_context("spawn"))
            ids = [s["id"] for s in loader]
            print("filter", len(one), len(two), one["id"] == two["id"])
            print("loader", len(ids), len(set(ids)), sorted(ids) == sorted(one["id"]))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    n1, n2, same = lines["filter"].split()
    assert n1 == n2 and same == "True" and 0 < int(n1) < 493
    n, distinct, equal = lines["loader"].split()
    assert n == distinct == n1 and equal == "True"
