"""Label mismatch: confident learning on the embeddings (Northcutt, Jiang, Chuang,
"Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 2021, as the
cleanlab library does it: out-of-fold predicted probabilities of a classifier,
rows ranked by the self-confidence ``p(given label)``).

It flags rows whose given label a cross-fitted linear classifier on the
embeddings confidently rejects: random label flips without a trigger, which no
other detector sees (the flipped row is a perfectly ordinary sentence of another
label).

Cross-fitting that survives the pipeline. The pipeline fits on a reservoir
sample and scores EVERY row later, batch by batch, without telling a detector
which rows it was fitted on. So each row's fold is a deterministic hash of its
embedding, ``xxh3_64(float32 row bytes, seed) % n_folds`` (the seed drawn from
``random_state``); ``n_folds`` multinomial logistic regressions are fitted, the
j-th on the fit rows of every fold but j, and a row is always scored by its own
fold's model. A fit row's score is therefore out-of-fold (the model never saw
it), a row scored later gets the same kind of score, and exact duplicates share
a fold, so a copy cannot vouch for its own label. (Near-duplicates that differ
in a bit of the embedding can land in other folds and lend their label some
support.)

The classifier: scikit-learn's ``LogisticRegression`` (lbfgs, softmax, L2 with
``C = 0.01``) on the embeddings standardised with the training folds' mean and
standard deviation (folded into the stored coefficients, so scoring is
``softmax(X W^T + b)`` on the raw embeddings), ``class_weight="balanced"``.
Measured on MiniLM vectors (SST-2, AG News, SMS Spam, 5% flips): standardised
``C = 0.01`` ranks flips as well as C from 0.001 to 1 or the raw normalised
vectors with C from 1 to 100 (AUROC 0.89 on SST-2, 0.97 on AG News), and lbfgs
converges in 17-35 iterations, where raw vectors took 5-15x the time on AG News.
Balanced weights keep small classes from being flagged wholesale: without them
the strong L2 shrinks a class of 50 rows (SST-2 negatives subsampled) to
``p(label) ~ 0.03`` and all of it was flagged, with them 2% (100 rows: 0%).
Their price: flips from a large class into a small one look less wrong (SMS
Spam, mostly ham -> spam: AUROC 0.965 instead of 0.993 unweighted). Labels
with fewer than ``min_class_size`` fit rows are left out of the model and
their rows are not scored.

Score (higher = more suspicious): ``1 - p_y``, the fold model's probability
that the row's label is NOT its given one (cleanlab's ``self_confidence``
quality, flipped). For two labels it ranks like the margin
``max_{k != y} p_k - p_y``; for four (AG News) it caught more flips at low
false-positive rates than the margin (recall 0.22 vs 0.15 at 0.2% FPR).
Unscored rows (unlabelled, a label unseen or too rare at fit time, a label
missing from the fold model) score 0 and are never flagged.

Threshold (``calibrate``, on the fit sample): a robust z on the log-odds of the
self-confidence, ``l = log(p_y / (1 - p_y))``, computed stably from the logits.
With ``m`` the median of ``l`` over the scored calibration rows and ``sigma_lo``
the normal-consistent MAD of the deviations BELOW it (see
:mod:`shardguard.detectors.thresholds`), a row is flagged when
``l < m - threshold_z * sigma_lo``, i.e. ``score > threshold_ =
1 - sigmoid(m - threshold_z * sigma_lo)``.

Why not confident learning's own rule. CL's per-class thresholds ``t_j = mean
p_j over the rows labelled j`` (flag a row labelled i when ``p_j >= t_j`` for
some ``j != i``) flagged 7.7% of clean SST-2 and 4.6% of clean AG News (0.1% of
SMS Spam): real datasets carry natural label noise and ambiguity (the top rows
of clean AG News are mostly plain mistakes, e.g. a Scottish rugby story labelled
business, a Google privacy story labelled sports), which CL finds too. The project's budget is <= 1% of a clean dataset for all detectors
together, so the default must flag almost nothing. The CL view is still in
``threshold_info()["confident_learning"]`` (thresholds and off-diagonal count).

What it can do, measured (MiniLM, whole train sets as the fit sample,
defaults): clean SST-2 / AG News / SMS Spam flagged 0% / 0.16% / 0.02% (0, 18
and 1 rows); with 5% random flips (``bench.attacks.label_flips``) recall at the
default threshold 0.006 (SST-2) and 0.047 (AG News), at 1% FPR 0.26 and 0.57,
at 0.2% FPR 0.10 and 0.24, AUROC 0.891 and 0.973. A linear probe on a generic
sentence encoder is only 81% (SST-2) / 88% (AG News) accurate, so a flipped
row is hard to tell from a naturally hard or mislabelled one, and the flips
themselves make the model less sure (the median log-odds drops), which moves
the threshold away from them. No rule tried that flagged <= 0.2% of every
clean set (robust z per class or global, CL thresholds made stricter, fixed
probabilities, Benjamini-Hochberg on the probabilities) caught more. Hence the
detector is OFF by default (``enabled_by_default``); switch it on
(``detectors.label_mismatch.enabled: true``) for data a linear probe separates
well, or lower ``threshold_z`` for a cleanlab-like audit (z = 2.5 flagged
0.7% / 2.4% / 0.7% of clean SST-2 / AG News / SMS Spam and 16% / 64% of the
flips in SST-2 / AG News).

Unlabelled data, or fewer than two labels with ``min_class_size`` rows: the
detector is a no-op (every score 0, ``threshold_ = 1``, never flags) and
``threshold_info()`` says why.

Persistence is pickle-free: coefficients, intercepts and the per-fold class
masks are numpy arrays; classes and calibration are JSON.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import numpy as np
import xxhash
from scipy.special import expit, logsumexp
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.utils import check_random_state
from threadpoolctl import threadpool_limits

from shardguard.detectors.base import EmbeddingDetector, as_labels, check_X, label_groups
from shardguard.detectors.thresholds import check_z, normal_tail, robust_center_scale

log = logging.getLogger(__name__)

_STATE_VERSION = 1
#: Standard deviations below this share of the mean one are constant features
#: (MiniLM has three): left unscaled instead of blowing float noise up to unit variance.
_CONSTANT_FEATURE = 1e-4
_CLASS_WEIGHTS = ("balanced", None)


def row_folds(X: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Each row's fold: ``xxh3_64(float32 row bytes, seed) % n_folds`` (intp).

    A pure function of the row's values (``-0.0`` counts as ``0.0``), so a row
    gets the same fold at fit and at scoring time, and identical rows share one.
    """
    Xc = np.ascontiguousarray(X, dtype=np.float32) + np.float32(0.0)
    n = Xc.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    rows = Xc.view(np.dtype((np.void, Xc.dtype.itemsize * Xc.shape[1]))).ravel()
    h = np.fromiter((xxhash.xxh3_64_intdigest(r, seed) for r in rows), dtype=np.uint64, count=n)
    return (h % np.uint64(n_folds)).astype(np.intp)


class LabelMismatchDetector(EmbeddingDetector):
    """Cross-fitted logistic regression; flags rows whose label it confidently rejects.

    Parameters
    ----------
    n_folds : int, default 5
        Folds of the cross-fitting (one model per fold, each fitted on the others).
    C : float, default 0.01
        Inverse L2 strength of the logistic regressions, on standardised embeddings.
    class_weight : "balanced" or None, default "balanced"
        Weights classes inversely to their frequency (keeps small classes from
        being flagged wholesale); None weights every row alike.
    max_iter : int, default 50
        lbfgs iterations per fold model (at most). SST-2, AG News and SMS Spam
        converge in 17-35, the three mixed (8 labels) in about 40; 30 gave the
        same AUROC. Bounds the fit time when there are many labels.
    min_class_size : int, default 100
        Labels with fewer rows in the fit are left out of the model; their rows
        score 0.
    threshold_z : float, default 4.0
        Flag a row when the log-odds of its self-confidence lies more than this
        many robust standard deviations (MAD below the median) under the median.
    random_state : int, default 0
        Seeds the fold hash (and is passed to the regressions).

    Fitted attributes
    -----------------
    n_features_in_, active_ (False: no-op), inactive_reason_ (str or None),
    classes_ (label strings, sorted), rare_labels_ (left out: too few rows),
    class_counts_ (rows per class in the fit), fold_seed_, fold_rows_ (fit rows
    per fold), coef_ (n_folds, K, d) and intercept_ (n_folds, K) on raw
    embeddings, fold_classes_ (n_folds, K) bool (classes each fold model knows),
    n_iter_ (n_folds,), center_, scale_ (of the log-odds), scale_method_,
    n_calibration_, calibration_flagged_, class_flagged_ (K,), cl_thresholds_
    (K,), cl_off_diagonal_, threshold_ (in score units, 1 - p).
    """

    name = "label_mismatch"
    streaming = False
    #: Off unless switched on: on MiniLM it catches few random flips at the
    #: clean-data budget (see the module docstring).
    enabled_by_default = False
    param_ranges = {
        "n_folds": "[2, 100]",
        "C": "(0, inf)",
        "max_iter": "[1, 100000]",
        "min_class_size": "[1, inf)",
        "threshold_z": "(0, inf)",
    }

    def __init__(
        self,
        n_folds: int = 5,
        C: float = 0.01,
        class_weight: str | None = "balanced",
        max_iter: int = 50,
        min_class_size: int = 100,
        threshold_z: float = 4.0,
        random_state: int | None = 0,
    ) -> None:
        self.n_folds = n_folds
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.min_class_size = min_class_size
        self.threshold_z = threshold_z
        self.random_state = random_state

    # -- parameters ------------------------------------------------------------------
    def check_params(self) -> None:
        super().check_params()
        self._check_params()

    def _check_params(self) -> None:
        check_z(self.threshold_z)
        for knob, lo in (("n_folds", 2), ("max_iter", 1), ("min_class_size", 1)):
            v = getattr(self, knob)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{knob} must be an integer >= {lo}, got {v!r}")
        try:
            C = float(self.C)
        except (TypeError, ValueError):
            raise ValueError(f"C must be a number > 0, got {self.C!r}") from None
        if not np.isfinite(C) or C <= 0:
            raise ValueError(f"C must be a finite number > 0, got {self.C!r}")
        if self.class_weight not in _CLASS_WEIGHTS:
            raise ValueError(f"class_weight must be 'balanced' or None, got {self.class_weight!r}")

    def _reset(self) -> None:
        for attr in list(vars(self)):
            if attr.endswith("_") and not attr.startswith("__"):
                delattr(self, attr)

    def _set_inactive(self, reason: str) -> None:
        K, d, F = len(self.classes_), self.n_features_in_, int(self.n_folds)
        self.active_ = False
        self.inactive_reason_ = reason
        self.coef_ = np.zeros((F, K, d))
        self.intercept_ = np.zeros((F, K))
        self.fold_classes_ = np.zeros((F, K), dtype=bool)
        self.n_iter_ = np.zeros(F, dtype=np.int64)
        log.info("label_mismatch is a no-op: %s", reason)

    # -- fitting ---------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: Any = None) -> "LabelMismatchDetector":
        """Fit one logistic regression per fold on the other folds' rows, then calibrate on ``X``."""
        self._check_params()
        X = check_X(X)
        n, d = X.shape
        labels = as_labels(y, n)
        self._reset()
        self.n_features_in_ = d
        self.fold_seed_ = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        F = int(self.n_folds)
        folds = row_folds(X, F, self.fold_seed_)
        self.fold_rows_ = np.bincount(folds, minlength=F).astype(np.int64)
        counts: dict[str, int] = {}
        if labels is not None:
            for lab in labels.tolist():
                if lab is not None:
                    counts[lab] = counts.get(lab, 0) + 1
        min_n = int(self.min_class_size)
        self.classes_ = sorted(lab for lab, c in counts.items() if c >= min_n)
        self.rare_labels_ = sorted(lab for lab, c in counts.items() if c < min_n)
        self.class_counts_ = np.array([counts[lab] for lab in self.classes_], dtype=np.int64)
        if not counts:
            self._set_inactive("unlabelled data: there is no given label to check" if n else "no rows to fit")
            return self.calibrate(X, y)
        if len(self.classes_) < 2:
            self._set_inactive(
                f"fewer than 2 labels with >= min_class_size ({min_n}) rows in the fit "
                f"(labels and rows: {dict(sorted(counts.items()))})"
            )
            return self.calibrate(X, y)

        yi = self._class_index(labels)
        K = len(self.classes_)
        coef = np.zeros((F, K, d))
        intercept = np.zeros((F, K))
        known = np.zeros((F, K), dtype=bool)
        n_iter = np.zeros(F, dtype=np.int64)
        t0 = time.perf_counter()
        for j in range(F):
            tr = np.flatnonzero((folds != j) & (yi >= 0))
            present = np.unique(yi[tr])
            if present.size < 2:
                log.warning("label_mismatch: fold %d's training rows hold fewer than 2 labels; "
                            "its rows are not scored", j)
                continue
            Xtr = np.asarray(X[tr], dtype=np.float64)
            mu = Xtr.mean(axis=0)
            sd = Xtr.std(axis=0)
            sd[~(sd > _CONSTANT_FEATURE * max(float(sd.mean()), 1e-300))] = 1.0
            Z = ((Xtr - mu) / sd).astype(np.float32)
            del Xtr
            model = LogisticRegression(
                C=float(self.C), class_weight=self.class_weight, max_iter=int(self.max_iter),
                random_state=self.fold_seed_,
            )
            # one BLAS thread: lbfgs's small products ran 7-25x SLOWER with 2 OpenBLAS
            # threads on a busy 2-core machine (0.4-0.6 s vs 4-14 s, 40k x 384, 11 iterations)
            with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(Z, yi[tr])
            n_iter[j] = int(np.max(model.n_iter_))
            W = np.asarray(model.coef_, dtype=np.float64)
            b = np.asarray(model.intercept_, dtype=np.float64)
            cls = np.asarray(model.classes_, dtype=np.intp)
            if cls.size == 2:  # sklearn's binary form: one logit for classes_[1] vs classes_[0]
                W = np.vstack([np.zeros(d), W[0]])
                b = np.array([0.0, b[0]])
            # fold the standardisation into the coefficients: w.(x - mu)/sd = (w/sd).x - (w/sd).mu
            W = W / sd
            coef[j, cls] = W
            intercept[j, cls] = b - W @ mu
            known[j, cls] = True
        self.active_ = bool(known.any())
        self.inactive_reason_ = None if self.active_ else "no fold had rows of 2 or more labels to train on"
        self.coef_ = coef
        self.intercept_ = intercept
        self.fold_classes_ = known
        self.n_iter_ = n_iter
        capped = int((n_iter >= int(self.max_iter)).sum())
        log.info("label_mismatch: %d fold models, %d labels, %d rows, %.1fs%s", F, K, n,
                 time.perf_counter() - t0,
                 f"; {capped} stopped at max_iter={self.max_iter}" if capped else "")
        return self.calibrate(X, y)

    # -- scoring ---------------------------------------------------------------------
    def _class_index(self, labels: np.ndarray | None, n: int | None = None) -> np.ndarray:
        """Index into ``classes_`` per row; -1 for rows without a modelled label."""
        if labels is None:
            return np.full(int(n or 0), -1, dtype=np.intp)
        index = {lab: k for k, lab in enumerate(self.classes_)}
        codes, keys = label_groups(labels)
        return np.array([index.get(lab, -1) for lab in keys], dtype=np.intp)[codes]

    def _logits(self, X: np.ndarray, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Each row's fold-model logits (n, K; -inf for classes its fold model lacks)
        and class index (-1: the row is not scored)."""
        if not hasattr(self, "coef_"):
            raise NotFittedError("LabelMismatchDetector is not fitted: call fit")
        X = check_X(X, self.n_features_in_)
        n = X.shape[0]
        K = len(self.classes_)
        yi = self._class_index(as_labels(y, n), n)
        L = np.full((n, K), -np.inf)
        if not self.active_ or n == 0 or not (yi >= 0).any():
            return L, np.full(n, -1, dtype=np.intp)
        folds = row_folds(X, int(self.n_folds), self.fold_seed_)
        for j in np.unique(folds[yi >= 0]):
            rows = np.flatnonzero((folds == j) & (yi >= 0))
            known = self.fold_classes_[j]
            if not known.any():
                continue
            # einsum, not BLAS: a row's logits are then bit-identical whatever batch it is in
            # (matmul switches kernels with the row count), as fast for a few labels
            Lj = np.einsum("nd,kd->nk", np.asarray(X[rows], dtype=np.float64), self.coef_[j, known])
            Lj += self.intercept_[j, known]
            L[np.ix_(rows, np.flatnonzero(known))] = Lj
        # a row whose label its fold model does not know, or with no rival label, is not scored
        ar = np.arange(n)
        ok = yi >= 0
        ok[ok] = np.isfinite(L[ar[ok], yi[ok]])
        ok &= np.isfinite(L).sum(axis=1) >= 2
        yi = np.where(ok, yi, -1)
        return L, yi

    @staticmethod
    def _self_log_odds(L: np.ndarray, yi: np.ndarray) -> np.ndarray:
        """``log(p_y / (1 - p_y))`` for scored rows (``yi >= 0``), from the logits; NaN elsewhere."""
        n = L.shape[0]
        out = np.full(n, np.nan)
        rows = np.flatnonzero(yi >= 0)
        if rows.size == 0:
            return out
        Lr = L[rows].copy()
        own = Lr[np.arange(rows.size), yi[rows]].copy()
        Lr[np.arange(rows.size), yi[rows]] = -np.inf
        out[rows] = own - logsumexp(Lr, axis=1)
        return out

    def score_samples(self, X: np.ndarray, y: Any = None) -> np.ndarray:
        """``1 - p(given label)`` under the row's fold model (float64, higher = more
        suspicious); 0 for rows that are not scored (see the module docstring)."""
        if not hasattr(self, "threshold_"):
            raise NotFittedError("LabelMismatchDetector is not fitted: call fit")
        L, yi = self._logits(X, y)
        lo = self._self_log_odds(L, yi)
        return np.where(yi >= 0, expit(-np.nan_to_num(lo, nan=np.inf)), 0.0)

    def calibrate(self, X: np.ndarray, y: Any = None) -> "LabelMismatchDetector":
        """Median and lower half-MAD of the self-confidence log-odds on ``X``; sets
        ``threshold_ = 1 - sigmoid(median - threshold_z * sigma_lo)`` (1 when inactive)."""
        z = check_z(self.threshold_z)
        if not hasattr(self, "coef_"):
            raise NotFittedError("LabelMismatchDetector is not fitted: call fit")
        K = len(self.classes_)
        self.center_ = self.scale_ = 0.0
        self.scale_method_ = None
        self.n_calibration_ = 0
        self.calibration_flagged_ = 0
        self.class_flagged_ = np.zeros(K, dtype=np.int64)
        self.cl_thresholds_ = np.full(K, np.nan)
        self.cl_off_diagonal_ = 0
        self.threshold_ = 1.0
        if not self.active_:
            return self
        L, yi = self._logits(X, y)
        lo = self._self_log_odds(L, yi)
        scored = yi >= 0
        self.n_calibration_ = int(scored.sum())
        if self.n_calibration_ < 2:
            log.warning("label_mismatch: %d scored calibration rows; nothing is flagged",
                        self.n_calibration_)
            return self
        fit = robust_center_scale(lo[scored])
        self.center_ = fit.center
        self.scale_ = fit.scale_lower
        self.scale_method_ = fit.scale_method
        cut = fit.center - z * fit.scale_lower
        self.threshold_ = float(expit(-cut))
        flagged = scored & (expit(-np.nan_to_num(lo, nan=np.inf)) > self.threshold_)
        self.calibration_flagged_ = int(flagged.sum())
        self.class_flagged_ = np.bincount(yi[flagged], minlength=K).astype(np.int64)
        # confident learning's view (reported, not used to flag): per-class thresholds
        # t_j = mean p_j over the rows labelled j; off-diagonal rows have p_k >= t_k, k != y
        P = np.exp(L[scored] - logsumexp(L[scored], axis=1, keepdims=True))
        ys = yi[scored]
        t = np.array([P[ys == k, k].mean() if (ys == k).any() else np.nan for k in range(K)])
        above = P >= np.where(np.isnan(t), np.inf, t)
        above[np.arange(ys.size), ys] = False
        self.cl_thresholds_ = t
        self.cl_off_diagonal_ = int(above.any(axis=1).sum())
        return self

    # -- reporting and persistence ------------------------------------------------------
    def threshold_info(self) -> dict[str, Any]:
        if not hasattr(self, "threshold_"):
            raise NotFittedError("LabelMismatchDetector is not fitted")
        z = float(self.threshold_z)
        info: dict[str, Any] = {
            "rule": (
                "score = 1 - p(given label) under the row's fold model (logistic regression fitted "
                "on the other folds; fold = hash of the embedding); l = log(p / (1 - p)); flag when "
                "l < m - threshold_z * sigma_lo (m: median of l on the calibration sample, sigma_lo: "
                "1.4826 x the median of m - l over l <= m), i.e. score > threshold"
            ),
            "active": bool(self.active_),
            "threshold_z": z,
            "threshold": float(self.threshold_),
        }
        if not self.active_:
            info["note"] = f"no-op, every score is 0: {self.inactive_reason_}"
        info.update({
            "normal_tail_share": normal_tail(z, two_sided=False),
            "log_odds_center": float(self.center_),
            "log_odds_scale": float(self.scale_),
            "scale_method": self.scale_method_,
            "rows_calibration": int(self.n_calibration_),
            "flagged_calibration": int(self.calibration_flagged_),
            "n_folds": int(self.n_folds),
            "fold_rows": [int(v) for v in self.fold_rows_],
            "lbfgs_iterations": [int(v) for v in self.n_iter_],
            "classes": [
                {
                    "label": lab,
                    "rows_fit": int(self.class_counts_[k]),
                    "flagged_calibration": int(self.class_flagged_[k]),
                    "cl_threshold": None if np.isnan(self.cl_thresholds_[k]) else float(self.cl_thresholds_[k]),
                }
                for k, lab in enumerate(self.classes_)
            ],
            "unscored_labels": list(self.rare_labels_),
            "min_class_size": int(self.min_class_size),
            "confident_learning": {
                "off_diagonal_rows": int(self.cl_off_diagonal_),
                "note": (
                    "rows confident learning would call label issues (p_k >= t_k for some k != y, "
                    "t_k = mean p_k of the rows labelled k); natural label noise included, so not "
                    "used to flag"
                ),
            },
        })
        return info

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if not hasattr(self, "threshold_"):
            raise NotFittedError("LabelMismatchDetector is not fitted")
        meta = {
            "state_version": _STATE_VERSION,
            "n_features_in": int(self.n_features_in_),
            "active": bool(self.active_),
            "inactive_reason": self.inactive_reason_,
            "classes": list(self.classes_),
            "rare_labels": list(self.rare_labels_),
            "fold_seed": int(self.fold_seed_),
            "center": float(self.center_),
            "scale": float(self.scale_),
            "scale_method": self.scale_method_,
            "n_calibration": int(self.n_calibration_),
            "calibration_flagged": int(self.calibration_flagged_),
            "cl_off_diagonal": int(self.cl_off_diagonal_),
            "threshold": float(self.threshold_),
        }
        arrays = {
            "coef": self.coef_.copy(),
            "intercept": self.intercept_.copy(),
            "fold_classes": self.fold_classes_.copy(),
            "fold_rows": self.fold_rows_.copy(),
            "n_iter": self.n_iter_.copy(),
            "class_counts": self.class_counts_.copy(),
            "class_flagged": self.class_flagged_.copy(),
            "cl_thresholds": self.cl_thresholds_.copy(),
        }
        return meta, arrays

    @classmethod
    def from_state(
        cls, params: dict[str, Any], meta: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> "LabelMismatchDetector":
        if meta.get("state_version") != _STATE_VERSION:
            raise ValueError(f"unsupported label_mismatch state version {meta.get('state_version')!r}")
        det = cls(**params)
        d = int(meta["n_features_in"])
        classes = [str(c) for c in meta["classes"]]
        K, F = len(classes), int(det.n_folds)
        shapes = {
            "coef": ((F, K, d), np.float64), "intercept": ((F, K), np.float64),
            "fold_classes": ((F, K), bool), "fold_rows": ((F,), np.int64), "n_iter": ((F,), np.int64),
            "class_counts": ((K,), np.int64), "class_flagged": ((K,), np.int64),
            "cl_thresholds": ((K,), np.float64),
        }  # fmt: skip
        for key, (shape, dtype) in shapes.items():
            arr = np.asarray(arrays[key])
            if arr.shape != shape:
                raise ValueError(f"label_mismatch state: array {key!r} has shape {arr.shape}, expected {shape}")
            setattr(det, f"{key}_", arr.astype(dtype))
        det.n_features_in_ = d
        det.active_ = bool(meta["active"])
        det.inactive_reason_ = meta.get("inactive_reason")
        det.classes_ = classes
        det.rare_labels_ = [str(c) for c in meta.get("rare_labels", [])]
        det.fold_seed_ = int(meta["fold_seed"])
        det.center_ = float(meta["center"])
        det.scale_ = float(meta["scale"])
        det.scale_method_ = meta.get("scale_method")
        det.n_calibration_ = int(meta["n_calibration"])
        det.calibration_flagged_ = int(meta["calibration_flagged"])
        det.cl_off_diagonal_ = int(meta["cl_off_diagonal"])
        det.threshold_ = float(meta["threshold"])
        return det
