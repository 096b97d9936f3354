"""IsolationForestDetector: the planted outlier-cloud gate, calibration,
determinism, the estimator contract and skops persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import state_round_trip
import skops.io as sio
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import FunctionTransformer

from shardguard.detectors import REGISTRY, IsolationForestDetector


def realistic_gaussian(n: int, d: int = 384, seed: int = 0) -> np.ndarray:
    """Gaussian features with a sentence-embedding-like spectrum (eigenvalues
    ~ i^-0.6, total variance 0.8 as MiniLM on SST-2), random orientation."""
    rng = np.random.default_rng(seed)
    lam = np.arange(1, d + 1, dtype=np.float64) ** -0.6
    lam *= 0.8 / lam.sum()
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return ((rng.normal(size=(n, d)) * np.sqrt(lam)) @ Q.T).astype(np.float32)


def plant_cloud(X: np.ndarray, frac: float, distance: float, spread: float = 1.0, seed: int = 1):
    """Replace ``frac`` of the rows by a cloud: clean rows (spread around the
    mean scaled by ``spread``) displaced by ``distance`` x the data's radius
    (RMS distance of a row to the mean) along one random direction."""
    rng = np.random.default_rng(seed)
    n, d = X.shape
    mu = X.mean(axis=0)
    radius = float(np.sqrt(((X - mu) ** 2).sum(axis=1).mean()))
    rows = np.sort(rng.choice(n, int(round(frac * n)), replace=False))
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    src = X[rng.choice(n, rows.size)]
    Xp = X.copy()
    Xp[rows] = mu + spread * (src - mu) + distance * radius * u
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return Xp, mask


@pytest.fixture(scope="module")
def clean():
    return realistic_gaussian(10_000)


@pytest.fixture(scope="module")
def with_cloud(clean):
    return plant_cloud(clean, frac=0.03, distance=2.0)


# -- the gate ----------------------------------------------------------------------
def test_planted_outlier_cloud_is_flagged(with_cloud):
    X, cloud = with_cloud
    det = IsolationForestDetector().fit(X)
    flagged = det.predict(X)
    recall, fpr = flagged[cloud].mean(), flagged[~cloud].mean()
    print(f"isolation forest planted cloud: recall {recall:.3f}, clean flagged {fpr:.4%}")
    assert recall >= 0.95
    assert fpr <= 0.01


def test_tight_cloud_and_fit_on_a_sample(clean):
    """A tighter cloud (spread 0.3) at 3x the radius; fitted on a 5k sample
    (the pipeline fits on its reservoir) and scored on everything."""
    X, cloud = plant_cloud(clean, frac=0.03, distance=3.0, spread=0.3, seed=5)
    sample = np.random.default_rng(0).choice(len(X), 5000, replace=False)
    det = IsolationForestDetector().fit(X[sample])
    flagged = det.predict(X)
    assert flagged[cloud].mean() >= 0.95
    assert flagged[~cloud].mean() <= 0.01


def test_clean_data_flags_almost_nothing(clean):
    for seed in (0, 1, 2):
        det = IsolationForestDetector(random_state=seed).fit(clean)
        assert det.predict(clean).mean() <= 0.002
        assert det.threshold_info()["flagged_calibration"] <= 20


def test_pca_option(with_cloud):
    X, cloud = with_cloud
    det = IsolationForestDetector(pca_components=16).fit(X)
    assert det.pca_components_.shape == (16, X.shape[1])
    rows = det.pca_components_ @ det.pca_components_.T
    np.testing.assert_allclose(rows, np.eye(16), atol=1e-8)
    assert det.predict(X)[~cloud].mean() <= 0.01
    # a value >= the dimension means no projection
    assert IsolationForestDetector(pca_components=1000).fit(X[:500]).pca_components_ is None


# -- determinism ---------------------------------------------------------------------
def test_same_seed_same_scores_other_seed_other_scores(with_cloud):
    X, _ = with_cloud
    a = IsolationForestDetector(random_state=3).fit(X).score_samples(X)
    b = IsolationForestDetector(random_state=3).fit(X).score_samples(X)
    c = IsolationForestDetector(random_state=4).fit(X).score_samples(X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# -- contract ------------------------------------------------------------------------
def test_estimator_contract(clean):
    assert REGISTRY["outlier"] is IsolationForestDetector
    assert IsolationForestDetector.streaming is False
    det = IsolationForestDetector(n_estimators=50, threshold_z=3.0)
    assert clone(det).get_params() == det.get_params()
    assert det.fit(clean[:800]) is det
    s = det.score_samples(clean[:100])
    assert s.dtype == np.float64 and ((s > 0) & (s <= 1)).all()
    np.testing.assert_array_equal(det.predict(clean[:100]), s > det.threshold_)
    assert det.score_samples(clean[:0]).shape == (0,)
    with pytest.raises(NotFittedError):
        IsolationForestDetector().score_samples(clean[:5])
    with pytest.raises(ValueError, match="features"):
        det.score_samples(clean[:5, :10])
    with pytest.raises(ValueError, match="threshold_z"):
        IsolationForestDetector(threshold_z=0).fit(clean[:100])
    with pytest.raises(ValueError, match="pca_components"):
        IsolationForestDetector(pca_components=0).fit(clean[:100])
    info = det.threshold_info()
    json.dumps(info)
    assert info["threshold"] == pytest.approx(np.exp(info["log_score_center"] + 3.0 * info["log_score_scale"]))


def test_threshold_rule(clean):
    det = IsolationForestDetector(n_estimators=50).fit(clean[:2000])
    t = np.log(det.score_samples(clean[:2000]))
    m = np.median(t)
    hi = 1.482602218505602 * np.median(t[t >= m] - m)
    assert det.threshold_ == pytest.approx(np.exp(m + 4.0 * hi), rel=1e-12)


# -- persistence ----------------------------------------------------------------------
@pytest.mark.parametrize("pca", [None, 8])
def test_persistence_round_trip(with_cloud, pca):
    X, _ = with_cloud
    det = IsolationForestDetector(n_estimators=60, pca_components=pca).fit(X[:3000])
    meta, arrays = det.get_state()
    assert arrays["forest_skops"].dtype == np.uint8
    back = IsolationForestDetector.from_state(det.get_params(), *state_round_trip(meta, arrays))
    np.testing.assert_array_equal(back.score_samples(X), det.score_samples(X))
    assert back.threshold_ == det.threshold_
    assert back.threshold_info() == det.threshold_info()


def test_persistence_refuses_unexpected_types(clean):
    det = IsolationForestDetector(n_estimators=10).fit(clean[:300])
    meta, arrays = det.get_state()
    evil = np.frombuffer(sio.dumps(FunctionTransformer(func=np.sum)), dtype=np.uint8)
    with pytest.raises(ValueError, match="unexpected types"):
        IsolationForestDetector.from_state(det.get_params(), meta, dict(arrays, forest_skops=evil))
    other = np.frombuffer(sio.dumps(LogisticRegression()), dtype=np.uint8)
    with pytest.raises(ValueError, match="expected an IsolationForest"):
        IsolationForestDetector.from_state(det.get_params(), meta, dict(arrays, forest_skops=other))


def test_threads_and_calibration_subsample_change_nothing_they_should_not(with_cloud):
    X, mask = with_cloud
    one = IsolationForestDetector(n_jobs=1, calibration_rows=None).fit(X)
    many = IsolationForestDetector(n_jobs=-1, calibration_rows=None).fit(X)
    # row blocks per thread: bit-identical scores whatever the thread count
    assert np.array_equal(one.score_samples(X), many.score_samples(X))
    assert one.threshold_ == many.threshold_
    # calibrating on a seeded 3,000-row subsample: the same threshold every time, close to
    # the full sample's, and the same rows flagged
    sub = IsolationForestDetector(calibration_rows=3000).fit(X)
    assert sub.threshold_info()["rows_calibration"] == 3000
    assert sub.threshold_ == IsolationForestDetector(calibration_rows=3000).fit(X).threshold_
    assert abs(np.log(sub.threshold_) - np.log(one.threshold_)) < 0.02
    assert (sub.predict(X) == mask).mean() > 0.999
    with pytest.raises(ValueError, match="calibration_rows"):
        IsolationForestDetector(calibration_rows=0).fit(X)
