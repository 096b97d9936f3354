import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardguard.apply import apply_quarantine
from shardguard.cli import main
from shardguard.config import load_config
from shardguard.io.readers import ShardReader, UsageError, discover_shards
from shardguard.pipeline import scan

OPTS = {"embed.embedder": "hashing", "input.id_column": "id", "input.label_column": "label"}


@pytest.fixture()
def scanned(tmp_path, samples_dir):
    data = tmp_path / "data"
    shutil.copytree(samples_dir, data)
    out = tmp_path / "out"
    scan([data], out, load_config(None, OPTS))
    return data, out


def test_apply_writes_clean_rows_in_the_same_format_and_schema(scanned, tmp_path):
    data, out = scanned
    clean = tmp_path / "clean"
    assert main(["apply", str(out), "--to", str(clean)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    applied = json.loads((clean / "manifest.json").read_text())
    assert [s["rows_out"] for s in applied["shards"]] == [s["clean"] for s in manifest["shards"]]
    for entry in manifest["shards"]:
        src, dst = data / entry["name"], clean / entry["name"]
        assert dst.exists()
        (s_shard,) = discover_shards([src])
        (d_shard,) = discover_shards([dst])
        assert d_shard.format == s_shard.format
        rows = sum(b.num_rows for b in ShardReader(d_shard))
        assert rows == entry["clean"]
        quarantined = set(pq.read_table(out / entry["output"]).column("id").to_pylist())
        ids = [i for b in ShardReader(d_shard, columns=["id"]) for i in b.column("id").to_pylist()]
        assert not quarantined & set(ids)
        if s_shard.format != "jsonl":
            assert ShardReader(d_shard).schema() == ShardReader(s_shard).schema()
    # JSON Lines keep their kept lines byte for byte
    src_lines = (data / "sms_001.jsonl").read_bytes().splitlines()
    dst_lines = (clean / "sms_001.jsonl").read_bytes().splitlines()
    assert set(dst_lines) <= set(src_lines)


def test_apply_refuses_changed_inputs_and_unfinished_scans(scanned, tmp_path):
    data, out = scanned
    pq.write_table(pa.table({"id": ["a"], "text": ["changed"], "label": ["ham"]}), data / "sms_000.parquet")
    results = {r.name: r for r in apply_quarantine(out, tmp_path / "c")}
    assert "changed since the scan" in results["sms_000.parquet"].status
    assert not (tmp_path / "c" / "sms_000.parquet").exists()
    assert results["sms_001.jsonl"].status == "ok"
    assert main(["apply", str(out), "--to", str(tmp_path / "c2")]) == 1
    m = json.loads((out / "manifest.json").read_text())
    m["complete"] = False
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UsageError, match="did not finish"):
        apply_quarantine(out, tmp_path / "c3")


def test_apply_reads_jsonl_rows_as_the_scan_does_whatever_the_line_layout(tmp_path):
    """Two objects on one line, one object over two lines: scan and apply agree on every row."""
    data = tmp_path / "data"
    data.mkdir()
    texts = [f"message number {i} about {w}" for i, w in enumerate(["rain", "trains", "lunch", "work", "tea"])]
    objs = [{"id": f"r{i}", "text": t, "label": "ham"} for i, t in enumerate(texts)]
    objs[2]["text"] = "   "  # invalid: quarantined
    raw = (json.dumps(objs[0]) + " " + json.dumps(objs[1]) + "\n"
           + json.dumps(objs[2]).replace(", ", ",\n  ") + "\n\n"
           + json.dumps(objs[3]) + json.dumps(objs[4]))
    (data / "layout.jsonl").write_text(raw)
    out, clean = tmp_path / "out", tmp_path / "clean"
    scan([data], out, load_config(None, OPTS))
    q = pq.read_table(out / "quarantine" / "layout.parquet").to_pylist()
    assert [(r["id"], r["row"]) for r in q] == [("r2", 2)]
    assert main(["apply", str(out), "--to", str(clean)]) == 0
    kept = [json.loads(line) for line in (clean / "layout.jsonl").read_text().splitlines()]
    assert kept == [o for o in objs if o["id"] != "r2"]


def _digests(folder):
    import hashlib

    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_apply_never_writes_over_an_input_or_the_scan(scanned, tmp_path, capsys):
    data, out = scanned
    before = {**_digests(data), **_digests(out)}
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for target, why in [(data, "is the input"), (data / "extra", "is inside the input"),
                        (tmp_path, "contains the scan"), (out, "is the scan's output"),
                        (out / "quarantine", "is inside the scan's output"), (tmp_path / "mine", "not empty")]:
        assert main(["apply", str(out), "--to", str(target)]) == 2, target
        err = capsys.readouterr().err
        assert why in err and len(err.strip().splitlines()) == 1, err
    assert {**_digests(data), **_digests(out)} == before
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    # an earlier apply's output is replaced as a whole, and nothing temporary is left beside it
    clean = tmp_path / "clean"
    assert main(["apply", str(out), "--to", str(clean)]) == 0
    (clean / "stale.jsonl").write_text("{}\n")
    assert main(["apply", str(out), "--to", str(clean)]) == 0
    assert not (clean / "stale.jsonl").exists() and (clean / "sms_000.parquet").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []
