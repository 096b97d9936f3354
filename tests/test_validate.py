import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardguard.config import InputConfig
from shardguard.io.readers import ShardError, ShardReader, discover_shards
from shardguard.validate import RowNormalizer


def _normalize_all(shard, cfg):
    norm = RowNormalizer(shard, cfg)
    valid, invalid = [], []
    for b in ShardReader(shard, batch_size=128, columns=norm.source_columns()):
        nb = norm(b)
        valid.append(nb.valid)
        invalid.append(nb.invalid)
    return norm, pa.Table.from_batches(valid), pa.concat_tables(invalid)


def test_samples_invalid_rows_are_found_with_reasons_and_nothing_is_lost(samples_dir, planted):
    cfg = InputConfig(id_column="id", label_column="label")
    for shard in discover_shards([samples_dir]):
        _, valid, invalid = _normalize_all(shard, cfg)
        info = planted["shards"][shard.name]
        assert valid.num_rows + invalid.num_rows == info["rows"]
        assert sorted(invalid.column("id").to_pylist()) == sorted(info["invalid"])
        for d in invalid.column("detail").to_pylist():
            assert "column 'text'" in d
        rows = sorted(valid.column("row").to_pylist() + invalid.column("row").to_pylist())
        assert rows == list(range(info["rows"]))


def test_details_say_what_is_wrong(tmp_path):
    p = tmp_path / "s.parquet"
    pq.write_table(pa.table({"text": ["ok", None, "", "   ", "x" * 50]}), p)
    (shard,) = discover_shards([p])
    _, valid, invalid = _normalize_all(shard, InputConfig(max_text_chars=10))
    assert valid.column("text").to_pylist() == ["ok"]
    assert valid.column("id").to_pylist() == ["s.parquet:0"]
    details = dict(zip(invalid.column("row").to_pylist(), invalid.column("detail").to_pylist()))
    assert "null" in details[1]
    assert "empty" in details[2] and "empty" in details[3]
    assert "50 characters" in details[4] and "limit of 10" in details[4]


def test_text_template_joins_columns_and_tolerates_null_fields(tmp_path):
    p = tmp_path / "alpaca.parquet"
    pq.write_table(pa.table({"instruction": ["Add", "Name"], "input": ["2 and 3", None], "output": ["5", "Bob"]}), p)
    (shard,) = discover_shards([p])
    _, valid, _ = _normalize_all(shard, InputConfig(text_template="{instruction}\n{input}\n{output}"))
    assert valid.column("text").to_pylist() == ["Add\n2 and 3\n5", "Name\n\nBob"]


def test_template_missing_column_names_it(tmp_path):
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"instruction": ["x"]}), p)
    (shard,) = discover_shards([p])
    with pytest.raises(ShardError, match="'output'"):
        _normalize_all(shard, InputConfig(text_template="{instruction} {output}"))


def test_duplicate_ids_fail_the_shard_naming_rows(tmp_path):
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "a"], "text": ["x", "y", "z"]}), p)
    (shard,) = discover_shards([p])
    norm, _, _ = _normalize_all(shard, InputConfig(id_column="id"))
    lookup = {0: "a", 1: "b", 2: "a"}.__getitem__
    with pytest.raises(ShardError, match=r"id 'a' repeats \(rows 0 and 2\)"):
        norm.check_unique_ids(lookup)


def test_non_string_text_column_in_parquet_fails_clearly(tmp_path):
    p = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), p)
    (shard,) = discover_shards([p])
    with pytest.raises(ShardError, match="column 'text' has type int64, expected a string column"):
        _normalize_all(shard, InputConfig())


def test_labels_become_strings_and_whole_floats_read_as_ints(tmp_path):
    p = tmp_path / "l.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": [1.0, 0.0]}), p)
    (shard,) = discover_shards([p])
    _, valid, _ = _normalize_all(shard, InputConfig(label_column="label"))
    assert valid.column("label").to_pylist() == ["1", "0"]
