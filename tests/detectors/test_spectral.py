"""SpectralSignatureDetector: the streaming statistics, the calibration rule,
the estimator contract, persistence, and the planted-shift gate on
precomputed-style features (the situation Tran et al. describe)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from conftest import state_round_trip
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from shardguard.detectors import REGISTRY, SpectralSignatureDetector
from shardguard.detectors.spectral import RARE_GROUP
from shardguard.embed import PrecomputedEmbedder

D = 384


def realistic_gaussian(n: int, d: int = D, seed: int = 0, n_labels: int = 2):
    """Labelled Gaussian features with a sentence-embedding-like spectrum.

    Eigenvalues decay as i^-0.6 and are scaled to MiniLM's on SST-2 (top
    eigenvalue ~0.036, total variance ~0.8); each label has its own mean.
    Returns (X float32, y int64, top standard deviation)."""
    rng = np.random.default_rng(seed)
    lam = np.arange(1, d + 1, dtype=np.float64) ** -0.6
    lam *= 0.8 / lam.sum()
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    y = rng.integers(0, n_labels, size=n)
    means = rng.normal(size=(n_labels, d)) * 0.03
    X = (rng.normal(size=(n, d)) * np.sqrt(lam)) @ Q.T + means[y]
    return X.astype(np.float32), y.astype(np.int64), float(np.sqrt(lam[0]))


def plant_shift(X, y, label, frac, shift, seed=1):
    """Shift ``frac`` of ``label``'s rows along one fixed random unit direction."""
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(y == label)
    poison = np.sort(rng.choice(rows, int(round(frac * rows.size)), replace=False))
    u = rng.normal(size=X.shape[1])
    u /= np.linalg.norm(u)
    Xp = X.copy()
    Xp[poison] += (shift * u).astype(np.float32)
    mask = np.zeros(len(y), dtype=bool)
    mask[poison] = True
    return Xp, mask, u


def as_precomputed_batch(X: np.ndarray, y: np.ndarray, fixed: bool) -> pa.RecordBatch:
    n, d = X.shape
    flat = pa.array(X.ravel(), type=pa.float32())
    emb = (
        pa.FixedSizeListArray.from_arrays(flat, d)
        if fixed
        else pa.ListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), flat)
    )
    return pa.record_batch(
        {
            "id": pa.array([f"r{i}" for i in range(n)]),
            "text": pa.array(["x"] * n),
            "label": pa.array([str(v) for v in y]),
            "row": pa.array(np.arange(n, dtype=np.int64)),
            "embedding": emb,
        }
    )


@pytest.fixture(scope="module")
def gaussian():
    return realistic_gaussian(12_000)


# -- the gate: planted shift in precomputed-style features -----------------------
@pytest.mark.parametrize("fixed", [True, False], ids=["fixed_size_list", "list"])
def test_planted_shift_in_precomputed_features_is_flagged(gaussian, fixed):
    X, y, top_sd = gaussian
    # 3% of label 1's rows, shifted by 8 top standard deviations (1.6x the
    # typical distance of a row to its label mean, sqrt(0.8) ~ 0.89).
    Xp, poison, _ = plant_shift(X, y, label=1, frac=0.03, shift=8 * top_sd)
    batch = as_precomputed_batch(Xp, y, fixed)
    emb = PrecomputedEmbedder()
    E = emb.embed_batch(batch)
    assert E.dtype == np.float32 and np.array_equal(E, Xp)  # used as given, not normalised
    labels = np.asarray(batch.column("label").to_pylist(), dtype=object)
    det = SpectralSignatureDetector()
    # the pipeline's way: stream in batches, calibrate on a sample
    for s in range(0, len(E), 4096):
        det.partial_fit(E[s : s + 4096], labels[s : s + 4096])
    sample = np.random.default_rng(0).choice(len(E), 8000, replace=False)
    det.calibrate(E[sample], labels[sample])
    flagged = det.predict(E, labels)
    recall = flagged[poison].mean()
    fpr = flagged[~poison].mean()
    print(f"spectral planted shift: recall {recall:.3f}, clean flagged {fpr:.4%}")
    assert recall >= 0.95
    assert fpr <= 0.01


@pytest.mark.parametrize("frac", [0.01, 0.05, 0.10, 0.20])
def test_planted_shift_other_rates(gaussian, frac):
    X, y, top_sd = gaussian
    Xp, poison, _ = plant_shift(X, y, label=0, frac=frac, shift=8 * top_sd, seed=3)
    det = SpectralSignatureDetector().fit(Xp, y)
    flagged = det.predict(Xp, y)
    if frac >= 0.03:
        assert flagged[poison].mean() >= 0.95
    assert flagged[~poison].mean() <= 0.01


def test_clean_gaussian_flags_almost_nothing(gaussian):
    X, y, _ = gaussian
    det = SpectralSignatureDetector().fit(X, y)
    assert det.predict(X, y).mean() <= 0.002


def test_art_style_fixed_fraction_would_flag_far_more(gaussian):
    """Contrast with the fixed-fraction rule: removing the top 1.5 * eps * n_y
    (eps = 0.3, ART-like) flags 45% of clean data; ours flags ~0."""
    X, y, _ = gaussian
    det = SpectralSignatureDetector().fit(X, y)
    s = det.score_samples(X, y)
    art = np.zeros(len(y), dtype=bool)
    for lab in np.unique(y):
        rows = np.flatnonzero(y == lab)
        k = int(1.5 * 0.3 * rows.size)
        art[rows[np.argsort(-s[rows])[:k]]] = True
    assert art.mean() > 0.4
    assert det.predict(X, y).mean() < 0.005


# -- streaming statistics ---------------------------------------------------------
def test_streaming_direction_equals_svd_of_centred_matrix():
    rng = np.random.default_rng(7)
    d = 48
    scales = np.linspace(3.0, 0.2, d)
    X = rng.normal(size=(5000, d)) * scales + 25.0  # large offset: tests the centring
    y = np.where(rng.random(5000) < 0.4, "a", "b")
    det = SpectralSignatureDetector(min_group_size=2)
    cuts = [0, 1, 17, 900, 901, 3333, 5000]  # ragged batches, one of a single row
    for a, b in zip(cuts[:-1], cuts[1:]):
        det.partial_fit(X[a:b], y[a:b])
    det.calibrate(X, y)
    for g, lab in enumerate(det.groups_):
        Xg = X[y == lab]
        mu = Xg.mean(axis=0)
        _, sv, Vt = np.linalg.svd(Xg - mu, full_matrices=False)
        np.testing.assert_allclose(det.means_[g], mu, rtol=0, atol=1e-9)
        assert abs(float(det.directions_[g] @ Vt[0])) > 1 - 1e-9
        np.testing.assert_allclose(det.eigenvalues_[g], sv[0] ** 2 / len(Xg), rtol=1e-9)
        assert det.counts_[g] == len(Xg)
    # scores use the CENTRED projection: ((x - mu) . v)^2 up to the robust standardisation
    p, gidx = det.projections(X, y)
    g0 = det.groups_.index("a")
    Xa = X[y == "a"]
    np.testing.assert_allclose(
        p[gidx == g0] ** 2, ((Xa - Xa.mean(0)) @ det.directions_[g0]) ** 2, rtol=1e-7, atol=1e-9
    )


def test_merge_equals_one_pass():
    X, y, _ = realistic_gaussian(3000, d=32, seed=4)
    one = SpectralSignatureDetector().partial_fit(X, y).calibrate(X, y)
    a = SpectralSignatureDetector().partial_fit(X[:1000], y[:1000])
    b = SpectralSignatureDetector().partial_fit(X[1000:], y[1000:])
    merged = a.merge(b).calibrate(X, y)
    np.testing.assert_allclose(merged.score_samples(X, y), one.score_samples(X, y), rtol=1e-9, atol=1e-12)


def test_partial_fit_invalidates_calibration():
    X, y, _ = realistic_gaussian(1000, d=16)
    det = SpectralSignatureDetector().fit(X, y)
    det.partial_fit(X[:10], y[:10])
    with pytest.raises(NotFittedError):
        det.score_samples(X, y)
    det.calibrate(X, y)
    assert det.score_samples(X, y).shape == (1000,)


# -- groups -------------------------------------------------------------------------
def test_unlabelled_data_is_one_group_and_works_on_plain_numpy():
    X, _, top_sd = realistic_gaussian(6000, d=64, n_labels=1)
    Xp, poison, _ = plant_shift(X, np.zeros(len(X)), label=0, frac=0.03, shift=8 * top_sd)
    det = SpectralSignatureDetector().fit(Xp)  # y=None
    assert det.groups_ == [None]
    flagged = det.predict(Xp)
    assert flagged[poison].mean() >= 0.95 and flagged[~poison].mean() <= 0.01
    # all-null labels are the same single group
    det2 = SpectralSignatureDetector().fit(Xp, [None] * len(Xp))
    np.testing.assert_array_equal(det2.score_samples(Xp, [None] * len(Xp)), det.score_samples(Xp))


def test_rare_labels_are_pooled_and_tiny_pools_unscored():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1300, 8)).astype(np.float32)
    y = np.array(["big"] * 1000 + ["r1"] * 60 + ["r2"] * 60 + ["tiny"] * 30 + [None] * 150, dtype=object)
    det = SpectralSignatureDetector(min_group_size=100).fit(X, y)
    assert det.groups_[:2] == [None, "big"]
    assert det.groups_[2] is RARE_GROUP
    assert {det.label_to_group_[k] for k in ("r1", "r2", "tiny")} == {2}
    # an unseen label is scored against the rare pool
    s_unseen = det.score_samples(X[:5], ["never-seen"] * 5)
    s_rare = det.score_samples(X[:5], ["r1"] * 5)
    np.testing.assert_array_equal(s_unseen, s_rare)
    info = det.threshold_info()
    json.dumps(info)
    rare = [g for g in info["groups"] if g["rare_labels_pooled"]][0]
    assert rare["labels"] == ["r1", "r2", "tiny"] and rare["rows_fit"] == 150

    # a pool still below min_group_size: its rows are not scored (0) and never flagged
    y2 = np.array(["big"] * 1250 + ["tiny"] * 50, dtype=object)
    det2 = SpectralSignatureDetector(min_group_size=100).fit(X, y2)
    assert det2.groups_ == ["big"]
    s = det2.score_samples(X, y2)
    assert np.all(s[1250:] == 0) and not det2.predict(X, y2)[1250:].any()
    assert det2.threshold_info()["unscored_labels"] == ["tiny"]
    meta, arrays = det2.get_state()
    back = SpectralSignatureDetector.from_state(det2.get_params(), json.loads(json.dumps(meta)), arrays)
    assert back.threshold_info() == det2.threshold_info()


def test_small_calibration_group_falls_back_to_eigenvalue_scale():
    X, y, _ = realistic_gaussian(4000, d=16)
    det = SpectralSignatureDetector(min_calibration_size=30)
    det.partial_fit(X, y)
    keep = np.concatenate([np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:10]])
    det.calibrate(X[keep], y[keep])
    g1 = det.groups_.index("1")
    assert det.scale_methods_[g1] == "eigenvalue"
    assert det.scales_upper_[g1] == pytest.approx(np.sqrt(det.eigenvalues_[g1]))
    assert det.scale_methods_[det.groups_.index("0")] == "mad"


def test_int_and_string_labels_are_the_same_groups():
    X, y, _ = realistic_gaussian(2000, d=16)
    a = SpectralSignatureDetector().fit(X, y).score_samples(X, y)
    b = SpectralSignatureDetector().fit(X, y.astype(str)).score_samples(X, y.astype(str))
    np.testing.assert_array_equal(a, b)


# -- contract, determinism, persistence ---------------------------------------------
def test_estimator_contract():
    assert REGISTRY["spectral"] is SpectralSignatureDetector
    assert SpectralSignatureDetector.streaming is True
    det = SpectralSignatureDetector(threshold_z=3.0, min_group_size=10)
    assert det.get_params()["threshold_z"] == 3.0
    c = clone(det)
    assert c.get_params() == det.get_params()
    X, y, _ = realistic_gaussian(500, d=8)
    assert det.fit(X, y) is det
    assert det.threshold_ == 9.0
    with pytest.raises(NotFittedError):
        SpectralSignatureDetector().score_samples(X, y)
    with pytest.raises(ValueError, match="features"):
        det.score_samples(X[:, :4], y)
    with pytest.raises(ValueError, match="NaN"):
        det.partial_fit(np.full((2, 8), np.nan), None)
    with pytest.raises(ValueError, match="threshold_z"):
        SpectralSignatureDetector(threshold_z=-1).fit(X, y)
    s = det.score_samples(X, y)
    assert s.dtype == np.float64 and (s >= 0).all()


def test_same_input_same_scores(gaussian):
    X, y, _ = gaussian
    a = SpectralSignatureDetector(random_state=0).fit(X, y).score_samples(X, y)
    b = SpectralSignatureDetector(random_state=123).fit(X, y).score_samples(X, y)
    np.testing.assert_array_equal(a, b)


def test_persistence_round_trip_without_pickle(gaussian):
    X, y, top_sd = gaussian
    Xp, _, _ = plant_shift(X, y, label=1, frac=0.03, shift=8 * top_sd)
    labels = np.array([str(v) for v in y], dtype=object)
    labels[:50] = None
    det = SpectralSignatureDetector(min_group_size=100).fit(Xp, labels)
    meta2, arrays2 = state_round_trip(*det.get_state())
    back = SpectralSignatureDetector.from_state(det.get_params(), meta2, arrays2)
    np.testing.assert_array_equal(back.score_samples(Xp, labels), det.score_samples(Xp, labels))
    np.testing.assert_array_equal(back.predict(Xp, labels), det.predict(Xp, labels))
    assert back.threshold_ == det.threshold_
    assert back.threshold_info() == det.threshold_info()
    with pytest.raises(ValueError, match="shape"):
        bad = dict(arrays2, directions=arrays2["directions"][:, :5])
        SpectralSignatureDetector.from_state(det.get_params(), meta2, bad)


def test_threshold_info_is_json_and_documents_the_rule(gaussian):
    X, y, _ = gaussian
    info = SpectralSignatureDetector().fit(X, y).threshold_info()
    text = json.dumps(info)
    assert info["threshold"] == 16.0 and info["threshold_z"] == 4.0
    assert "median" in info["rule"]
    assert {g["label"] for g in info["groups"]} == {"0", "1"}
    assert all(g["rows_calibration"] > 0 for g in info["groups"])
    assert "NaN" not in text
