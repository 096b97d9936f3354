"""The near-duplicate reduce split into partitions of whole components gives what the
sequential replay gives: the same copies, roots, similarities, contradictions and clusters,
for any number of partitions -- on phrase-level data (GLUE SST-2, where nearly every phrase is
a statement of its own), with planted label-flipped typo'd copies and an exact flood, in
several shards and small work-file batches (many index calls)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardguard.config import load_config
from shardguard.dedup import NearDuplicateIndex, RootFeatures
from shardguard.dedup.components import SMALL_BUCKET, IndexParams, bucket_links, components, forest, reduce_in_process
from shardguard.passes.read_embed import work_path
from shardguard.pipeline import ScanPipeline
from shardguard.stages import DuplicateClusters


def _corpus(shared_data: Path, folder: Path, n: int = 12000) -> None:
    from shardguard.bench.attacks import typo

    t = pq.read_table(shared_data / "sst2_glue" / "train.parquet", columns=["text", "label"]).slice(0, n)
    texts, labels = t.column("text").to_pylist(), t.column("label").to_pylist()
    rng = np.random.default_rng(5)
    src = rng.choice(np.flatnonzero([len(x.split()) >= 6 for x in texts]), 60, replace=False)
    texts += [typo(texts[i], rng) for i in src.tolist()]  # label-flipped typo'd copies
    labels += [1 - labels[i] for i in src.tolist()]
    texts += ["buy cheap pills at example dot com now"] * 30  # an exact flood, one label
    labels += [1] * 30
    texts += [None, ""]  # an invalid row and an empty text
    labels += [0, 0]
    order = rng.permutation(len(texts))
    rows = [{"id": f"r{i}", "text": texts[k], "label": labels[k]} for i, k in enumerate(order.tolist())]
    folder.mkdir()
    for s in range(3):
        pq.write_table(pa.Table.from_pylist(rows[s::3]), folder / f"part-{s}.parquet")


@pytest.mark.slow  # ~10 s: pass 1 over 12,000 rows (no model), then two partitioned replays
@pytest.mark.parametrize("copies", ["conflicting", "all"])
def test_partitioned_reduce_equals_the_sequential_replay(tmp_path, shared_data, copies):
    _corpus(shared_data, tmp_path / "in")
    cfg = load_config(None, {"input.id_column": "id", "input.label_column": "label", "input.batch_size": 700,
                             "embed.embedder": "none", "near_duplicates.copies": copies})
    pipe = ScanPipeline(cfg, tmp_path / "out")
    # a guard's pass 1 keeps the copies' labels and the roots' features, which a scan frees
    # once its clusters are resolved: the comparison below reads them
    state = pipe.prepare([tmp_path / "in"], remember_roots=True)
    ok = [o for o in state.outcomes if o.status == "ok"]
    names = [o.shard.name for o in ok]
    paths = [work_path(state.work_dir, o.shard) for o in ok]
    starts = [state.seq_start[n] for n in names]
    want = state.clusters
    assert want.all_roots().size > 50  # the comparison is not between two empty sets

    for partitions in (1, 4):
        got, kept = DuplicateClusters(cfg.near_duplicates.flood_size, cfg.near_duplicates.flood_agreement), RootFeatures()
        sizes = reduce_in_process(paths, starts, names, IndexParams.of(state.dup_index), copies == "conflicting",
                                  partitions, got, kept)
        assert 0 < sizes["largest_partition_rows"] <= sizes["component_rows"] < sum(o.valid for o in ok)
        for name in names:
            for a, b in zip(want.members(name), got.members(name)):
                np.testing.assert_array_equal(a, b)
        w_roots, w_labels, w_feats, w_seqs = want.copies()
        g_roots, g_labels, g_feats, g_seqs = got.copies()
        np.testing.assert_array_equal(w_roots, g_roots)
        np.testing.assert_array_equal(w_seqs, g_seqs)
        assert list(w_labels) == list(g_labels)
        roots = want.all_roots()
        np.testing.assert_array_equal(roots, got.all_roots())
        # the flood test reads the cluster roots' features: the replay keeps the same ones
        for f in ("length", "words", "h_full"):
            np.testing.assert_array_equal(getattr(state.root_features.lookup(roots), f), getattr(kept.lookup(roots), f))
        assert np.array_equal(state.root_features.label_of(roots), kept.label_of(roots))
        if copies == "conflicting":  # planted flipped copies contradict what they copy
            assert sum(int(m[3].sum()) for m in (got.members(n) for n in names)) >= 30


def _pairs(t: pa.Table) -> list[tuple[int, int]]:
    return sorted(zip(t.column("src").to_pylist(), t.column("dst").to_pylist()))


def test_bucket_links_components_and_forest():
    """A bucket of more than SMALL_BUCKET rows links every row to its earliest; a small one
    lists its pairs once (a pair sharing two buckets too) as candidates to verify."""
    big = np.arange(100, 100 + SMALL_BUCKET + 1, dtype=np.int64)[::-1]  # any order
    buckets = pa.table({"bucket": np.r_[np.full(big.size, 7), [9, 9, 9, 4, 12, 12]].astype(np.int64),
                        "seq": np.r_[big, [8, 5, 11, 3, 11, 5]].astype(np.int64)})
    edges, candidates = bucket_links(buckets)
    assert _pairs(edges) == [(100, int(s)) for s in range(101, 101 + SMALL_BUCKET)]
    assert _pairs(candidates) == [(5, 8), (5, 11), (8, 11)]  # 3 shares no bucket
    seqs, comp = components(candidates.column("src").to_numpy(), candidates.column("dst").to_numpy())
    assert seqs.tolist() == [5, 8, 11] and comp.tolist() == [5, 5, 5]
    assert _pairs(forest(candidates)) == [(5, 8), (5, 11)]  # one edge per row beyond the earliest
    none, _ = bucket_links(buckets.slice(0, 0))
    assert components(none.column("src").to_numpy(), none.column("dst").to_numpy())[0].size == 0


def test_explicit_sequence_numbers_must_increase():
    index = NearDuplicateIndex()
    index.add_judged(["a b c d"], seqs=np.array([10]))
    assert index.n_docs == 11
    with pytest.raises(ValueError, match="increasing"):
        index.add_judged(["x y z", "u v w"], seqs=np.array([12, 12]))
    with pytest.raises(ValueError, match="from 11"):
        index.add_judged(["x y z"], seqs=np.array([3]))


@pytest.mark.parametrize("judged", [True, False])
def test_a_partition_without_rows_replays_to_no_rows(judged):
    """With one component, or fewer components than partitions, a partition gets no rows: its
    replay is empty (it once replayed one phantom call and failed on the missing labels)."""
    from shardguard.dedup.components import RESULT_SCHEMA, ROWS_SCHEMA, replay_partition

    out = replay_partition(ROWS_SCHEMA.empty_table(), IndexParams.of(NearDuplicateIndex()), judged)
    assert out.num_rows == 0 and out.schema.equals(RESULT_SCHEMA)


def test_one_component_in_several_partitions_equals_the_sequential_replay(tmp_path):
    """Every copy in one component (variants of one sentence, unlabelled) and partitions
    to spare: the empty partitions give nothing, the full one what the replay gives."""
    rng = np.random.default_rng(3)
    base = "the quick brown fox jumps over the lazy dog near the river bank at dawn"
    texts = [base.replace("dawn", w) for w in ("dawn", "dusk", "noon", "night")] * 20
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    texts = [t + f" {int(rng.integers(10))}" for t in texts] + [  # 40 texts of random letters: no copies
        " ".join("".join(rng.choice(letters, 6)) for _ in range(8)) for _ in range(40)]
    folder = tmp_path / "in"
    folder.mkdir()
    for s in range(2):
        part = texts[s::2]
        pq.write_table(pa.table({"id": [f"s{s}-{i}" for i in range(len(part))], "text": part}), folder / f"{s}.parquet")
    cfg = load_config(None, {"input.id_column": "id", "embed.embedder": "none"})
    state = ScanPipeline(cfg, tmp_path / "out").prepare([folder], remember_roots=True)
    ok = [o for o in state.outcomes if o.status == "ok"]
    names = [o.shard.name for o in ok]
    paths = [work_path(state.work_dir, o.shard) for o in ok]
    starts = [state.seq_start[n] for n in names]
    got = DuplicateClusters(cfg.near_duplicates.flood_size, cfg.near_duplicates.flood_agreement)
    sizes = reduce_in_process(paths, starts, names, IndexParams.of(state.dup_index), True, 4, got, RootFeatures())
    assert sizes["largest_partition_rows"] == sizes["component_rows"] >= 80  # one component, three empty partitions
    np.testing.assert_array_equal(state.clusters.all_roots(), got.all_roots())
    for name in names:
        for a, b in zip(state.clusters.members(name), got.members(name)):
            np.testing.assert_array_equal(a, b)
