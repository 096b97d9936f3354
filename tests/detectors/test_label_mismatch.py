"""LabelMismatchDetector: flips on a separable problem, the score's sign, the
no-op cases, labels unseen at fit time, determinism, persistence, and the
cross-fitting (a row's score does not depend on whether it was in the fit)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import state_round_trip
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score

from shardguard.detectors import REGISTRY, LabelMismatchDetector
from shardguard.detectors.label_mismatch import row_folds


def blobs(n: int = 3000, d: int = 32, k: int = 3, sep: float = 6.0, seed: int = 0):
    """k unit-variance Gaussian classes whose means are ``sep`` apart from the origin."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    centers *= sep / np.linalg.norm(centers, axis=1, keepdims=True)
    yi = rng.integers(0, k, n)
    X = (centers[yi] + rng.normal(size=(n, d))).astype(np.float32)
    return X, np.array([f"c{v}" for v in yi], dtype=object)


def flip(y: np.ndarray, rate: float, seed: int = 1):
    """Give ``rate`` of the rows another random label; returns (labels, flipped mask)."""
    rng = np.random.default_rng(seed)
    classes = sorted(set(y.tolist()))
    rows = rng.choice(len(y), int(round(rate * len(y))), replace=False)
    yf = y.copy()
    for i in rows:
        yf[i] = rng.choice([c for c in classes if c != y[i]])
    mask = np.zeros(len(y), dtype=bool)
    mask[rows] = True
    return yf, mask


@pytest.fixture(scope="module")
def clean():
    return blobs()


@pytest.fixture(scope="module")
def flipped(clean):
    X, y = clean
    yf, mask = flip(y, 0.05)
    return X, y, yf, mask, LabelMismatchDetector().fit(X, yf)


# -- what a user sees -----------------------------------------------------------------
def test_flips_on_a_separable_problem_are_flagged_and_clean_rows_are_not(clean, flipped):
    X, y, yf, mask, det = flipped
    flagged = det.predict(X, yf)
    assert flagged[mask].mean() >= 0.95
    assert flagged[~mask].mean() <= 0.005
    # the same data with its true labels: (almost) nothing
    assert LabelMismatchDetector().fit(*clean).predict(*clean).mean() <= 0.002
    info = det.threshold_info()
    assert info["active"] and info["flagged_calibration"] == int(flagged.sum())
    json.dumps(info)


def test_score_is_one_minus_p_of_the_given_label_higher_is_more_suspicious(flipped):
    X, y, yf, mask, det = flipped
    s_flipped = det.score_samples(X, yf)
    s_true = det.score_samples(X, y)
    assert s_flipped.dtype == np.float64 and s_flipped.shape == (len(y),)
    assert ((s_flipped >= 0) & (s_flipped <= 1)).all()
    # the same row scores higher under a wrong label than under its true one
    assert (s_flipped[mask] > s_true[mask]).mean() >= 0.99
    assert np.median(s_true) < 0.2 and np.median(s_flipped[mask]) > 0.8
    assert 0.5 < det.threshold_ < 1.0
    # for a two-way choice the scores of the two labels are complementary: p + (1 - p) = 1
    X2, y2 = blobs(n=800, k=2, seed=4)
    det2 = LabelMismatchDetector().fit(X2, y2)
    other = np.where(y2 == "c0", "c1", "c0").astype(object)
    np.testing.assert_allclose(det2.score_samples(X2, y2) + det2.score_samples(X2, other), 1.0, atol=1e-12)


def test_real_sms_spam_default_flags_within_budget_and_ranks_flips_first(shared_data):
    """Real texts (SMS Spam, hashing embedder: fast, no model): the default threshold
    keeps within the clean-data budget; flipped labels rank far above clean ones."""
    import pyarrow.parquet as pq

    from shardguard.embed.hashing import HashingEmbedder

    t = pq.read_table(shared_data / "sms_spam" / "sms_spam.parquet", columns=["text", "label"]).to_pydict()
    X = HashingEmbedder().embed_texts(t["text"][:3000])
    y = np.array([str(v) for v in t["label"][:3000]], dtype=object)
    assert LabelMismatchDetector().fit(X, y).predict(X, y).mean() <= 0.002
    yf, mask = flip(y, 0.05, seed=2)
    det = LabelMismatchDetector().fit(X, yf)
    s = det.score_samples(X, yf)
    assert roc_auc_score(mask, s) >= 0.85
    assert det.predict(X, yf)[~mask].mean() <= 0.002


# -- no-op and unusual labels --------------------------------------------------------------
@pytest.mark.parametrize(
    "labels",
    [None, "all_none", "one_label", "too_rare"],
    ids=["y_none", "all_none", "one_label", "all_labels_too_rare"],
)
def test_unlabelled_or_single_label_data_is_a_noop(clean, labels):
    X, y = clean
    if labels is None:
        yy = None
    elif labels == "all_none":
        yy = np.full(len(y), None, dtype=object)
    elif labels == "one_label":
        yy = np.full(len(y), "spam", dtype=object)
    else:
        yy = y
    det = LabelMismatchDetector(min_class_size=len(y) if labels == "too_rare" else 100).fit(X, yy)
    assert not det.active_
    assert np.array_equal(det.score_samples(X, yy), np.zeros(len(y)))
    assert np.array_equal(det.score_samples(X, y), np.zeros(len(y)))  # labels appearing later change nothing
    assert not det.predict(X, y).any()
    info = det.threshold_info()
    assert info["active"] is False and "no-op" in info["note"] and info["threshold"] == 1.0
    json.dumps(info)
    meta, arrays = state_round_trip(*det.get_state())
    det2 = LabelMismatchDetector.from_state(det.get_params(), meta, arrays)
    assert not det2.predict(X, y).any() and det2.threshold_info() == info


def test_labels_unseen_at_fit_time_and_missing_labels_score_zero(flipped):
    X, y, yf, mask, det = flipped
    labels = yf[:6].copy()
    labels[1] = "never-seen"
    labels[4] = None
    s = det.score_samples(X[:6], labels)
    ref = det.score_samples(X[:6], yf[:6])
    assert s[1] == 0.0 and s[4] == 0.0
    np.testing.assert_array_equal(s[[0, 2, 3, 5]], ref[[0, 2, 3, 5]])
    assert np.array_equal(det.score_samples(X[:6], None), np.zeros(6))
    assert det.score_samples(X[:0], yf[:0]).shape == (0,)


def test_labels_too_rare_to_model_are_not_scored():
    X, y = blobs(n=2000, k=3, seed=5)
    y = y.copy()
    rare = np.flatnonzero(y == "c2")[:40]
    y[y == "c2"] = "c1"
    y[rare] = "c2"  # c2 now has 40 rows, below min_class_size=100
    det = LabelMismatchDetector().fit(X, y)
    assert det.classes_ == ["c0", "c1"] and det.threshold_info()["unscored_labels"] == ["c2"]
    assert np.array_equal(det.score_samples(X[rare], y[rare]), np.zeros(rare.size))


def test_integer_labels_are_the_same_as_their_strings(clean):
    X, y = clean
    yi = np.array([int(v[1:]) for v in y])
    det = LabelMismatchDetector().fit(X, yi)
    np.testing.assert_array_equal(det.score_samples(X, yi), det.score_samples(X, [str(v) for v in yi]))


# -- determinism, cross-fitting, persistence ----------------------------------------------
def test_same_random_state_same_scores_and_the_seed_moves_the_folds(flipped):
    X, y, yf, mask, det = flipped
    again = clone(det).fit(X, yf)
    np.testing.assert_array_equal(again.score_samples(X, yf), det.score_samples(X, yf))
    assert again.threshold_ == det.threshold_
    other = LabelMismatchDetector(random_state=1).fit(X, yf)
    assert other.fold_seed_ != det.fold_seed_
    assert not np.array_equal(row_folds(X, 5, other.fold_seed_), row_folds(X, 5, det.fold_seed_))
    assert other.predict(X, yf)[mask].mean() >= 0.95  # the method, not the fold draw, finds them


def test_scoring_in_batches_is_bit_identical_to_scoring_at_once(flipped):
    X, y, yf, mask, det = flipped
    whole = det.score_samples(X, yf)
    parts = np.concatenate([det.score_samples(X[a : a + 257], yf[a : a + 257]) for a in range(0, len(X), 257)])
    np.testing.assert_array_equal(parts, whole)  # bit-identical: scan and Guard batch differently
    np.testing.assert_array_equal(det.score_samples(X[7:8], yf[7:8]), whole[7:8])


def test_a_rows_score_does_not_depend_on_whether_it_was_in_the_fit(flipped):
    """Cross-fitting: each row is scored by the model of its own fold, which is fitted
    on the other folds only. Leaving a fold's rows out of the fit therefore changes
    neither that fold's model nor those rows' scores: rows seen in the fit (the
    reservoir) and rows scored later (the rest of the data) get the same kind of score."""
    X, y, yf, mask, det = flipped
    folds = row_folds(X, det.n_folds, det.fold_seed_)
    out = folds == 0
    part = clone(det).fit(X[~out], yf[~out])
    np.testing.assert_array_equal(part.coef_[0], det.coef_[0])
    np.testing.assert_array_equal(part.intercept_[0], det.intercept_[0])
    np.testing.assert_array_equal(part.score_samples(X[out], yf[out]), det.score_samples(X[out], yf[out]))
    # ... and the fit-time scores of the flipped rows are out-of-fold: a model that had
    # seen them would have learnt some of their wrong labels
    assert det.score_samples(X[mask], yf[mask]).min() > 0.5


def test_identical_rows_share_a_fold_and_folds_depend_only_on_the_row():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 16)).astype(np.float32)
    X[10] = X[3]
    X[11, :] = 0.0
    X[12, :] = -0.0
    f = row_folds(X, 5, 7)
    assert f[10] == f[3] and f[11] == f[12]
    assert set(f.tolist()) == set(range(5))
    np.testing.assert_array_equal(row_folds(X[::-1], 5, 7), f[::-1])  # order does not matter
    np.testing.assert_array_equal(row_folds(X.astype(np.float64), 5, 7), f)  # float32 bytes
    assert row_folds(X[:0], 5, 7).shape == (0,)


def test_state_round_trip_gives_identical_scores(flipped):
    X, y, yf, mask, det = flipped
    meta, arrays = state_round_trip(*det.get_state())
    assert all(a.dtype != object for a in arrays.values())
    det2 = LabelMismatchDetector.from_state(det.get_params(), meta, arrays)
    np.testing.assert_array_equal(det2.score_samples(X, yf), det.score_samples(X, yf))
    np.testing.assert_array_equal(det2.predict(X, yf), det.predict(X, yf))
    assert det2.threshold_ == det.threshold_
    assert det2.threshold_info() == det.threshold_info()
    meta["state_version"] = 99
    with pytest.raises(ValueError, match="state version"):
        LabelMismatchDetector.from_state(det.get_params(), meta, arrays)


# -- contract -------------------------------------------------------------------------------------
def test_registered_and_off_by_default():
    assert REGISTRY["label_mismatch"] is LabelMismatchDetector
    assert LabelMismatchDetector.enabled_by_default is False
    assert not LabelMismatchDetector.streaming


def test_not_fitted_and_bad_parameters_are_clear_errors(clean):
    X, y = clean
    with pytest.raises(NotFittedError):
        LabelMismatchDetector().score_samples(X, y)
    for bad in ({"n_folds": 1}, {"C": 0}, {"C": "x"}, {"class_weight": "auto"}, {"max_iter": 0},
                {"min_class_size": 0}, {"threshold_z": -1}):
        with pytest.raises(ValueError):
            LabelMismatchDetector(**bad).fit(X, y)
    det = LabelMismatchDetector().fit(X, y)
    with pytest.raises(ValueError, match="features"):
        det.score_samples(X[:, :5], y)
    with pytest.raises(ValueError, match="shape"):
        det.score_samples(X, y[:10])
