"""``shardguard diff``: a new delivery against a trusted scan, through the CLI."""

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardguard.cli import main
from shardguard.config import load_config
from shardguard.guard import Guard

OPTS = {"embed.embedder": "hashing", "input.id_column": "id", "input.label_column": "label"}
FAST = ["--embedder", "hashing", "--id-column", "id", "--label-column", "label", "--no-progress"]


@pytest.fixture()
def baseline(tmp_path, samples_dir):
    """A delivery of one real shard and its scan."""
    old = tmp_path / "v1"
    old.mkdir()
    shutil.copy(samples_dir / "sms_000.parquet", old)
    base = tmp_path / "base"
    assert main(["-q", "scan", str(old), "--out", str(base), *FAST]) == 0
    return old, base


def test_diff_names_new_changed_and_removed_rows_and_scores_only_those(tmp_path, baseline, capsys):
    old, base = baseline
    profile = Guard.fit(old, load_config(None, OPTS)).save(tmp_path / "profile")

    rows = pq.read_table(old / "sms_000.parquet").to_pylist()
    ok = [r for r in rows if isinstance(r["text"], str) and r["text"].strip()]
    changed_id, removed_id = ok[3]["id"], ok[4]["id"]
    new = [dict(r) for r in rows if r["id"] != removed_id]
    for r in new:
        if r["id"] == changed_id:
            r["label"] = "spam" if r["label"] == "ham" else "ham"  # a relabelled row
    new.append({**ok[5], "id": "vendor-new-1", "label": "spam" if ok[5]["label"] == "ham" else "ham"})  # a flipped copy
    new.append({**ok[6], "id": "vendor-new-2", "text": "a genuinely new message about the tide tables"})
    v2 = tmp_path / "v2"
    v2.mkdir()
    pq.write_table(pa.Table.from_pylist(new, schema=pq.read_schema(old / "sms_000.parquet")), v2 / "sms_000.parquet")

    out = tmp_path / "diff"
    capsys.readouterr()
    code = main(["diff", str(base), str(v2), "--profile", str(profile), "--out", str(out)])
    text = capsys.readouterr().out
    assert f"2 new, 1 changed, 1 removed, {len(rows) - 2} unchanged rows" in text
    report = json.loads((out / "report.json").read_text())
    assert report["rows"] == {"new": 2, "changed": 1, "removed": 1, "unchanged": len(rows) - 2}
    assert sum(report["verdicts"].values()) == 3  # only the new and changed rows were scored
    got = {r["id"]: r for r in pq.read_table(out / "rows.parquet").to_pylist()}
    assert {k: got[k]["change"] for k in got} == {changed_id: "changed", removed_id: "removed",
                                                   "vendor-new-1": "new", "vendor-new-2": "new"}
    # a copy of a trusted row under the other label is caught against the profile
    assert "near_duplicate" in got["vendor-new-1"]["reasons"]
    assert got["vendor-new-2"]["status"] == "clean"
    assert code == 1  # a new row was flagged


def test_diff_refuses_an_altered_baseline(baseline, capsys):
    data, base = baseline
    m = json.loads((base / "manifest.json").read_text())
    m["config"]["input"]["label_column"] = None
    (base / "manifest.json").write_text(json.dumps(m))
    assert main(["diff", str(base), str(data)]) == 2
    assert "manifest.json altered" in capsys.readouterr().err
