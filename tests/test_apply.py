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


def test_review_loop_reasons_keep_and_allow(scanned, tmp_path):
    """A user reviews the flags: removes only floods, keeps ids they confirmed clean, and
    carries those ids into the next scan, where they are reported as allowed."""
    data, out = scanned
    lists = {p.name: pq.read_table(p) for p in (out / "quarantine").rglob("*.parquet")}
    q = pa.concat_tables(lists.values())
    reasons = q.column("reasons").to_pylist()
    # the lists carry each flagged row's text to review, cut at review.text_chars (200)
    texts = q.column("text").to_pylist()
    assert all(t is None or len(t) <= 200 for t in texts)
    assert any(t and "leading bid" in t for t in texts)
    floods = [i for i, r in zip(q.column("id").to_pylist(), reasons) if "duplicate_flood" in r]
    confirmed = floods[:3]
    (tmp_path / "keep.txt").write_text("\n".join(confirmed) + "\n\n")

    clean = tmp_path / "clean"
    assert main(["apply", str(out), "--to", str(clean), "--reasons", "duplicate_flood",
                 "--keep", str(tmp_path / "keep.txt")]) == 0
    applied = json.loads((clean / "manifest.json").read_text())
    assert applied["reasons"] == ["duplicate_flood"]
    assert applied["keep"]["ids"] == 3 and len(applied["keep"]["sha256"]) == 64
    out_ids = {i for s in discover_shards([clean]) for b in ShardReader(s, columns=["id"])
               for i in b.column("id").to_pylist()}
    assert set(confirmed) <= out_ids  # kept on review
    assert not (set(floods) - set(confirmed)) & out_ids  # the other floods removed
    invalid_ids = {i for i, r in zip(q.column("id").to_pylist(), reasons) if r == ["invalid"]}
    assert invalid_ids and invalid_ids <= out_ids  # another reason than --reasons: kept
    removed = sum(s["removed"] for s in applied["shards"])
    assert removed == len(floods) - 3
    assert sum(s["kept_on_review"] for s in applied["shards"]) == q.num_rows - removed
    assert main(["apply", str(out), "--to", str(tmp_path / "c2"), "--reasons", "nope"]) == 2

    # the next scan carries the confirmed ids: allowed, not quarantined, and said so
    out2 = tmp_path / "out2"
    assert main(["scan", str(data), "--out", str(out2), "--embedder", "hashing", "--id-column", "id",
                 "--label-column", "label", "--no-progress", "--allow", str(tmp_path / "keep.txt")]) == 0
    m1 = json.loads((out / "manifest.json").read_text())
    m2 = json.loads((out2 / "manifest.json").read_text())
    assert m2["totals"]["allowed"] == 3
    assert m2["totals"]["quarantined"] == m1["totals"]["quarantined"] - 3
    assert m2["totals"]["clean"] == m1["totals"]["clean"] + 3
    q2 = {i for p in (out2 / "quarantine").rglob("*.parquet") for i in pq.read_table(p).column("id").to_pylist()}
    assert not set(confirmed) & q2
    scores = pa.concat_tables(pq.read_table(p) for p in (out2 / "scores").rglob("*.parquet"))
    status = dict(zip(scores.column("id").to_pylist(), scores.column("status").to_pylist()))
    assert all(status[i] == "allowed" for i in confirmed)
    # a Parquet id list works the same, and the Guard lets allowed rows through
    pq.write_table(pa.table({"id": confirmed}), tmp_path / "keep.parquet")
    from shardguard.guard import Guard

    guard = Guard.fit(data, load_config(None, {**OPTS, "review.allow": str(tmp_path / "keep.parquet")}))
    kept = {i for s in discover_shards([data]) for b in ShardReader(s, 512, ["id", "text", "label"])
            for i in guard.filter(b).column("id").to_pylist()}
    assert set(confirmed) <= kept and not (set(floods) - set(confirmed)) & kept
