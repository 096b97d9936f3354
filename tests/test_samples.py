"""data/samples/ is exactly what scripts/make_samples.py builds, and PLANTED.json is true."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import re
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data" / "samples"
SCRIPT = REPO / "scripts" / "make_samples.py"
SOURCE = REPO.parent / "shared" / "data" / "sms_spam" / "sms_spam.parquet"
SHARDS = ["sms_000.parquet", "sms_001.jsonl", "extra/sms_002.arrow", "extra/sms_003.jsonl.gz"]
MAX_TEXT_CHARS = 100_000  # shardguard's default input.max_text_chars
FLOOD_SIZE = 20  # shardguard's default near_duplicates.flood_size


def read_rows(path: Path) -> list[dict]:
    """Rows of a shard as dicts, whatever its format (json module for JSONL: mixed types)."""
    name = path.name
    if name.endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    if name.endswith(".arrow"):
        with pa.ipc.open_file(path) as reader:
            return reader.read_all().to_pylist()
    if name.endswith(".jsonl.gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f]
    if name.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]
    raise AssertionError(f"unknown shard format: {path}")


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).lower()).strip()


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@pytest.fixture(scope="module")
def planted() -> dict:
    return json.loads((SAMPLES / "PLANTED.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def shards() -> dict[str, list[dict]]:
    return {name: read_rows(SAMPLES / name) for name in SHARDS}


@pytest.mark.skipif(not SOURCE.is_file(), reason=f"source dataset not present: {SOURCE}")
def test_committed_samples_are_what_the_script_builds(tmp_path, shards):
    out = tmp_path / "samples"
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], check=True, capture_output=True, timeout=60)
    built = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert built == sorted(SHARDS + ["PLANTED.json"])
    for name in SHARDS:
        assert read_rows(out / name) == shards[name], name
    assert json.loads((out / "PLANTED.json").read_text(encoding="utf-8")) == json.loads(
        (SAMPLES / "PLANTED.json").read_text(encoding="utf-8")
    )
    # the same schema and chunking as committed (Parquet row groups, Arrow record batches)
    assert pq.read_schema(out / SHARDS[0]) == pq.read_schema(SAMPLES / SHARDS[0])
    assert pq.ParquetFile(out / SHARDS[0]).num_row_groups == pq.ParquetFile(SAMPLES / SHARDS[0]).num_row_groups
    with pa.ipc.open_file(out / SHARDS[2]) as a, pa.ipc.open_file(SAMPLES / SHARDS[2]) as b:
        assert a.schema == b.schema and a.num_record_batches == b.num_record_batches


def test_layout_formats_and_columns(shards):
    assert pq.ParquetFile(SAMPLES / "sms_000.parquet").num_row_groups > 1
    with pa.ipc.open_file(SAMPLES / "extra/sms_002.arrow") as reader:  # IPC *file* format
        assert reader.num_record_batches > 1
    with gzip.open(SAMPLES / "extra/sms_003.jsonl.gz") as f:
        f.read(1)
    total = 0
    for name, rows in shards.items():
        total += len(rows)
        ids = [r["id"] for r in rows]
        assert all(isinstance(i, str) for i in ids), name
        assert len(ids) == len(set(ids)), f"duplicate ids in {name}"
        assert all(set(r) == {"id", "text", "label"} for r in rows), name
        assert {r["label"] for r in rows} == {"ham", "spam"}, name
    assert 1500 <= total <= 2500


def test_planted_ids_are_in_their_shards(planted, shards):
    assert planted["scan_order"] == sorted(SHARDS)
    for name in SHARDS:
        info = planted["shards"][name]
        ids = {r["id"] for r in shards[name]}
        assert info["rows"] == len(shards[name])
        for kind in ("flood-a", "flood-b", "exact_duplicates", "invalid"):
            missing = set(info[kind]) - ids
            assert not missing, f"{name} {kind}: {missing}"
    for entry in planted["exact_duplicates"] + planted["invalid"] + planted["natural_exact_duplicates"]:
        assert entry["id"] in {r["id"] for r in shards[entry["shard"]]}
        if "duplicate_of" in entry:
            assert entry["duplicate_of"] in {r["id"] for r in shards[entry["duplicate_of_shard"]]}


def test_floods_are_near_duplicates_spread_over_shards(planted, shards):
    by_id = {(name, r["id"]): r for name, rows in shards.items() for r in rows}
    for flood, info in planted["floods"].items():
        members = [(name, i) for name in SHARDS for i in planted["shards"][name][flood]]
        assert len(members) == info["copies"] > FLOOD_SIZE
        assert len({name for name, _ in members}) >= 3, f"{flood} is not spread over shards"
        texts = [by_id[m]["text"] for m in members]
        source = info["source_text"]
        assert len({normalise(t) for t in texts} | {normalise(source)}) == len(texts) + 1, "copies must differ"
        for t in texts:
            assert 1 <= levenshtein(t, source) <= 3, t
        assert {by_id[m]["label"] for m in members} == {info["label"]}
        # the source message itself is not among the real rows
        assert all(r["id"] != info["source_id"] for rows in shards.values() for r in rows)


def test_exact_duplicates_follow_their_originals_in_scan_order(planted, shards):
    by_id = {(name, r["id"]): r for name, rows in shards.items() for r in rows}
    order = planted["scan_order"]
    assert len(planted["exact_duplicates"]) >= 3
    for d in planted["exact_duplicates"] + planted["natural_exact_duplicates"]:
        copy, orig = by_id[(d["shard"], d["id"])], by_id[(d["duplicate_of_shard"], d["duplicate_of"])]
        assert normalise(copy["text"]) == normalise(orig["text"])
        assert order.index(d["duplicate_of_shard"]) <= order.index(d["shard"])


def test_invalid_rows(planted, shards):
    by_id = {(name, r["id"]): r for name, rows in shards.items() for r in rows}
    texts = [by_id[(e["shard"], e["id"])]["text"] for e in planted["invalid"]]
    assert None in texts
    assert "" in texts
    assert any(isinstance(t, str) and t and not t.strip() for t in texts)
    assert any(t is not None and not isinstance(t, str) for t in texts)
    assert any(isinstance(t, str) and len(t) > MAX_TEXT_CHARS for t in texts)
    # no other row is invalid
    for name, rows in shards.items():
        for r in rows:
            t = r["text"]
            bad = not isinstance(t, str) or not t.strip() or len(t) > MAX_TEXT_CHARS
            assert bad == r["id"].startswith("invalid-"), (name, r["id"])


def test_samples_stay_small():
    size = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert size < 1_000_000
