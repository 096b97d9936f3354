"""The library API: a fitted Guard inside data-loading code."""

import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from shardguard.config import load_config
from shardguard.guard import Guard, ProfileError
from shardguard.io.readers import ShardReader, discover_shards
from shardguard.pipeline import scan

OPTS = {"embed.embedder": "hashing", "input.id_column": "id", "input.label_column": "label"}


@pytest.fixture(scope="module")
def fitted(samples_dir, tmp_path_factory):
    cfg = load_config(None, OPTS)
    out = tmp_path_factory.mktemp("scan")
    scan([samples_dir], out, load_config(None, OPTS))
    guard = Guard.fit(samples_dir, cfg)
    profile = guard.save(tmp_path_factory.mktemp("profile") / "p")
    return guard, out, profile


def _batches(samples_dir, size=200):
    for shard in discover_shards([samples_dir]):
        for b in ShardReader(shard, size, ["id", "text", "label"]):
            yield shard, b


def test_filter_drops_exactly_what_scan_quarantines(fitted, samples_dir):
    _, out, profile = fitted
    guard = Guard.load(profile)  # a fresh copy: filtering remembers what it sees
    for epoch in range(2):  # the second epoch grows no cluster: the same rows again
        kept: dict[str, set] = {}
        for shard, batch in _batches(samples_dir):
            clean = guard.filter(batch)
            assert clean.schema == batch.schema
            kept.setdefault(shard.output_name, set()).update(clean.column("id").to_pylist())
        for name, ids in kept.items():
            scores = pq.read_table(out / "scores" / name)
            expected = set(scores.filter(pc.equal(scores.column("status"), "clean")).column("id").to_pylist())
            assert ids == expected, (epoch, name)


def test_score_reports_reasons_and_scores(fitted, samples_dir, planted):
    _, _, profile = fitted
    guard = Guard.load(profile)
    tables = [guard.score(b) for _, b in _batches(samples_dir)]
    v = pa.concat_tables(tables)
    assert {"id", "row", "status", "reasons", "duplicate_of", "outlier_score", "spectral_score",
            "near_duplicate_score"} <= set(v.column_names)
    by_id = dict(zip(v.column("id").to_pylist(), v.column("reasons").to_pylist()))
    for rid in (r for s in planted["shards"].values() for r in s["flood-a"]):
        assert "duplicate_flood" in by_id[rid]
    statuses = set(v.column("status").to_pylist())
    assert statuses == {"clean", "quarantined", "invalid"}


def test_save_load_gives_identical_scores(fitted, samples_dir):
    _, _, profile = fitted
    a, b = Guard.load(profile), Guard.load(profile)
    for _, batch in _batches(samples_dir):
        assert a.score(batch).equals(b.score(batch))


def test_a_stream_also_drops_repeats_of_what_it_has_seen(fitted, planted, samples_dir):
    _, _, profile = fitted
    guard = Guard.load(profile)
    new = "Completely fresh sentence about the weather in Lisbon, written for this test only"
    batch = pa.RecordBatch.from_pydict({
        "id": ["n1", "n2", "n3"],
        "text": [new, new.replace("weather", "waether"), new],
        "label": ["ham", "spam", "ham"],
    })
    v = guard.score(batch)
    # default near_duplicates.copies = conflicting: the copy relabelled spam is quarantined,
    # the repeat under the same label is not; both name what they copy
    assert v.column("status").to_pylist() == ["clean", "quarantined", "clean"]
    assert v.column("reasons").to_pylist()[1] == ["near_duplicate"]
    assert v.column("duplicate_of").to_pylist()[1:] == ["n1", "n1"]
    # and a near-copy of a fitted row is dropped, naming the fitted row
    shard = next(s for s in discover_shards([samples_dir]) if s.name == "sms_000.parquet")
    first = next(iter(ShardReader(shard, 10, ["id", "text", "label"])))
    text, rid = first.column("text")[0].as_py(), first.column("id")[0].as_py()
    v = guard.score(pa.RecordBatch.from_pydict({"id": ["x"], "text": [text + "!"], "label": ["ham"]}))
    assert v.column("duplicate_of").to_pylist() == [rid]


def test_iter_clean_and_torch_wrapper_yield_only_clean_rows(fitted, samples_dir):
    torch = pytest.importorskip("torch")
    _, out, profile = fitted
    shard = next(s for s in discover_shards([samples_dir]) if s.name == "sms_000.parquet")
    table = pa.Table.from_batches(list(ShardReader(shard, 100, ["id", "text", "label"])))
    scores = pq.read_table(out / "scores" / "sms_000.parquet")
    expected = scores.filter(pc.equal(scores.column("status"), "clean")).column("id").to_pylist()

    got = [i for b in Guard.load(profile).iter_clean(table.to_batches(max_chunksize=64))
           for i in b.column("id").to_pylist()]
    assert got == expected

    class Source(torch.utils.data.IterableDataset):
        def __iter__(self):
            for row in table.to_pylist():
                yield {**row, "tensor": torch.tensor([len(row["text"] or "")])}

    ds = Guard.load(profile).wrap(Source(), batch_size=50)
    assert isinstance(ds, torch.utils.data.IterableDataset)
    loader = torch.utils.data.DataLoader(ds, batch_size=None)
    samples = list(loader)
    assert [s["id"] for s in samples] == expected
    assert all(isinstance(s["tensor"], torch.Tensor) for s in samples)


def test_hugging_face_filter_keeps_only_clean_rows(fitted, samples_dir):
    datasets = pytest.importorskip("datasets")
    _, out, profile = fitted
    path = samples_dir / "sms_000.parquet"
    ds = datasets.Dataset.from_parquet(str(path))
    clean = ds.filter(Guard.load(profile).hf_filter(), batched=True, batch_size=128)
    scores = pq.read_table(out / "scores" / "sms_000.parquet")
    expected = scores.filter(pc.equal(scores.column("status"), "clean")).column("id").to_pylist()
    assert clean["id"] == expected


def _rewrite_profile(p, meta):
    """Write ``meta`` as an attacker who also recomputes the digests would (the documented rule)."""
    import hashlib

    meta["arrays_sha256"] = hashlib.sha256((p / "arrays.npz").read_bytes()).hexdigest()
    body = {k: v for k, v in meta.items() if k != "profile_sha256"}
    meta["profile_sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    (p / "profile.json").write_text(json.dumps(meta))


def test_edited_profile_json_is_refused(fitted, tmp_path):
    guard, _, _ = fitted
    p = guard.save(tmp_path / "j")
    meta = json.loads((p / "profile.json").read_text())
    meta["labels"] = list(reversed(meta["labels"]))  # swap the label vocabulary
    (p / "profile.json").write_text(json.dumps(meta))
    with pytest.raises(ProfileError, match=r"profile\.json: sha256 does not match its contents"):
        Guard.load(p)
    k = guard.save(tmp_path / "k")
    meta = json.loads((k / "profile.json").read_text())
    meta["detectors"]["outlier"]["params"]["threshold_z"] = 1e9  # switch the detector off by stealth
    (k / "profile.json").write_text(json.dumps(meta))
    with pytest.raises(ProfileError, match="altered"):
        Guard.load(k)


@pytest.mark.parametrize("key, bad", [
    ("roots.seqs", np.zeros(3, np.float32)),          # wrong dtype
    ("roots.rows", np.zeros((2, 2), np.int64)),       # wrong shape
    ("clusters.counts", np.zeros(1, np.int64)),       # inconsistent length
    ("roots.labels", np.full(1, 10**6, np.int32)),    # outside the vocabulary
])
def test_profile_arrays_of_the_wrong_dtype_or_shape_are_refused(fitted, tmp_path, key, bad):
    guard, _, _ = fitted
    p = guard.save(tmp_path / "a")
    with np.load(p / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    if key == "roots.labels":
        bad = np.concatenate([arrays[key][:-1], bad])
    arrays[key] = bad
    np.savez(p / "arrays.npz", **arrays)
    _rewrite_profile(p, json.loads((p / "profile.json").read_text()))
    with pytest.raises(ProfileError, match=key.replace(".", r"\.")):
        Guard.load(p)


def test_tampered_profile_is_refused(fitted, tmp_path):
    guard, _, profile = fitted
    p = guard.save(tmp_path / "t")
    data = bytearray((p / "arrays.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (p / "arrays.npz").write_bytes(bytes(data))
    with pytest.raises(ProfileError, match="altered"):
        Guard.load(p)


def test_pickled_profile_is_refused_even_with_a_matching_digest(fitted, tmp_path):
    guard, _, profile = fitted
    p = guard.save(tmp_path / "pk")
    with np.load(p / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["roots.seqs"] = np.array([object()], dtype=object)  # an array only pickle can hold
    np.savez(p / "arrays.npz", **arrays)
    meta = json.loads((p / "profile.json").read_text())
    _rewrite_profile(p, meta)
    with pytest.raises(ProfileError, match="plain arrays only"):
        Guard.load(p)
    # a bare pickle in place of the arrays is refused the same way
    (p / "arrays.npz").write_bytes(pickle.dumps({"x": 1}))
    _rewrite_profile(p, meta)
    with pytest.raises(ProfileError, match="refused"):
        Guard.load(p)


def test_profile_from_another_version_or_model_fails_clearly(fitted, tmp_path):
    guard, _, profile = fitted
    p = guard.save(tmp_path / "v")
    meta = json.loads((p / "profile.json").read_text())
    meta["shardguard_version"] = "9.9.0"
    _rewrite_profile(p, meta)
    with pytest.raises(ProfileError, match="shardguard 9.9.0"):
        Guard.load(p)
    p = guard.save(tmp_path / "m")
    meta = json.loads((p / "profile.json").read_text())
    meta["embedder"]["model"] = "some-other-model"
    _rewrite_profile(p, meta)
    with pytest.raises(ProfileError, match="some-other-model"):
        Guard.load(p)
    p = guard.save(tmp_path / "f")
    meta = json.loads((p / "profile.json").read_text())
    meta["format_version"] = 4  # before the clusters' copies were saved
    _rewrite_profile(p, meta)
    with pytest.raises(ProfileError, match=r"profile format 4 is not supported .*fit the guard again"):
        Guard.load(p)


@pytest.mark.parametrize("copies", ["conflicting", "all"])
def test_guard_judges_copies_and_floods_as_scan_does(tmp_path, copies):
    from conftest import write_duplicate_story

    write_duplicate_story(tmp_path / "in" / "story.parquet")
    cfg = load_config(None, {"input.id_column": "id", "input.label_column": "label", "embed.embedder": "none",
                             "near_duplicates.copies": copies})
    scan([tmp_path / "in"], tmp_path / "out", cfg)
    expected = pq.read_table(tmp_path / "out" / "scores" / "story.parquet")
    guard = Guard.load(Guard.fit(tmp_path / "in", cfg).save(tmp_path / "profile"))
    got = guard.score(pq.read_table(tmp_path / "in" / "story.parquet"))
    for col in ("id", "status", "duplicate_of"):
        assert got.column(col).to_pylist() == expected.column(col).to_pylist(), col
    status = dict(zip(got.column("id").to_pylist(), got.column("status").to_pylist()))
    assert status["genuine"] == "clean" and status["flood-00"] == "quarantined"
    assert status["same-2"] == ("quarantined" if copies == "all" else "clean")


def test_short_form_shardguard_guard(samples_dir):
    """`shardguard.Guard.fit(...)`, as users type it, is the library's Guard."""
    import shardguard

    assert shardguard.Guard is Guard
    assert "Guard" in shardguard.__all__
    guard = shardguard.Guard.fit(samples_dir / "sms_000.parquet", shardguard.load_config(None, OPTS))
    assert guard.score(pq.read_table(samples_dir / "sms_000.parquet")).num_rows > 0


def test_guard_finds_label_flipped_copies_of_phrases_as_scan_does(tmp_path, shared_data):
    """Fitted on 20k GLUE SST-2 phrases, a guard scores label-flipped typo'd copies of its
    sentences as scan does -- including copies that near-copy no first occurrence, only a
    member of a group (they join it) -- before and after a save and load."""
    from test_pipeline import _plant_flips

    table = pq.read_table(shared_data / "sst2_glue" / "train.parquet", columns=["id", "text", "label"]).slice(0, 20000)
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "a.parquet")
    flips = pa.Table.from_pylist(_plant_flips(table, 60, seed=8), schema=table.schema)
    cfg = load_config(None, {"input.id_column": "id", "input.label_column": "label", "embed.embedder": "none"})
    guard = Guard.fit(tmp_path / "in", cfg)
    loaded = Guard.load(guard.save(tmp_path / "profile"))
    pq.write_table(flips, tmp_path / "in" / "b.parquet")
    scan([tmp_path / "in"], tmp_path / "out", cfg)
    expected = pq.read_table(tmp_path / "out" / "scores" / "b.parquet")
    for g in (guard, loaded):
        got = g.score(flips)
        for col in ("id", "status", "duplicate_of"):
            assert got.column(col).to_pylist() == expected.column(col).to_pylist(), col
    assert expected.column("status").to_pylist().count("quarantined") >= 54


@pytest.mark.parametrize("id_column", ["id", None])
def test_a_flood_that_first_appears_in_the_stream_is_dropped_once_it_passes_flood_size(tmp_path, shared_data,
                                                                                       id_column):
    """Fitted on 2,000 SMS Spam rows, a guard filters the next 1,000 in batches of 50 with 40
    typo'd copies of one new text, all labelled ham (no contradiction), mixed in two a batch.
    Its cluster grows with the stream: the flood's rows are kept until the batch in which the
    cluster passes flood_size (20) rows, and dropped from that batch on; every other row is
    kept or dropped exactly as without the flood; a save and load keeps the grown cluster.
    With ids a copy counts once per id, without once per text and label: the same here."""
    from shardguard.bench.attacks import typo

    sms = pq.read_table(shared_data / "sms_spam" / "sms_spam.parquet", columns=["id", "text", "label"])
    (tmp_path / "in").mkdir()
    pq.write_table(sms.slice(0, 2000), tmp_path / "in" / "fit.parquet")
    cfg = load_config(None, {"input.id_column": id_column, "input.label_column": "label", "embed.embedder": "none"})
    profile = Guard.fit(tmp_path / "in", cfg).save(tmp_path / "profile")
    base = "Reminder: your parcel is waiting at the depot, reply YES to book a delivery slot for tomorrow"
    rng = np.random.default_rng(3)
    flood = [{"id": f"flood-{k}", "text": base if k == 0 else typo(base, rng), "label": "ham"} for k in range(40)]
    clean = sms.slice(2000, 1000).to_pylist()
    batches, flood_batch = [], {}
    for b in range(20):
        rows = clean[b * 50: (b + 1) * 50]
        for k in (2 * b, 2 * b + 1):
            rows.insert(10 + 20 * (k % 2), flood[k])
            flood_batch[flood[k]["id"]] = b
        batches.append(pa.Table.from_pylist(rows, schema=sms.schema))
    guard = Guard.load(profile)
    kept = {i for t in batches for i in guard.filter(t).column("id").to_pylist()}
    plain = Guard.load(profile)
    no_flood = [t.filter(pc.invert(pc.starts_with(t.column("id"), "flood-"))) for t in batches]
    kept_plain = {i for t in no_flood for i in plain.filter(t).column("id").to_pylist()}
    crossing = flood_batch["flood-20"]  # the 21st row of the cluster: 21 > flood_size
    dropped_flood = {f["id"] for f in flood} - kept
    assert dropped_flood == {i for i, b in flood_batch.items() if b >= crossing}
    assert kept - {f["id"] for f in flood} == kept_plain
    # the grown cluster survives a save and load: one more copy is dropped at once
    again = Guard.load(guard.save(tmp_path / "grown"))
    v = again.score(pa.Table.from_pylist([{"id": "late", "text": typo(base, rng), "label": "ham"}], schema=sms.schema))
    assert v.column("reasons").to_pylist() == [["duplicate_flood"]]
    assert Guard.load(profile).score(pa.Table.from_pylist([{"id": "late", "text": typo(base, rng), "label": "ham"}],
                                                          schema=sms.schema)).column("status").to_pylist() == ["clean"]
