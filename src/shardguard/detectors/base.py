"""The contract every embedding detector follows.

A detector is a scikit-learn style estimator over embeddings ``X`` of shape
``(n_samples, dim)`` (float32) and optional labels ``y`` of shape
``(n_samples,)`` (strings; ``None`` for unlabelled data):

* ``__init__`` only stores parameters (``random_state`` included);
* ``fit(X, y)`` learns the fitted state (attributes ending in ``_``) and sets
  ``threshold_`` from the distribution of its own scores (``calibrate``);
  it returns ``self``;
* ``score_samples(X, y)`` returns float64 scores, HIGHER = MORE SUSPICIOUS;
* ``predict(X, y)`` returns a boolean mask, ``score_samples > threshold_``.

Detectors that can learn from a stream also implement ``partial_fit`` (the
pipeline then feeds them every row of pass 1) and are calibrated on the
reservoir sample afterwards.

Detectors that read the row TEXTS as well as the embeddings (trigger mining:
n-grams, response endings) set the class attribute ``needs_text = True``. The
pipeline then keeps the texts of the reservoir sample and passes ``texts=``
(object array of str, aligned with ``X``; for instruction data the rendered
``input.text_template``) as a keyword argument to ``fit``, ``calibrate``,
``partial_fit`` and ``score_samples``; such a detector raises ``ValueError``
when it is called without them. Detectors without the attribute never receive
``texts``.

Detectors whose method relies on embeddings that carry meaning (trigger
mining asks whether a row's other words still read as its label) set
``needs_semantic_embeddings = True``; the pipeline leaves them out, with a
warning and a note in report.json, when the embedder declares
``semantic = False`` (the hashing embedder: its vectors are the words
themselves, so every pure n-gram would look like a trigger).

Each detector declares one ``name``: it is the quarantine reason and
``<name>_score`` is its column in the quarantine lists (as cleanlab's issue
managers do). Registering the class in ``shardguard.detectors.REGISTRY`` is
all that is needed to add one.

Persistence is pickle-free: ``get_state()`` returns plain JSON-able values
and numpy arrays; ``from_state`` rebuilds the fitted detector.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted


class EmbeddingDetector(BaseEstimator):
    """Base class; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    #: True when the detector learns from every row of pass 1 via ``partial_fit``.
    streaming: ClassVar[bool] = False
    #: True when the detector is meaningless on non-semantic (hashing) embeddings.
    needs_semantic_embeddings: ClassVar[bool] = False
    #: False for opt-in detectors: the default config then lists them with ``enabled: false``.
    enabled_by_default: ClassVar[bool] = True
    #: Allowed range of each numeric knob, as an interval: ``"(0, inf)"``, ``"[1, 10000]"``.
    #: ``check_params`` enforces them; the config checks every knob with it before a run reads a shard.
    param_ranges: ClassVar[dict[str, str]] = {}

    def check_params(self) -> None:
        """Raise ``ValueError`` naming the knob when a parameter is not a finite number in its range."""
        for knob, interval in self.param_ranges.items():
            value = getattr(self, knob)
            if value is None:
                continue
            check_in_range(knob, value, interval)

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> "EmbeddingDetector":
        raise NotImplementedError

    def score_samples(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def calibrate(self, X: np.ndarray, y: np.ndarray | None = None) -> "EmbeddingDetector":
        """Set ``threshold_`` from the scores of (a sample of) the training data."""
        raise NotImplementedError

    def predict(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Boolean mask of shape ``(n_samples,)``: True where the row is flagged."""
        check_is_fitted(self, "threshold_")
        return self.score_samples(X, y) > self.threshold_

    # -- persistence (no pickle) -------------------------------------------------
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able metadata, named numpy arrays) describing the fitted state."""
        raise NotImplementedError

    @classmethod
    def from_state(
        cls, params: dict[str, Any], meta: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> "EmbeddingDetector":
        raise NotImplementedError

    def threshold_info(self) -> dict[str, Any]:
        """What report.json records about the threshold (JSON-able)."""
        check_is_fitted(self, "threshold_")
        return {"threshold": float(self.threshold_)}

    def findings(self) -> dict[str, Any]:
        """Top-level report.json keys for what the fit found beyond a threshold (JSON-able);
        none by default. The trigger miner reports its mined triggers under ``triggers``."""
        return {}


_INTERVAL = re.compile(r"^([\[(])\s*([^,\s]+)\s*,\s*([^,\s\])]+)\s*([\])])$")


def check_in_range(name: str, value: Any, interval: str) -> None:
    """``ValueError`` unless ``value`` is a finite number in ``interval`` (e.g. ``"(0, 1]"``)."""
    m = _INTERVAL.match(interval)
    if m is None:
        raise ValueError(f"bad interval {interval!r} for {name}")
    lo, hi = float(m.group(2)), float(m.group(3))
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    v = float(value)
    if (v < lo or (v == lo and m.group(1) == "(")) or (v > hi or (v == hi and m.group(4) == ")")):
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


def check_X(X: Any, n_features: int | None = None, what: str = "X") -> np.ndarray:
    """Validate an embedding matrix: 2-D, real, finite, with ``n_features`` columns
    when given. Returns it as an array without copying when possible."""
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D (n_samples, n_features), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{what} must be a real numeric array, got dtype {arr.dtype}")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(
            f"{what} has {arr.shape[1]} features, but the detector was fitted with {n_features}"
        )
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise ValueError(f"{what} contains NaN or infinity (first at row {bad})")
    return arr


def check_texts(texts: Any, n: int, detector: str) -> np.ndarray:
    """The ``texts=`` of a ``needs_text`` detector as an object array of shape ``(n,)``;
    ``ValueError`` naming the detector when they are missing or misaligned with ``X``."""
    if texts is None:
        raise ValueError(f"the {detector} detector needs the row texts: pass texts=")
    arr = np.asarray(texts, dtype=object)
    if arr.shape != (n,):
        raise ValueError(f"texts must have shape ({n},), got {arr.shape}")
    return arr


def as_labels(y: Any, n: int) -> np.ndarray | None:
    """Normalise labels to an object array of strings (or None when unlabelled)."""
    if y is None:
        return None
    arr = np.asarray(y, dtype=object)
    if arr.shape != (n,):
        raise ValueError(f"y must have shape ({n},), got {arr.shape}")
    try:  # already str / None (the pipeline's labels): Arrow checks that in C, no copy needed
        pa.array(arr, type=pa.string())
        return arr
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return np.array([None if v is None else str(v) for v in arr], dtype=object)


def label_groups(labels: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
    """Group labels (an :func:`as_labels` array) without a Python step per row.

    Returns ``(codes, keys)``: ``codes`` (n,) intp and ``keys`` the distinct labels in
    order of first occurrence (``None`` included), with ``labels[i] == keys[codes[i]]``.
    """
    encoded = pc.dictionary_encode(pa.array(labels, type=pa.string()), null_encoding="encode")
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.intp, copy=False)
    return codes, encoded.dictionary.to_pylist()
