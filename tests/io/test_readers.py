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
        marks += b.column(col).to_pylist() if col in b.schema.names else [None] * b.num_rows
    bad = [i for i, m in zip(ids, marks) if m]
    assert len(bad) == 1
    row = ids.index(bad[0])
    # the value is kept as its text and its JSON type named; validation makes the row invalid
    assert marks[row] == "number"
    assert table.column("text")[row].as_py() == "12345"


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


def _values(path, **kw):
    (shard,) = discover_shards([path])
    return [r for b in ShardReader(shard, **kw) for r in b.to_pylist()]


def test_jsonl_rows_are_json_values_however_laid_out_on_lines(tmp_path):
    p = tmp_path / "layout.jsonl"
    p.write_text('{"text": "a", "n": 1} {"text": "b", "n": 2}\n\n{"text":\n "c", "n": 3}\n  \n{"text": "d", "n": 4}')
    rows = _values(p, batch_size=2, columns=["text", "n"])
    assert [(r["text"], r["n"]) for r in rows] == [("a", 1), ("b", 2), ("c", 3), ("d", 4)]


def test_hostile_json_fails_the_shard_naming_line_and_row_not_the_process(tmp_path):
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"text": "ok"}\n{"text": ' + "[" * 30000 + "]" * 30000 + "}\n")
    with pytest.raises(ShardError, match=r"deep\.jsonl: line 2 \(row 1\): JSON nested deeper"):
        _values(deep, columns=["text"])
    bad = tmp_path / "utf8.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ShardError, match=r"utf8\.jsonl: line 3 \(row 2\): invalid UTF-8 \(byte 0xe9\)"):
        _values(bad, columns=["text"])


def test_a_json_value_that_is_not_an_object_is_a_row_marked_invalid(tmp_path):
    from shardguard.io.readers import ROW_ERROR_COLUMN

    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "x"}\n[1, 2]\n"just text"\n')
    rows = _values(p, columns=["text"])
    assert len(rows) == 3
    assert [r.get(ROW_ERROR_COLUMN) for r in rows] == [None, "row is a JSON array, not an object",
                                                       "row is a JSON string, not an object"]


def test_paths_that_are_not_readable_files_become_failed_shards(tmp_path):
    import os

    (tmp_path / "good.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "dangling.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    (tmp_path / "loop.jsonl").symlink_to(tmp_path / "loop.jsonl")
    os.mkfifo(tmp_path / "fifo.jsonl")
    (tmp_path / "zero.parquet").symlink_to("/dev/zero")
    errors = {s.name: s.error for s in discover_shards([tmp_path])}
    assert errors["good.jsonl"] is None
    assert "dangling symlink" in errors["dangling.jsonl"]
    assert "symlink loop" in errors["loop.jsonl"]
    assert "FIFO" in errors["fifo.jsonl"]
    assert "character device" in errors["zero.parquet"]


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root reads a folder whatever its mode")
def test_an_unreadable_sub_folder_is_a_failed_shard_not_a_silent_gap(tmp_path):
    (tmp_path / "good.jsonl").write_text('{"text": "x"}\n')
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "hidden.jsonl").write_text('{"text": "y"}\n')
    locked.chmod(0)
    try:
        errors = {s.name: s.error for s in discover_shards([tmp_path])}
    finally:
        locked.chmod(0o755)
    assert errors["good.jsonl"] is None
    assert "cannot list folder" in errors["locked"]
