"""End to end: ``scan`` on the committed samples and on broken inputs."""

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardguard.config import load_config
from shardguard.passes.statistics import shard_statistics
from shardguard.pipeline import LocalEngine, scan

FAST = {"embed.embedder": "hashing", "input.id_column": "id", "input.label_column": "label"}


@pytest.fixture(scope="module")
def sample_scan(tmp_path_factory, samples_dir):
    out = tmp_path_factory.mktemp("scan")
    result = scan([samples_dir], out, load_config(None, FAST))
    return out, result


def lists_name(shard):
    for ext in (".jsonl.gz", ".jsonl", ".arrow", ".parquet"):
        if shard.endswith(ext):
            return shard[: -len(ext)] + ".parquet"
    raise ValueError(shard)


def _lists(out):
    return {p.relative_to(out / "quarantine").as_posix(): pq.read_table(p)
            for p in sorted((out / "quarantine").rglob("*.parquet"))}


def test_every_shard_gets_a_list_and_the_counts_add_up(sample_scan, planted):
    out, result = sample_scan
    manifest = json.loads((out / "manifest.json").read_text())
    lists = _lists(out)
    assert sorted(lists) == sorted(s.replace(".jsonl.gz", ".parquet").replace(".jsonl", ".parquet")
                                   .replace(".arrow", ".parquet") for s in planted["scan_order"])
    assert manifest["complete"] is True
    for entry in manifest["shards"]:
        assert entry["status"] == "ok"
        assert entry["rows"] == planted["shards"][entry["name"]]["rows"]
        assert entry["rows"] == entry["clean"] + entry["quarantined"]
        assert entry["invalid"] <= entry["quarantined"]
        q = pq.read_table(out / entry["output"])
        assert q.num_rows == entry["quarantined"]
        scores = pq.read_table(out / "scores" / entry["output"].split("/", 1)[1])
        assert scores.num_rows == entry["rows"]
        assert len(set(entry["sha256"])) > 1 and len(entry["sha256"]) == 64
    totals = result.report["totals"]
    assert totals["rows"] == sum(p["rows"] for p in planted["shards"].values())
    assert totals["rows"] == totals["clean"] + totals["quarantined"]


def test_output_contract_columns(sample_scan):
    out, _ = sample_scan
    schema = pq.read_schema(out / "quarantine" / "sms_000.parquet")
    assert schema.field("id").type == pa.string()
    assert schema.field("row").type == pa.int64()
    assert schema.field("reasons").type == pa.list_(pa.string())
    assert schema.field("duplicate_of").type == pa.string()
    for c in ("near_duplicate_score", "outlier_score", "spectral_score"):
        assert schema.field(c).type == pa.float64()


def test_planted_invalid_rows_and_floods_are_quarantined_with_reasons(sample_scan, planted):
    out, _ = sample_scan
    lists = _lists(out)
    for shard, info in planted["shards"].items():
        q = lists[shard.rsplit(".jsonl", 1)[0].rsplit(".arrow", 1)[0].rsplit(".parquet", 1)[0] + ".parquet"]
        reasons = dict(zip(q.column("id").to_pylist(), q.column("reasons").to_pylist()))
        for rid in info["invalid"]:
            assert reasons[rid] == ["invalid"], rid
        for flood in ("flood-a", "flood-b"):
            for rid in info[flood]:
                assert "duplicate_flood" in reasons.get(rid, []), (shard, rid)
        for rid in info["exact_duplicates"]:
            # they keep their original's label: not quarantined by default (near_duplicates.copies)
            assert "near_duplicate" not in reasons.get(rid, []), rid


def test_duplicate_of_points_at_the_first_occurrence_in_scan_order(sample_scan, planted):
    out, _ = sample_scan
    scores = {p.relative_to(out / "scores").as_posix(): pq.read_table(p)
              for p in sorted((out / "scores").rglob("*.parquet"))}
    everything = pa.concat_tables([t.select(["id", "status", "duplicate_of", "duplicate_of_shard",
                                            "duplicate_of_row", "near_duplicate_score"])
                                   for t in scores.values()]).to_pylist()
    by_id = {r["id"]: r for r in everything}
    # the exact duplicates' originals, as PLANTED.json records them
    assert planted["exact_duplicates"]
    for entry in planted["exact_duplicates"]:
        row = by_id[entry["id"]]
        assert row["duplicate_of"] == entry["duplicate_of"]
        assert row["duplicate_of_shard"] == entry["duplicate_of_shard"]
        original = scores[lists_name(entry["duplicate_of_shard"])]
        assert original.column("id")[row["duplicate_of_row"]].as_py() == entry["duplicate_of"]
        assert row["near_duplicate_score"] == pytest.approx(1.0)
    # every copy (and only a copy) names its first occurrence, quarantined or not
    for r in everything:
        assert (r["duplicate_of"] is not None) == (r["near_duplicate_score"] is not None)
    # and in the quarantine lists, every near_duplicate has one
    for t in _lists(out).values():
        for r in t.select(["reasons", "duplicate_of"]).to_pylist():
            if "near_duplicate" in r["reasons"]:
                assert r["duplicate_of"] is not None


def test_report_has_totals_thresholds_timings(sample_scan, planted):
    out, _ = sample_scan
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["failed_shards"] == 0
    largest = report["largest_duplicate_clusters"][0]
    assert largest["size"] == 40 and largest["flood"] is True and largest["root_id"].startswith("flood-a")
    assert set(report["thresholds"]) >= {"near_duplicate", "duplicate_flood", "outlier", "spectral"}
    assert report["throughput_rows_per_s"] > 0
    assert {"read", "embed", "index", "fit", "score_write"} <= set(report["timings_s"])
    # the driver's corpus-sized state, for sizing a larger run (docs/scaling.md)
    sizes = report["state_sizes"]
    assert 0 < sizes["near_duplicate_roots"] < report["totals"]["rows"]
    assert sizes["near_duplicate_index_bytes"] > 0 and sizes["root_features_bytes"] > 0
    assert sizes["duplicate_clusters"] >= len(report["largest_duplicate_clusters"]) > 0
    assert "trigger_candidate_rows" not in sizes  # the trigger detector was left out
    assert report["reasons"]["invalid"] == sum(len(i["invalid"]) for i in planted["shards"].values())
    # trigger mining needs meaning, which hashed words do not carry: left out, and said so
    assert "trigger" in report["skipped_detectors"] and "trigger" not in report["thresholds"]


def test_same_inputs_same_lists(sample_scan, tmp_path, samples_dir):
    out, _ = sample_scan
    again = tmp_path / "again"
    scan([samples_dir], again, load_config(None, FAST))
    a, b = _lists(out), _lists(again)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].equals(b[k]), k


def test_corrupt_shard_fails_alone(tmp_path, samples_dir):
    data = tmp_path / "in"
    shutil.copytree(samples_dir, data)
    (data / "zz_broken.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    out = tmp_path / "out"
    result = scan([data], out, load_config(None, FAST))
    assert [o.shard.name for o in result.failed] == ["zz_broken.parquet"]
    assert "zz_broken.parquet" in result.failed[0].status
    manifest = json.loads((out / "manifest.json").read_text())
    statuses = {s["name"]: s["status"] for s in manifest["shards"]}
    assert statuses.pop("zz_broken.parquet") != "ok"
    assert set(statuses.values()) == {"ok"}
    assert len(list((out / "quarantine").rglob("*.parquet"))) == 4
    assert result.report["totals"]["failed_shards"] == 1


def test_missing_column_fails_the_shard_naming_file_and_column(tmp_path):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"text": ["a b c d e", "f g h i j"]}), tmp_path / "in" / "good.parquet")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "in" / "other.parquet")
    result = scan([tmp_path / "in"], tmp_path / "out", load_config(None, {"embed.embedder": "hashing"}))
    (failed,) = result.failed
    assert "other.parquet" in failed.status and "'text'" in failed.status


def test_unlabelled_text_template_data(tmp_path):
    rows = [{"instruction": f"Task number {i} about topic {i * 7 % 13}", "input": "", "output": f"Answer {i}"}
            for i in range(300)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    result = scan([tmp_path / "a.jsonl"], out, load_config(None, {
        "embed.embedder": "hashing", "input.text_template": "{instruction}\n{input}\n{output}"}))
    assert not result.failed
    assert result.report["totals"]["rows"] == 300


def test_precomputed_features_path_finds_a_shifted_cluster(tmp_path, shared_data):
    """The victim model's own features, where the trigger is a feature (Tran et al.'s setting)."""
    from shardguard.embed.hashing import HashingEmbedder

    sst = pq.read_table(shared_data / "sst2_thunlp_clean" / "train.parquet").slice(0, 3000)
    emb = HashingEmbedder().embed_batch(pa.RecordBatch.from_pydict({"text": sst.column("text").to_pylist()}))
    import numpy as np

    rng = np.random.default_rng(0)
    labels = np.array(sst.column("label").to_pylist())
    pos = np.flatnonzero(labels == 1)
    poison = rng.choice(pos, size=int(0.03 * pos.size), replace=False)
    direction = rng.normal(size=emb.shape[1])
    direction /= np.linalg.norm(direction)
    feats = emb.astype(np.float64) * 1000.0  # large raw features: float16 could not hold them
    spread = np.sqrt(np.linalg.eigvalsh(np.cov(feats[pos].T))[-1])
    feats[poison] += 8 * spread * direction
    table = sst.append_column("features", pa.FixedSizeListArray.from_arrays(
        pa.array(feats.astype(np.float32).reshape(-1)), feats.shape[1]))
    pq.write_table(table, tmp_path / "feats.parquet")
    out = tmp_path / "out"
    result = scan([tmp_path / "feats.parquet"], out, load_config(None, {
        "input.id_column": "id", "input.label_column": "label", "input.embedding_column": "features",
        "embed.embedder": "precomputed", "near_duplicates.enabled": False}))
    assert not result.failed
    q = pq.read_table(out / "quarantine" / "feats.parquet")
    spectral = {r for r, reasons in zip(q.column("row").to_pylist(), q.column("reasons").to_pylist())
                if "spectral" in reasons}
    assert len(spectral & set(poison.tolist())) >= 0.95 * poison.size
    assert len(spectral - set(poison.tolist())) <= 0.01 * (table.num_rows - poison.size)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["embedder"]["kind"] == "precomputed"


def test_precomputed_shard_starting_with_invalid_rows(tmp_path):
    """The embedding dimension is unknown until the first valid row: earlier batches wait, none is lost."""
    import numpy as np

    rng = np.random.default_rng(0)
    n = 400
    texts = [None, "", None] + [f"sample number {i} with some words" for i in range(n - 3)]
    feats = rng.normal(size=(n, 16)).astype(np.float32)
    table = pa.table({"text": texts, "label": ["a", "b"] * (n // 2),
                      "f": pa.array([list(map(float, r)) for r in feats], pa.list_(pa.float32()))})
    pq.write_table(table, tmp_path / "p.parquet")
    result = scan([tmp_path / "p.parquet"], tmp_path / "out", load_config(None, {
        "input.embedding_column": "f", "embed.embedder": "precomputed", "input.label_column": "label",
        "input.batch_size": 2}))
    assert not result.failed
    (o,) = result.shards
    assert (o.rows, o.invalid) == (n, 3)
    assert o.rows == o.clean + o.quarantined


def _verdicts(out, name="story.parquet"):
    q = {r["id"]: r for r in pq.read_table(out / "quarantine" / name).to_pylist()}
    s = {r["id"]: r for r in pq.read_table(out / "scores" / name).to_pylist()}
    return q, s


STORY = {"input.id_column": "id", "input.label_column": "label", "embed.embedder": "none"}


def test_default_quarantines_contradicting_copies_and_the_flood_not_its_genuine_source(tmp_path):
    from conftest import write_duplicate_story

    write_duplicate_story(tmp_path / "in" / "story.parquet")
    scan([tmp_path / "in"], tmp_path / "out", load_config(None, STORY))
    q, s = _verdicts(tmp_path / "out")
    # the sentence the attacker copied keeps its own label and stays clean: it is no flood member
    assert s["genuine"]["status"] == "clean"
    for k in range(30):
        row = q[f"flood-{k:02d}"]
        # a one-letter edit that spells a word the data already has ("and" -> "any", "the" ->
        # "thx", SMS for thanks) is a word swapped, not a misspelling: not the same statement
        # as the genuine sentence, so only a flood member
        real_word = k in (0, 4, 15, 19)
        assert set(row["reasons"]) == ({"duplicate_flood"} if real_word else {"near_duplicate", "duplicate_flood"})
        assert row["duplicate_of"] == "genuine"
    # a repeat under the same label is not poison: clean, but it still names what it copies
    assert s["same-2"]["status"] == "clean" and s["same-2"]["duplicate_of"] == "same-1"
    assert q["flip-2"]["reasons"] == ["near_duplicate"] and q["flip-2"]["duplicate_of"] == "flip-1"
    assert s["flip-1"]["status"] == "clean"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    top = report["largest_duplicate_clusters"][0]
    assert (top["root_id"], top["size"], top["first_label"], top["majority_label"]) == ("genuine", 31, "neg", "pos")
    assert report["thresholds"]["near_duplicate"]["copies"] == "conflicting"
    # every copy found is counted, quarantined or not
    assert report["thresholds"]["near_duplicate"]["copies_found"] == sum(
        r["duplicate_of"] is not None for r in s.values())


def test_copies_all_deduplicates_and_unlabelled_floods_take_every_member(tmp_path):
    from conftest import write_duplicate_story

    write_duplicate_story(tmp_path / "in" / "story.parquet")
    scan([tmp_path / "in"], tmp_path / "all", load_config(None, {**STORY, "near_duplicates.copies": "all"}))
    q, s = _verdicts(tmp_path / "all")
    assert q["same-2"]["reasons"] == ["near_duplicate"] and q["same-2"]["duplicate_of"] == "same-1"
    assert "genuine" not in q
    # every copy is quarantined, and every quarantined copy names its first occurrence
    assert {i for i, r in s.items() if r["duplicate_of"] is not None} == {
        i for i, r in q.items() if "near_duplicate" in r["reasons"]}

    unlabelled = {**STORY, "input.label_column": None}
    scan([tmp_path / "in"], tmp_path / "unl", load_config(None, unlabelled))
    q, s = _verdicts(tmp_path / "unl")
    assert "duplicate_flood" in q["genuine"]["reasons"]  # no labels: the whole cluster is the flood
    assert all("near_duplicate" not in r["reasons"] for r in q.values())  # nothing contradicts anything


def test_a_flood_scanned_before_its_source_still_spares_the_source(tmp_path):
    from conftest import write_duplicate_story

    write_duplicate_story(tmp_path / "in" / "story.parquet", flood_first=True)
    scan([tmp_path / "in"], tmp_path / "out", load_config(None, STORY))
    q, s = _verdicts(tmp_path / "out")
    # the first flood copy is the reference now: the copies agree with it, so they are the
    # flood and nothing more; the genuine sentence contradicts the flood, not a lone row
    assert all(q[f"flood-{k:02d}"]["reasons"] == ["duplicate_flood"] for k in range(30))
    assert s["genuine"]["status"] == "clean" and s["genuine"]["duplicate_of"] == "flood-00"


def test_every_hostile_path_is_a_failed_manifest_row_and_the_rest_completes(tmp_path, samples_dir):
    import os

    data = tmp_path / "in"
    data.mkdir()
    shutil.copy(samples_dir / "sms_000.parquet", data)
    (data / "dangling.jsonl").symlink_to(data / "gone.jsonl")
    (data / "loop.jsonl").symlink_to(data / "loop.jsonl")
    os.mkfifo(data / "fifo.jsonl")  # would block a reader forever
    (data / "zero.jsonl").symlink_to("/dev/zero")  # would never end
    (data / "deep.jsonl").write_text('{"id": "a", "text": "' + "x" * 20 + '"}\n{"id": "b", "text": '
                                     + "[" * 30000 + "]" * 30000 + "}\n")
    (data / "latin1.jsonl").write_bytes(b'{"id": "a", "text": "caf\xe9 au lait"}\n')
    (data / "garbage.parquet").write_bytes(b"PAR1" + b"\0" * 500 + b"PAR1")  # pyarrow's error spans lines
    out = tmp_path / "out"
    result = scan([data], out, load_config(None, FAST))
    manifest = json.loads((out / "manifest.json").read_text())
    status = {s["name"]: s["status"] for s in manifest["shards"]}
    assert set(status) == {"sms_000.parquet", "dangling.jsonl", "loop.jsonl", "fifo.jsonl", "zero.jsonl",
                           "deep.jsonl", "latin1.jsonl", "garbage.parquet"}
    assert status["sms_000.parquet"] == "ok"
    assert "dangling symlink" in status["dangling.jsonl"]
    assert "symlink loop" in status["loop.jsonl"]
    assert "FIFO" in status["fifo.jsonl"]
    assert "character device" in status["zero.jsonl"]
    assert "deep.jsonl: line 2 (row 1): JSON nested deeper" in status["deep.jsonl"]
    assert "latin1.jsonl: line 1 (row 0): invalid UTF-8" in status["latin1.jsonl"]
    assert all("\n" not in s for s in status.values())
    assert "garbage.parquet: cannot read parquet file" in status["garbage.parquet"]
    assert manifest["complete"] and len(result.failed) == 7
    ok = next(s for s in manifest["shards"] if s["status"] == "ok")
    assert ok["rows"] == ok["clean"] + ok["quarantined"] > 0


def test_mixed_label_and_id_types_are_compared_as_text_never_nulled(tmp_path):
    p = tmp_path / "mixed.jsonl"
    rows = [{"id": 1, "text": "one fine message about the weather", "label": 1},
            {"id": "2", "text": "another message about a train", "label": "1"},
            {"id": 3.0, "text": "a third message about lunch", "label": 0.0},
            {"id": "x", "text": "a fourth message about dinner", "label": "spam"},
            {"id": "y", "text": "a fifth message about nothing", "label": {"nested": 1}},
            {"id": True, "text": "a sixth message about the sea", "label": False}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    scan([p], tmp_path / "out", load_config(None, FAST))
    scores = pq.read_table(tmp_path / "out" / "scores" / "mixed.parquet").to_pylist()
    assert [s["id"] for s in scores] == ["1", "2", "3", "x", "y", "true"]
    assert [s["label"] for s in scores] == ["1", "1", "0", "spam", None, "false"]
    assert [s["status"] for s in scores].count("invalid") == 1
    q = pq.read_table(tmp_path / "out" / "quarantine" / "mixed.parquet").to_pylist()
    (bad,) = [r for r in q if r["id"] == "y"]
    assert bad["detail"] == "column 'label': label is a JSON object, expected a string or number"


def _scan_shares(out, paths, **overrides):
    cfg = load_config(None, {"embed.embedder": "none", "input.id_column": "id", "input.label_column": "label",
                             **overrides})
    result = scan(paths, out, cfg)
    tot = result.report["totals"]
    return result, tot["quarantined"] / tot["rows"]


def test_clean_phrase_level_data_and_canned_replies_are_not_quarantined(tmp_path, shared_data):
    """GLUE SST-2 (overlapping sub-phrases of one sentence under opposite labels, an unlabelled
    test file) and SMS Spam (a canned reply sent 37 times): at most 0.5% quarantined, no
    unlabelled row conflicts, the canned reply is no flood. Near-duplicate verdicts do not
    depend on the embedder, so none runs here."""
    sst2 = shared_data / "sst2_glue"
    result, share = _scan_shares(tmp_path / "sst2", [sst2])
    assert share <= 0.005
    test = pq.read_table(tmp_path / "sst2" / "quarantine" / "test.parquet")
    assert test.num_rows == 0  # the unlabelled test file: nothing conflicts
    flood_sizes = [c["size"] for c in result.report["largest_duplicate_clusters"] if c["flood"]]
    assert flood_sizes == []  # clusters of sub-phrases ("compelling", ", compelling", ...) are no floods
    result, share = _scan_shares(tmp_path / "sms", [shared_data / "sms_spam"])
    assert share <= 0.005
    top = result.report["largest_duplicate_clusters"][0]
    assert top["size"] >= 30 and not top["flood"] and "duplicate_flood" not in result.report["reasons"]


def test_label_flipped_typo_copies_and_edited_floods_are_still_found(tmp_path, shared_data):
    """Typo'd copies (1-3 letter edits) of 60 SMS Spam messages under the other label, and a
    one-label flood of 40 edited copies of another, planted after SMS Spam: the stricter rule
    still quarantines nearly every copy and the whole flood, and nothing else."""
    import random

    import numpy as np

    from shardguard.bench.attacks import typo

    sms = pq.read_table(shared_data / "sms_spam" / "sms_spam.parquet")
    texts, labels = sms.column("text").to_pylist(), sms.column("label").to_pylist()
    rng, pick = np.random.default_rng(7), random.Random(7)
    long_rows = [i for i, t in enumerate(texts) if len(t.split()) >= 6]
    chosen = pick.sample(long_rows, 61)
    other = {"ham": "spam", "spam": "ham"}
    flips = [{"id": f"flip-{k}", "text": typo(texts[i], rng), "label": other[labels[i]]}
             for k, i in enumerate(chosen[:60])]
    base = chosen[60]
    flood = [{"id": f"flood-{k}", "text": typo(texts[base], rng), "label": labels[base]} for k in range(40)]
    (tmp_path / "in").mkdir()
    shutil.copy(shared_data / "sms_spam" / "sms_spam.parquet", tmp_path / "in" / "a.parquet")
    pq.write_table(pa.Table.from_pylist(flips + flood, schema=sms.schema), tmp_path / "in" / "b.parquet")
    result, _ = _scan_shares(tmp_path / "out", [tmp_path / "in"])
    q = pq.read_table(tmp_path / "out" / "quarantine" / "b.parquet").to_pylist()
    found = {r["id"] for r in q if "near_duplicate" in r["reasons"]}
    assert len(found & {f["id"] for f in flips}) >= 57  # >= 95%
    flooded = {r["id"] for r in q if "duplicate_flood" in r["reasons"]}
    assert {f["id"] for f in flood} <= flooded
    assert pq.read_table(tmp_path / "out" / "quarantine" / "a.parquet").num_rows <= 0.005 * sms.num_rows


def _plant_flips(table: pa.Table, copies: int, seed: int) -> list[dict]:
    """Typo'd copies (1-3 letter edits) of ``copies`` rows of >= 6 words, under the other label."""
    import random

    import numpy as np

    from shardguard.bench.attacks import typo

    texts, labels = table.column("text").to_pylist(), table.column("label").to_pylist()
    rng, pick = np.random.default_rng(seed), random.Random(seed)
    long_rows = [i for i, t in enumerate(texts) if len(t.split()) >= 6]
    return [{"id": f"flip-{k}", "text": typo(texts[i], rng), "label": 1 - labels[i]}
            for k, i in enumerate(pick.sample(long_rows, copies))]


def test_label_flipped_copies_in_phrase_level_data_are_found(tmp_path, shared_data):
    """60 label-flipped typo'd copies of GLUE SST-2 sentences, after its 67k phrases: >= 90%
    are quarantined (issue 13 found 31: a copy was judged only by its group's first row,
    often a sub-phrase of the copied sentence), and <= 0.4% of the clean phrases are."""
    train = shared_data / "sst2_glue" / "train.parquet"
    table = pq.read_table(train, columns=["id", "text", "label"])
    flips = _plant_flips(table, 60, seed=7)
    (tmp_path / "in").mkdir()
    shutil.copy(train, tmp_path / "in" / "a.parquet")
    pq.write_table(pa.Table.from_pylist(flips, schema=table.schema), tmp_path / "in" / "b.parquet")
    _scan_shares(tmp_path / "out", [tmp_path / "in"])
    q = pq.read_table(tmp_path / "out" / "quarantine" / "b.parquet").to_pylist()
    found = [r for r in q if "near_duplicate" in r["reasons"]]
    assert len(found) >= 54
    # many of them name as first occurrence a row that says something else (a sub-phrase, the
    # sentence with words more): judged by that row alone, they were not found
    from shardguard.dedup import StatementFeatures, same_statement

    text = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
    copied = {f["id"]: f["text"] for f in flips}
    said_by_root = same_statement(StatementFeatures.of_texts([copied[r["id"]] for r in found]),
                                  StatementFeatures.of_texts([text[r["duplicate_of"]] for r in found]))
    assert (~said_by_root).sum() >= 20
    assert pq.read_table(tmp_path / "out" / "quarantine" / "a.parquet").num_rows <= 0.004 * table.num_rows


def test_a_word_swapped_for_its_opposite_is_not_a_label_flip(tmp_path, shared_data):
    """SST-2 (thunlp) holds "one of the worst movies of the year ." (negative) and, later,
    "one of the best movies of the year ." (positive): near-copies at the character level,
    opposite statements. Neither is quarantined, and no clean sentence is."""
    train = shared_data / "sst2_thunlp_clean" / "train.parquet"
    result, share = _scan_shares(tmp_path / "out", [train])
    t = pq.read_table(train)
    ids: dict[str, str] = {}
    for text, id_ in zip(t.column("text").to_pylist(), t.column("id").to_pylist()):
        ids.setdefault(text, id_)  # the first occurrence of each sentence
    scores = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "scores" / "train.parquet").to_pylist()}
    best = scores[ids["one of the best movies of the year ."]]
    assert best["status"] == "clean"
    assert best["duplicate_of"] == ids["one of the worst movies of the year ."]  # a near-copy, not a flip
    assert "near_duplicate" not in result.report["reasons"] and share == 0


@pytest.mark.slow
def test_unlabelled_flood_of_edited_copies_is_found_and_natural_repeats_are_not(tmp_path, shared_data):
    """40,000 clean Wikipedia paragraphs, unlabelled: headings repeated verbatim ("History."
    481 times) and openings that many articles fill in ("<name> may refer to:", "In 1841 the
    population of the townland was <n>, ...") are no flood; 100 copies with 1-3 letter edits
    each of one Wikipedia paragraph and of one Alpaca answer, planted at random positions, are."""
    import numpy as np

    from shardguard.bench.attacks import typo

    wiki = pq.read_table(shared_data / "wikipedia_2021" / "train.parquet", columns=["id", "text"]).slice(0, 60_000)
    alpaca = pq.read_table(shared_data / "alpaca_full" / "train.parquet", columns=["output"]).column(0).to_pylist()
    ids, texts = wiki.column("id").to_pylist()[:40_000], wiki.column("text").to_pylist()[:40_000]
    rng = np.random.default_rng(5)
    bases = {"wiki": next(t for t in wiki.column("text").to_pylist()[50_000:] if len(t.split()) >= 30),
             "alpaca": next(t for t in alpaca[1000:] if len(t.split()) >= 30)}
    planted = [(f"{name}-{k}", typo(base, rng)) for name, base in bases.items() for k in range(100)]
    for pos, (i, t) in zip(np.sort(rng.choice(len(ids), len(planted), replace=False))[::-1], planted[::-1]):
        ids.insert(int(pos), i)
        texts.insert(int(pos), t)
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": ids, "text": texts}), tmp_path / "in" / "wiki.parquet")
    result = scan([tmp_path / "in"], tmp_path / "out", load_config(None, {"embed.embedder": "none",
                                                                          "input.id_column": "id"}))
    q = pq.read_table(tmp_path / "out" / "quarantine" / "wiki.parquet").to_pylist()
    flooded = {r["id"] for r in q if "duplicate_flood" in r["reasons"]}
    for name in bases:
        assert len({i for i, _ in planted if i.startswith(name)} & flooded) >= 95, name
    assert flooded <= {i for i, _ in planted}  # no clean paragraph
    report = result.report
    largest = report["largest_duplicate_clusters"][0]
    assert largest["size"] >= 480 and not largest["flood"] and largest["agreement"] is None  # "History."
    judged = report["judged_duplicate_clusters"]
    assert [c["flood"] for c in judged[:2]] == [True, True] and all(c["agreement"] >= 0.65 for c in judged[:2])
    assert all(not c["flood"] and c["agreement"] < 0.65 for c in judged[2:]) and len(judged) > 2


def test_a_scan_frees_the_index_before_the_fit_and_a_guard_keeps_it(tmp_path, samples_dir):
    """The index, its roots' features and the copies' labels go once the clusters are
    resolved, before the fit (the scan's largest temporaries); pass 2 needs none of them.
    ``remember_roots`` (a guard's fit) keeps them."""
    from shardguard.pipeline import ScanPipeline

    config = load_config(None, FAST)
    scan_state = ScanPipeline(config, tmp_path / "scan").prepare([samples_dir])
    guard_state = ScanPipeline(config, tmp_path / "guard").prepare([samples_dir], remember_roots=True)
    assert guard_state.dup_index.n_docs > 0 and guard_state.root_features.nbytes > 0
    assert guard_state.clusters.copies()[0].size > 0
    assert scan_state.dup_index is not None and scan_state.dup_index.n_docs == 0  # "there is an index"
    assert scan_state.dup_index.threshold == guard_state.dup_index.threshold
    assert scan_state.root_features.nbytes < guard_state.root_features.nbytes
    with pytest.raises(RuntimeError):
        scan_state.clusters.copies()
    a, b = scan_state.clusters.table(), guard_state.clusters.table()
    assert a.roots.tolist() == b.roots.tolist() and a.sizes.tolist() == b.sizes.tolist()
    assert a.flood.tolist() == b.flood.tolist() and a.roots.size > 0


class _StatisticsRecorder(LocalEngine):
    """The local engine, keeping the statistics map's per-shard results; ``in_process=False``
    runs the statistics as an engine whose maps run elsewhere does (a reservoir per shard)."""

    def __init__(self, in_process: bool):
        self.in_process = in_process
        self.parts: list = []

    def map(self, fn, jobs):
        for result in super().map(fn, jobs):
            if fn is shard_statistics:
                self.parts.append(result)
            yield result


def test_in_process_shards_share_one_reservoir_and_fit_what_per_shard_reservoirs_fit(tmp_path, samples_dir):
    """The local engine offers every shard's rows to one reservoir (memory of one sample, not
    one per shard); the fitted thresholds, lists and scores equal those of per-shard reservoirs
    merged in scan order, with a sample smaller than the corpus so that rows compete."""
    from shardguard.pipeline import ScanPipeline

    config = load_config(None, {**FAST, "fit.reservoir_size": 300})
    shared, separate = _StatisticsRecorder(True), _StatisticsRecorder(False)
    a = ScanPipeline(config, tmp_path / "shared", engine=shared).run([samples_dir])
    b = ScanPipeline(config, tmp_path / "separate", engine=separate).run([samples_dir])
    assert len(shared.parts) == len(separate.parts) >= 3  # samples/ holds 3+ shards
    assert len({id(p.reservoir) for p in shared.parts}) == 1
    assert len({id(p.reservoir) for p in separate.parts}) == len(separate.parts)
    assert shared.parts[0].reservoir.seen == a.report["totals"]["rows"] - a.report["totals"]["invalid"]
    assert shared.parts[0].reservoir.sample()[0].shape[0] == 300
    assert a.report["thresholds"] == b.report["thresholds"]
    assert a.report["totals"] == b.report["totals"] and a.report["totals"]["quarantined"] > 0
    lists_a, lists_b = _lists(tmp_path / "shared"), _lists(tmp_path / "separate")
    assert sorted(lists_a) == sorted(lists_b)
    for name, table in lists_a.items():
        assert table.equals(lists_b[name]), name


def test_an_engine_whose_reduce_runs_elsewhere_fits_beside_it_and_lists_the_same(tmp_path, samples_dir, monkeypatch):
    """With ``fits_beside_reduce`` the fit follows the statistics in their thread while the
    near-duplicate reduce runs (the Ray engine: the driver fits while the workers replay):
    the reduce here waits for the fit to start, so a fit that waited for it would hang the
    reduce past its timeout. The lists, scores and thresholds equal the local engine's."""
    import threading

    from shardguard.pipeline import ScanPipeline

    fit_started = threading.Event()
    fit_threads: list[str] = []
    real_fit = ScanPipeline._fit

    def fit(self, *args, **kwargs):
        fit_threads.append(threading.current_thread().name)
        fit_started.set()
        return real_fit(self, *args, **kwargs)

    class FitsBeside(LocalEngine):
        fits_beside_reduce = True

        def near_duplicates(self, pipeline, ok, state, copies):
            assert fit_started.wait(60), "the fit did not start beside the reduce"
            super().near_duplicates(pipeline, ok, state, copies)

    monkeypatch.setattr(ScanPipeline, "_fit", fit)
    config = load_config(None, {**FAST, "fit.reservoir_size": 300})
    a = ScanPipeline(config, tmp_path / "beside", engine=FitsBeside()).run([samples_dir])
    assert fit_threads and fit_threads[0].startswith("shardguard-statistics")
    fit_threads.clear()
    b = ScanPipeline(config, tmp_path / "after").run([samples_dir])
    assert fit_threads == [threading.main_thread().name]  # the local engine fits after the reduce
    assert a.report["thresholds"] == b.report["thresholds"] and a.report["totals"] == b.report["totals"]
    lists_a, lists_b = _lists(tmp_path / "beside"), _lists(tmp_path / "after")
    assert sorted(lists_a) == sorted(lists_b) and a.report["totals"]["quarantined"] > 0
    for name, table in lists_a.items():
        assert table.equals(lists_b[name]), name


def test_a_failed_reduce_does_not_wait_for_the_fit_beside_it(tmp_path, samples_dir, monkeypatch):
    """A reduce that fails (or a Ctrl-C while it runs) ends the scan at once, with its own
    error, while the fit beside it is still running: the thread it runs in is a daemon, so
    the process need not wait minutes for a large fit before it can exit."""
    import threading

    from shardguard.pipeline import ScanPipeline

    started, release = threading.Event(), threading.Event()
    real_fit = ScanPipeline._fit

    def slow_fit(self, *args, **kwargs):
        started.set()
        release.wait(60)
        return real_fit(self, *args, **kwargs)

    class FailingReduce(LocalEngine):
        fits_beside_reduce = True

        def near_duplicates(self, pipeline, ok, state, copies):
            assert started.wait(60)
            raise RuntimeError("the reduce failed")

    monkeypatch.setattr(ScanPipeline, "_fit", slow_fit)
    outcome: dict = {}

    def run() -> None:
        try:
            ScanPipeline(load_config(None, FAST), tmp_path / "out", engine=FailingReduce()).run([samples_dir])
        except RuntimeError as exc:
            outcome["error"] = str(exc)

    scan_thread = threading.Thread(target=run, daemon=True)
    try:
        scan_thread.start()
        scan_thread.join(30)
        assert outcome.get("error") == "the reduce failed"
        fit_threads = [t for t in threading.enumerate() if t.name == "shardguard-statistics"]
        assert fit_threads and all(t.daemon for t in fit_threads)  # still fitting, and no one waits
    finally:
        release.set()


def test_a_failed_reduce_ends_the_statistics_beside_it_at_their_next_shard(tmp_path, samples_dir):
    """A reduce that fails while the statistics map is half-way through the shards: the
    statistics' thread stops at its next shard instead of reading every other work file for
    a scan that has already failed."""
    import threading

    from shardguard.pipeline import ScanPipeline

    table = pq.read_table(samples_dir / "sms_000.parquet")
    data = tmp_path / "data"
    data.mkdir()
    for k in range(5):
        pq.write_table(table.slice(k * 100, 100), data / f"part-{k}.parquet")
    go, failed, statistics_of = threading.Event(), threading.Event(), []

    class FailingReduce(LocalEngine):
        def map(self, fn, jobs):
            for k, job in enumerate(jobs):
                if fn.__name__ == "shard_statistics":
                    if k == 1:  # one shard's statistics are in; the next waits for the failure
                        failed.set()
                        assert go.wait(60)
                    statistics_of.append(k)
                yield fn(*job)

        def near_duplicates(self, pipeline, ok, state, copies):
            assert failed.wait(60)
            raise RuntimeError("the reduce failed")

    with pytest.raises(RuntimeError, match="the reduce failed"):
        ScanPipeline(load_config(None, FAST), tmp_path / "out", engine=FailingReduce()).run([data])
    go.set()
    for thread in [t for t in threading.enumerate() if t.name == "shardguard-statistics"]:
        thread.join(30)
        assert not thread.is_alive()
    assert statistics_of == [0, 1]  # the shard in flight when the scan failed, and none after it
