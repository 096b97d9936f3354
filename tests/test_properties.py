"""Property tests (hypothesis): readers, the near-duplicate index and apply, on random tables and layouts.

Every random input goes through the public path: ``ShardReader`` on a written file, ``NearDuplicateIndex``
on texts, and ``scan`` + ``apply`` on a folder. Counts must add up, apply's output must be the input
minus the quarantined rows, and equal inputs must give equal outputs.
"""

import json
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardguard.apply import apply_quarantine
from shardguard.config import load_config
from shardguard.dedup import NearDuplicateIndex
from shardguard.io.readers import ShardReader, discover_shards, iter_json_values
from shardguard.pipeline import scan

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

words = st.sampled_from(["rain", "train", "the", "a", "ticket", "café", "ünïcode", "tea", "\"quoted\"", "x\\y", "日本"])
texts = st.lists(words, min_size=0, max_size=8).map(" ".join)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=False, allow_infinity=False, width=32), texts)
rows = st.lists(st.fixed_dictionaries({"text": st.one_of(texts, st.none()), "label": scalars}), max_size=40)
separators = st.sampled_from(["\n", " ", "\n\n", "  \n\t", "", "\r\n"])


def _layout(objs, seps, indent):
    """JSON values laid out on lines as a vendor might: any whitespace between, some over several lines."""
    out = []
    for i, o in enumerate(objs):
        out.append(json.dumps(o, ensure_ascii=False, indent=2 if indent[i % len(indent)] else None))
        out.append(seps[i % len(seps)] if seps[i % len(seps)] or not out[-1].endswith("}") else "")
    return "".join(out)


@SETTINGS
@given(objs=rows, seps=st.lists(separators, min_size=1, max_size=5), indent=st.lists(st.booleans(), min_size=1),
       batch=st.integers(1, 16))
def test_jsonl_reader_gives_one_row_per_value_whatever_the_layout(objs, seps, indent, batch):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "r.jsonl"
        p.write_text(_layout(objs, seps, indent), encoding="utf-8")
        (shard,) = discover_shards([p])
        read = [r for b in ShardReader(shard, batch_size=batch, columns=["text"]) for r in b.to_pylist()]
    assert len(read) == len(objs)
    # strings come back as they were; a non-string keeps its text form and is marked (invalid later)
    assert [r["text"] for r in read if r.get("__sg_nonstring__:text") is None] == \
        [o["text"] for o in objs if o["text"] is None or isinstance(o["text"], str)]


@SETTINGS
@given(values=st.lists(st.one_of(texts, st.none()), max_size=60), group=st.integers(1, 20), batch=st.integers(1, 32))
def test_parquet_reader_streams_every_row_in_order(values, group, batch):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.parquet"
        pq.write_table(pa.table({"text": pa.array(values, pa.string())}), p, row_group_size=group)
        (shard,) = discover_shards([p])
        batches = list(ShardReader(shard, batch_size=batch, columns=["text"]))
    assert all(b.num_rows <= batch for b in batches)
    assert [v for b in batches for v in b.column("text").to_pylist()] == values


@SETTINGS
@given(docs=st.lists(texts.filter(lambda t: len(t) > 3), min_size=1, max_size=40), split=st.integers(1, 40))
def test_index_finds_every_exact_repeat_deterministically_however_batched(docs, split):
    a, b = NearDuplicateIndex(), NearDuplicateIndex()
    root_a, sim_a = a.add(docs)
    parts = [b.add(docs[i:i + split]) for i in range(0, len(docs), split)]
    root_b = [int(r) for part in parts for r in part[0]]
    assert root_a.tolist() == root_b  # batching does not change the roots
    first = {}
    for i, (t, r) in enumerate(zip(docs, root_a.tolist())):
        norm = " ".join(t.lower().split())
        if norm in first:
            assert r >= 0 and r < i, (t, r)  # a repeat points at an earlier row
        if r < 0:
            first.setdefault(norm, i)


CFG = {"embed.embedder": "none", "input.id_column": "id", "input.label_column": "label",
       "near_duplicates.copies": "all"}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=rows, seps=st.lists(separators, min_size=1, max_size=5), indent=st.lists(st.booleans(), min_size=1))
def test_apply_writes_exactly_the_input_minus_the_quarantined_rows(objs, seps, indent):
    objs = [{"id": f"r{i}", **o} for i, o in enumerate(objs)]
    if not objs:
        objs = [{"id": "r0", "text": "only row", "label": 1}]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "in").mkdir()
        (d / "in" / "s.jsonl").write_text(_layout(objs, seps, indent), encoding="utf-8")
        scan([d / "in"], d / "out", load_config(None, CFG))
        m = json.loads((d / "out" / "manifest.json").read_text())
        (entry,) = m["shards"]
        assert entry["rows"] == len(objs) == entry["clean"] + entry["quarantined"]
        dropped = set(pq.read_table(d / "out" / "quarantine" / "s.parquet").column("id").to_pylist())
        apply_quarantine(d / "out", d / "clean")
        first = (d / "clean" / "s.jsonl").read_bytes()
        with open(d / "clean" / "s.jsonl", "rb") as fh:
            kept = [v for v, _ in iter_json_values(fh, "clean")]
        assert kept == [o for o in objs if o["id"] not in dropped]
        apply_quarantine(d / "out", d / "clean")  # deterministic: the same bytes again
        assert (d / "clean" / "s.jsonl").read_bytes() == first
        shutil.rmtree(d / "clean")
