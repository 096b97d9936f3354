"""``shardguard verify``: inputs, outputs and the manifest re-hashed against a scan, through the CLI."""

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardguard.cli import main

FAST = ["--embedder", "hashing", "--id-column", "id", "--label-column", "label", "--no-progress"]


@pytest.fixture()
def delivery(tmp_path, samples_dir):
    data = tmp_path / "delivery"
    shutil.copytree(samples_dir, data)
    out = tmp_path / "out"
    assert main(["-q", "scan", str(data), "--out", str(out), *FAST]) == 0
    return data, out


def _verify(capsys, *args):
    capsys.readouterr()
    code = main(["verify", *map(str, args)])
    return code, capsys.readouterr().out


def test_an_untouched_delivery_verifies(delivery, capsys, tmp_path):
    data, out = delivery
    code, text = _verify(capsys, out)
    assert code == 0 and "everything matches" in text
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)  # the same delivery elsewhere, named by PATH
    assert _verify(capsys, out, moved)[0] == 0


def test_swapped_missing_and_added_shards_are_each_named(delivery, capsys):
    data, out = delivery
    t = pq.read_table(data / "sms_000.parquet")
    labels = t.column("label").to_pylist()
    labels[0] = "spam" if labels[0] == "ham" else "ham"  # one label flipped after the scan
    pq.write_table(t.set_column(t.schema.get_field_index("label"), "label", pa.array(labels)), data / "sms_000.parquet")
    (data / "extra" / "sms_002.arrow").unlink()
    (data / "late.jsonl").write_text('{"id": "x", "text": "slipped in after the scan", "label": "ham"}\n')
    code, text = _verify(capsys, out)
    assert code == 1
    assert "input changed: sms_000.parquet" in text
    assert "input missing: extra/sms_002.arrow" in text
    assert "input added: late.jsonl" in text
    assert "sms_001.jsonl" not in text


def test_altered_outputs_and_manifest_are_found(delivery, capsys):
    _, out = delivery
    q = out / "quarantine" / "sms_000.parquet"
    table = pq.read_table(q)
    pq.write_table(table.slice(1), q)  # a quarantined row quietly released
    (out / "scores" / "sms_001.parquet").unlink()
    code, text = _verify(capsys, out)
    assert code == 1
    assert "output changed: quarantine/sms_000.parquet" in text
    assert "output missing: scores/sms_001.parquet" in text
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][0]["quarantined"] = 0
    (out / "manifest.json").write_text(json.dumps(manifest))
    code, text = _verify(capsys, out)
    assert code == 1 and "manifest.json altered" in text
