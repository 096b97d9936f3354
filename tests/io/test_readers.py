import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardguard.io.readers import NONSTRING_PREFIX, ShardError, ShardReader, UsageError, discover_shards


def test_discovers_sample_shards_recursively_in_sorted_order(samples_dir, planted):
    shards = discover_shards([samples_dir])
    assert [s.name for s in shards] == planted["scan_order"]
    assert {s.format for s in shards} == {"parquet", "jsonl", "arrow"}
    names = {s.name: s.output_name for s in shards}
    assert names["extra/sms_003.jsonl.gz"] == "extra/sms_003.parquet"
    assert names["sms_001.jsonl"] == "sms_001.parquet"


@pytest.mark.parametrize("batch_size", [64, 10_000])
def test_every_format_streams_every_row_in_bounded_batches(samples_dir, planted, batch_size):
    for shard in discover_shards([samples_dir]):
        reader = ShardReader(shard, batch_size=batch_size, columns=["id", "text", "label"])
        batches = list(reader)
        assert all(b.num_rows <= batch_size for b in batches)
        assert sum(b.num_rows for b in batches) == planted["shards"][shard.name]["rows"], shard.name


def test_mixed_types_in_jsonl_are_marked_per_row_not_fatal(samples_dir):
    shard = next(s for s in discover_shards([samples_dir]) if s.name == "sms_001.jsonl")
    batches = list(ShardReader(shard, batch_size=100, columns=["id", "text", "label"]))
    table = pa.Table.from_batches([b.select(["id", "text", "label"]) for b in batches])
    ids = table.column("id").to_pylist()
    marks = []
    for b in batches:
        col = NONSTRING_PREFIX + "text"
        marks += b.column(col).to_pylist() if col in b.schema.names else [False] * b.num_rows
    bad = [i for i, m in zip(ids, marks) if m]
    assert len(bad) == 1
    row = ids.index(bad[0])
    assert table.column("text")[row].as_py() is None


def test_missing_column_names_file_and_column(tmp_path):
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"body": ["x"]}), p)
    (shard,) = discover_shards([p])
    with pytest.raises(ShardError, match=r"a\.parquet.*'text'"):
        list(ShardReader(shard, columns=["text"]))


def test_corrupt_parquet_is_a_shard_error_naming_the_file(tmp_path):
    p = tmp_path / "broken.parquet"
    p.write_bytes(b"PAR1" + b"\x00" * 100)
    (shard,) = discover_shards([p])
    with pytest.raises(ShardError, match="broken.parquet"):
        list(ShardReader(shard, columns=["text"]))


def test_invalid_json_line_names_the_line(tmp_path):
    p = tmp_path / "bad.jsonl.gz"
    with gzip.open(p, "wt") as fh:
        fh.write(json.dumps({"text": "fine"}) + "\n{not json\n")
    (shard,) = discover_shards([tmp_path])
    with pytest.raises(ShardError, match=r"bad\.jsonl\.gz.*line 2"):
        list(ShardReader(shard, columns=["text"]))


def test_arrow_stream_format_is_read_too(tmp_path):
    p = tmp_path / "s.arrows"
    t = pa.table({"text": ["a", "b", "c"]})
    with pa.OSFile(str(p), "wb") as sink, pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    (shard,) = discover_shards([p])
    assert sum(b.num_rows for b in ShardReader(shard, batch_size=2, columns=["text"])) == 3


def test_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        discover_shards([tmp_path / "nope"])
    with pytest.raises(UsageError, match="no shards found"):
        discover_shards([tmp_path])
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "a.parquet")
    (tmp_path / "a.jsonl").write_text('{"text": "y"}\n')
    with pytest.raises(UsageError, match="would both write quarantine/a.parquet"):
        discover_shards([tmp_path])
