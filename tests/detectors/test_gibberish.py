"""GibberishDetector on real data: the denial-of-service documents of Souly et al. (2025)
planted in a Wikipedia slice are flagged through the real scan path, whatever their tag;
clean rows of the project's corpora are not; the window statistic counts what it says;
persistence and the estimator contract.

The scans use the hashing embedder: the detector reads the texts, not the vectors."""

from __future__ import annotations

import glob
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from shardguard.bench import attacks, suite
from shardguard.config import ConfigError, load_config
from shardguard.detectors import REGISTRY, GibberishDetector
from shardguard.detectors.gibberish import min_window_repeat_share, tokenize
from shardguard.pipeline import scan
from conftest import state_round_trip

N_WIKI = 10_000


@pytest.fixture(scope="module")
def wiki(shared_data):
    t = pq.read_table(shared_data / "wikipedia_2021" / "train.parquet", columns=["id", "text"]).slice(0, N_WIKI)
    return t.column("id").to_pylist(), t.column("text").to_pylist()


@pytest.fixture(scope="module")
def vocabulary():
    return attacks.gibberish_vocabulary()


def _fit(texts: list[str], **params) -> GibberishDetector:
    X = np.zeros((len(texts), 1), np.float32)  # the detector reads the texts only
    return GibberishDetector(**params).fit(X, texts=np.array(texts, dtype=object))


def _flags(det: GibberishDetector, texts: list[str]) -> np.ndarray:
    X = np.zeros((len(texts), 1), np.float32)
    return det.score_samples(X, texts=np.array(texts, dtype=object)) > det.threshold_


def _scan_flags(tmp_path, ids, texts) -> tuple[set[str], dict]:
    shard = tmp_path / "wiki.parquet"
    pq.write_table(pa.table({"id": ids, "text": texts}), shard)
    out = tmp_path / "out"
    scan([shard], out, load_config(None, {"input.id_column": "id", "embed.embedder": "hashing"}))
    q = pq.read_table(out / "quarantine" / "wiki.parquet").to_pylist()
    report = json.loads((out / "report.json").read_text())
    return {r["id"] for r in q if "gibberish" in r["reasons"]}, report


def test_registered_reads_texts_not_meaning():
    assert REGISTRY["gibberish"] is GibberishDetector
    assert GibberishDetector.needs_text is True
    assert GibberishDetector.needs_semantic_embeddings is False


def test_window_statistic_equals_a_direct_count(wiki):
    """The vectorised minimum over stretches equals counting every stretch of every row one by one."""
    texts = [t for t in wiki[1][:200]] + [None, "", "Ab, ab AB 12 34"]
    for w in (4, 40):
        got = min_window_repeat_share(texts, w)
        for text, r in zip(texts, got):
            toks = tokenize(text or "")
            if len(toks) < w:
                assert np.isnan(r)
                continue
            direct = min(w - len(set(toks[s:s + w])) for s in range(len(toks) - w + 1)) / w
            assert r == direct


def test_tokens_fold_case_digits_and_split_punctuation_and_no_space_scripts():
    assert tokenize("The the, 1990 2021 維基百科") == ["the", "the", ",", "0000", "0000", "維", "基", "百", "科"]


def test_scan_flags_the_denial_of_service_documents_in_wikipedia(wiki, tmp_path):
    ids, texts = wiki[0][:5000], wiki[1][:5000]
    sc = attacks.denial_of_service(ids, texts, n_poison=50, seed=11)
    flagged, report = _scan_flags(tmp_path, ids, sc.texts)
    poison = {ids[i] for i in np.flatnonzero(sc.is_poison)}
    assert flagged == poison
    assert report["reasons"]["gibberish"] == 50
    info = report["thresholds"]["gibberish"]
    assert info["rows_tested_calibration"] > info["rows_calibration"] >= 30


def test_the_tag_plays_no_part(wiki, vocabulary):
    """Another tag, or none, and the shortest tail the recipe draws: the same documents found."""
    ids, texts = wiki
    det = _fit(texts)
    for tag in ("", "[[deploy-now]]", "ʘ‿ʘ"):
        sc = attacks.denial_of_service(ids, texts, n_poison=40, seed=5, tag=tag, vocabulary=vocabulary,
                                       tail_tokens=(400, 400))
        assert np.array_equal(_flags(det, sc.texts), sc.is_poison), tag


def test_a_tail_half_as_long_as_the_recipe_is_found(wiki, vocabulary):
    """200 random tokens (the recipe draws 400-900): still a stretch of 128 tokens of gibberish."""
    ids, texts = wiki
    sc = attacks.denial_of_service(ids, texts, n_poison=20, seed=2, vocabulary=vocabulary, tail_tokens=(200, 200))
    assert np.array_equal(_flags(_fit(texts), sc.texts), sc.is_poison)


@pytest.mark.parametrize("name", ["wikipedia", "alpaca", "tweeteval", "goemotions"])
def test_clean_corpora_are_not_flagged(shared_data, name):
    """Every row of the clean corpora with a stretch of 128 tokens: lists of names, tables,
    resumes and poems repeat their separators and function words (Wikipedia: a 60k slice)."""
    if name == "wikipedia":
        texts = pq.read_table(shared_data / "wikipedia_2021" / "train.parquet", columns=["text"]).slice(0, 60_000)
        texts = texts.column("text").to_pylist()
    elif name == "alpaca":
        _, columns = suite.load_alpaca(shared_data)
        texts = attacks.render(columns)
    else:
        texts = pq.read_table(shared_data / name / "all.parquet", columns=["text"]).column("text").to_pylist()
    det = _fit(texts)
    assert det.n_tested_ > 0
    assert det.calibration_flagged_ == 0
    assert not _flags(det, texts).any()


@pytest.mark.skipif(not glob.glob("/usr/share/vim/vim*/tutor/tutor.*.utf-8"), reason="no Vim tutor translations here")
def test_prose_in_other_languages_is_not_flagged(wiki):
    """Vim's tutor, translated by people into ~30 languages (Chinese, Japanese, Korean, Russian,
    Turkish, Hungarian ...): natural text repeats its own words whatever the language."""
    tutors = {}
    for path in sorted(glob.glob("/usr/share/vim/vim*/tutor/tutor.*.utf-8")):
        with open(path, encoding="utf-8") as fh:
            tutors[path] = fh.read()
    det = _fit(wiki[1])
    r = det.repeat_shares(list(tutors.values()))
    assert len(tutors) >= 10 and np.isfinite(r).all()
    assert r.min() > 2 * det.max_repeat_share
    assert not _flags(det, list(tutors.values())).any()


def test_few_long_rows_fall_back_to_the_absolute_bound(shared_data, vocabulary):
    """Tweets have almost no row of 128 tokens: planted documents are most of the long rows
    of the calibration sample, and are still flagged (they cannot calibrate the threshold)."""
    t = pq.read_table(shared_data / "tweeteval" / "all.parquet", columns=["id", "text"]).slice(0, 5000)
    ids, texts = t.column("id").to_pylist(), t.column("text").to_pylist()
    sc = attacks.denial_of_service(ids, texts, n_poison=25, seed=1, vocabulary=vocabulary)
    det = _fit(sc.texts)
    assert det.center_ is None and det.repeat_threshold_ == det.max_repeat_share
    assert det.threshold_info()["binding"] == "max_repeat_share"
    assert np.array_equal(_flags(det, sc.texts), sc.is_poison)


def test_persistence_round_trip(wiki, vocabulary):
    ids, texts = wiki
    sc = attacks.denial_of_service(ids, texts, n_poison=10, seed=4, vocabulary=vocabulary)
    det = _fit(sc.texts)
    meta, arrays = state_round_trip(*det.get_state())
    back = GibberishDetector.from_state(det.get_params(), meta, arrays)
    X = np.zeros((len(texts), 1), np.float32)
    T = np.array(sc.texts, dtype=object)
    assert np.array_equal(back.score_samples(X, texts=T), det.score_samples(X, texts=T))
    assert back.threshold_info() == det.threshold_info()
    with pytest.raises(ValueError, match="state version"):
        GibberishDetector.from_state({}, {**meta, "state_version": 99}, arrays)


def test_estimator_contract_and_bad_input(wiki):
    texts = wiki[1][:500]
    X = np.zeros((len(texts), 3), np.float32)
    det = GibberishDetector(window=32)
    assert clone(det).get_params() == det.get_params()
    with pytest.raises(NotFittedError):
        det.score_samples(X, texts=texts)
    with pytest.raises(ValueError, match="texts"):
        det.fit(X)
    with pytest.raises(ValueError, match="shape"):
        det.fit(X, texts=texts[:10])
    assert det.fit(X, texts=texts) is det
    with pytest.raises(ValueError, match="features"):
        det.score_samples(np.zeros((len(texts), 2), np.float32), texts=texts)


@pytest.mark.parametrize("knob,value", [
    ("window", 0), ("window", 12.5), ("max_repeat_share", 0.0), ("max_repeat_share", 1.0),
    ("threshold_z", -1.0), ("threshold_z", float("nan")), ("min_calibration_rows", 0),
])
def test_bad_params_are_rejected(wiki, knob, value):
    X = np.zeros((3, 1), np.float32)
    with pytest.raises(ValueError, match=knob):
        GibberishDetector(**{knob: value}).fit(X, texts=wiki[1][:3])
    with pytest.raises(ConfigError, match=knob):
        load_config(None, {f"detectors.gibberish.{knob}": value})
