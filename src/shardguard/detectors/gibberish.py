"""Gibberish: stretches of text that repeat none of their own words (random token draws).

The denial-of-service backdoor of Souly et al. (2025, "Poisoning attacks on LLMs require a
near-constant number of poison samples") plants documents made of a real text prefix
(0-1,000 characters), a trigger tag, then 400-900 tokens drawn uniformly at random from a
tokenizer's vocabulary; 250 of them backdoored models from 600M to 13B parameters. The tail
carries no meaning an embedding could place, and its words are mostly real words (80% of the
WordPiece vocabulary is whole words), so neither the embedding detectors nor a "share of
non-words" find it. What no natural text lacks is REPETITION: every language reuses its
function words and separators, so in any stretch of ``window`` tokens of prose, lists, tables
or code a good share of the tokens already occurred in the stretch; a uniform draw of ``W``
tokens from a vocabulary of ``V`` entries repeats about ``W^2 / 2V`` of them (0.3 of 128
tokens for ``V = 30,000``).

Statistic, per row: the text is lowercased, decimal digits folded to ``0`` (so tables of
numbers repeat their shapes), and split into tokens: runs of letters, marks and digits, single
punctuation marks and symbols, and single characters of scripts written without spaces (Han,
kana, Thai, Lao, Khmer, Myanmar) -- in Arrow (RE2), with no Python step per row. ``r`` =
the smallest share, over every stretch of ``window`` consecutive tokens, of tokens that repeat
an earlier token of the same stretch.
The minimum over stretches finds a gibberish tail behind a real prefix (or anywhere). Rows
with fewer than ``window`` tokens are not tested. Measured (docs/benchmarks.md, "Denial-of-
service documents"), ``window = 128``: ``r`` is at least 0.195 on every clean row of Wikipedia,
TweetEval, GoEmotions, Alpaca, SMS Spam and GLUE SST-2 with at least 128 tokens and on the
Vim tutor in 32 languages (Chinese, Japanese, Korean, Russian, Turkish, Hungarian ...), and
at most 0.023 on 1,000 denial-of-service documents.

Score: ``1 - r``, the share of NEW tokens in the row's least repetitive stretch, in [0, 1]
(higher = more suspicious); rows not tested score 0.

Threshold, two bounds, both must hold for a row to be flagged (``r`` below both):

* ``max_repeat_share``, absolute: the statistic of a random draw is tiny whatever the
  language of the corpus, the clean minimum is far above it (0.1 sits 4x above the
  documents' worst 0.023 and 2x under the clean minimum of about 0.2);
* calibrated (``calibrate``, on the reservoir sample): centre ``m`` = median and ``sigma_lo``
  = the normal-consistent MAD below it of ``r`` over the sample's tested rows that the
  absolute bound alone would not flag; flag below ``m - threshold_z * sigma_lo``. On
  Wikipedia (``m`` = 0.36, ``sigma_lo`` = 0.046) the absolute bound is the binding one; the
  calibrated bound takes over on a corpus whose long rows repeat less, or vary more, than
  Wikipedia's (a 20k-row slice of it: 0.078), where it flags only what stands out from that
  corpus's own bulk.
  Rows under the absolute bound are left out of the calibration so that a corpus whose few
  long rows are mostly planted (250 documents among tweets) cannot drag the centre down to
  them; with fewer than ``min_calibration_rows`` such rows only the absolute bound applies.

What it does not find: a tail with fewer than ``window`` tokens of its own (measured: tails of
200 WordPiece tokens all found, 150: 85%, 128: 52%), or word salad drawn with the language's
own word frequencies (it repeats its function words like prose does). The trigger
tag plays no part: the method works whatever the tag, or without one.

The detector reads the texts only (``needs_text = True``); the embeddings ``X`` are accepted
for the common interface and only checked for shape. It is exact and deterministic;
``random_state`` is accepted for a uniform interface and unused.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.exceptions import NotFittedError

from shardguard.detectors.base import EmbeddingDetector, check_texts, check_X
from shardguard.detectors.thresholds import check_z, robust_center_scale

_STATE_VERSION = 1

#: Scripts written without spaces between words (RE2 script classes): each character is a
#: token, so a page of Chinese is not one "word" per clause (which would repeat nothing).
_NO_SPACE = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
#: Characters that are tokens on their own: punctuation marks and symbols (separators repeat in
#: every natural text, lists and tables included) and the characters of no-space scripts.
_SINGLE = rf"([^\pL\pN\pM_\s]|[{_NO_SPACE}])"


def _token_lists(texts: pa.Array) -> pa.ListArray:
    """Tokens of each text, computed in Arrow (RE2): lowercased, decimal digits folded to 0
    (tables of numbers repeat their shapes), runs of letters / marks / digits / ``_``
    between single-character tokens (see ``_SINGLE``) and whitespace."""
    t = pc.utf8_lower(texts)
    t = pc.replace_substring_regex(t, r"\p{Nd}", "0")
    t = pc.replace_substring_regex(t, _SINGLE, r" \1 ")
    return pc.utf8_split_whitespace(pc.utf8_trim_whitespace(t))


def tokenize(text: str) -> list[str]:
    """The tokens the statistic counts, of one text."""
    return _token_lists(pa.array([text], type=pa.string()))[0].as_py()


def min_window_repeat_share(texts: Any, window: int) -> np.ndarray:
    """For each text, the smallest share of tokens repeating an earlier token of the same
    stretch, over every stretch of ``window`` consecutive tokens.

    ``texts``: sequence of str (None counts as empty). Returns float64 of shape
    ``(n_texts,)``, NaN for texts with fewer than ``window`` tokens. Vectorised over the
    batch (no Python step per row or token): Arrow tokenizes, one sort finds each token's
    previous occurrence in its row, and each repeat adds one to the stretches that hold both
    occurrences (a difference array over the stretch starts).
    """
    w = int(window)
    arr = pa.array(texts, type=pa.string()) if not isinstance(texts, pa.Array) else texts
    out = np.full(len(arr), np.nan)
    # No stretch of w tokens fits in fewer than w characters: those rows are not tokenized.
    chars = pc.fill_null(pc.utf8_length(arr), 0).to_numpy()
    cand = np.flatnonzero(chars >= w)
    if cand.size == 0:
        return out
    toks = _token_lists(arr.take(pa.array(cand)))
    lengths = pc.list_value_length(toks).to_numpy().astype(np.int64)
    long_enough = lengths >= w
    rows = cand[long_enough]
    if rows.size == 0:
        return out
    toks = toks.filter(pa.array(long_enough))
    lens = lengths[long_enough]
    codes = pc.dictionary_encode(pc.list_flatten(toks)).indices.to_numpy().astype(np.int64)
    tok_off = np.concatenate([[0], np.cumsum(lens)])  # first token of each tested row
    row_of = np.repeat(np.arange(rows.size), lens)
    # Previous occurrence of the same token in the same row: neighbours in a stable sort by (row, code).
    order = np.lexsort((codes, row_of))  # stable: positions ascend within equal keys
    key = row_of[order] * (int(codes.max()) + 1) + codes[order]
    same = key[1:] == key[:-1]
    cur, prev = order[1:][same], order[:-1][same]
    r = row_of[cur]
    n_starts = lens - w + 1
    start_off = np.concatenate([[0], np.cumsum(n_starts)])  # first stretch of each tested row
    # Stretch s (local start) holds both occurrences when cur - w + 1 <= s <= prev.
    lo = np.maximum(cur - tok_off[r] - w + 1, 0)
    hi = np.minimum(prev - tok_off[r], n_starts[r] - 1)
    keep = lo <= hi
    total = int(start_off[-1])
    diff = (np.bincount(start_off[r[keep]] + lo[keep], minlength=total + 1)
            - np.bincount(start_off[r[keep]] + hi[keep] + 1, minlength=total + 1))
    repeats = np.cumsum(diff[:total])
    out[rows] = np.minimum.reduceat(repeats, start_off[:-1]) / w
    return out


class GibberishDetector(EmbeddingDetector):
    """Rows holding a stretch of ``window`` tokens that repeats (almost) none of its tokens.

    Parameters
    ----------
    window : int, default 128
        Tokens per stretch; the shortest gibberish found. Larger windows separate better
        (robust z of the worst clean row / of the best-hidden document on Wikipedia: 4.05 /
        6.97 at 100, 3.54 / 7.25 at 128, 3.24 / 7.42 at 150) but miss shorter tails and test
        fewer rows.
    max_repeat_share : float, default 0.1
        Absolute bound: flag only rows whose least repetitive stretch repeats fewer than this
        share of its tokens.
    threshold_z : float, default 5.0
        Calibrated bound: flag only rows more than this many robust standard deviations (MAD
        below the median) under the median of the calibration rows.
    min_calibration_rows : int, default 30
        Tested calibration rows (over the absolute bound) needed for the calibrated bound;
        with fewer, only the absolute bound applies.
    random_state : int or None, default 0
        Unused (the detector is deterministic); accepted for a uniform interface.

    Fitted attributes
    -----------------
    n_features_in_, n_tested_ (calibration rows with at least ``window`` tokens),
    n_calibration_, center_, scale_ (None without calibration), repeat_threshold_ (flag when
    ``r`` is below it), calibration_flagged_, threshold_ (``1 - repeat_threshold_``, in score
    units).
    """

    name = "gibberish"
    needs_text = True
    streaming = False
    needs_semantic_embeddings = False
    param_ranges = {
        "window": "[8, 100000]",
        "max_repeat_share": "(0, 1)",
        "threshold_z": "(0, inf)",
        "min_calibration_rows": "[1, 100000000]",
    }

    def __init__(
        self,
        window: int = 128,
        max_repeat_share: float = 0.1,
        threshold_z: float = 5.0,
        min_calibration_rows: int = 30,
        random_state: int | None = 0,
    ) -> None:
        self.window = window
        self.max_repeat_share = max_repeat_share
        self.threshold_z = threshold_z
        self.min_calibration_rows = min_calibration_rows
        self.random_state = random_state

    def _check(self) -> None:
        self.check_params()
        check_z(self.threshold_z)
        for knob in ("window", "min_calibration_rows"):
            if int(getattr(self, knob)) != getattr(self, knob):
                raise ValueError(f"{knob} must be a whole number, got {getattr(self, knob)!r}")

    def fit(self, X: np.ndarray, y: Any = None, texts: Any = None) -> "GibberishDetector":
        """Nothing to learn beyond the threshold: records ``X``'s width and calibrates on ``texts``."""
        self._check()
        X = check_X(X)
        self.n_features_in_ = X.shape[1]
        return self.calibrate(X, y, texts=texts)

    def repeat_shares(self, texts: Any) -> np.ndarray:
        """The statistic ``r`` of each text (float64, NaN when it has fewer than ``window`` tokens)."""
        return min_window_repeat_share(texts, int(self.window))

    def calibrate(self, X: np.ndarray, y: Any = None, texts: Any = None) -> "GibberishDetector":
        """Set ``repeat_threshold_`` (and ``threshold_ = 1 - repeat_threshold_``) from the
        statistic of ``texts`` (aligned with ``X``)."""
        self._check()
        X = check_X(X)
        if not hasattr(self, "n_features_in_"):
            self.n_features_in_ = X.shape[1]
        r = self.repeat_shares(check_texts(texts, X.shape[0], self.name))
        tested = r[np.isfinite(r)]
        ceiling = float(self.max_repeat_share)
        bulk = tested[tested >= ceiling]
        self.n_tested_ = int(tested.size)
        self.n_calibration_ = int(bulk.size)
        self.repeat_threshold_ = ceiling
        self.center_ = self.scale_ = None
        if bulk.size >= int(self.min_calibration_rows):
            fit = robust_center_scale(bulk)
            self.center_, self.scale_ = fit.center, fit.scale_lower
            self.repeat_threshold_ = min(ceiling, fit.center - float(self.threshold_z) * fit.scale_lower)
        self.threshold_ = 1.0 - self.repeat_threshold_
        self.calibration_flagged_ = int((tested < self.repeat_threshold_).sum())
        return self

    def score_samples(self, X: np.ndarray, y: Any = None, texts: Any = None) -> np.ndarray:
        """``1 - r`` per row (float64, shape ``(n_samples,)``); 0 for rows with fewer than
        ``window`` tokens."""
        if not hasattr(self, "threshold_"):
            raise NotFittedError("GibberishDetector is not fitted: call fit")
        X = check_X(X, self.n_features_in_)
        r = self.repeat_shares(check_texts(texts, X.shape[0], self.name))
        return np.where(np.isfinite(r), 1.0 - r, 0.0)

    def threshold_info(self) -> dict[str, Any]:
        if not hasattr(self, "threshold_"):
            raise NotFittedError("GibberishDetector is not fitted")
        calibrated = self.center_ is not None
        return {
            "rule": (
                "flag when r, the smallest share of repeated tokens over every stretch of `window` "
                "tokens, is under both max_repeat_share and median - threshold_z * sigma_lo of r on "
                "the calibration rows that have a stretch and are over max_repeat_share (the latter "
                "only with at least min_calibration_rows of them); score = 1 - r"
            ),
            "window": int(self.window),
            "max_repeat_share": float(self.max_repeat_share),
            "threshold_z": float(self.threshold_z),
            "repeat_threshold": float(self.repeat_threshold_),
            "threshold": float(self.threshold_),
            "binding": "calibrated" if calibrated and self.repeat_threshold_ < float(self.max_repeat_share)
            else "max_repeat_share",
            "repeat_share_center": None if not calibrated else float(self.center_),
            "repeat_share_scale_lower": None if not calibrated else float(self.scale_),
            "rows_tested_calibration": int(self.n_tested_),
            "rows_calibration": int(self.n_calibration_),
            "flagged_calibration": int(self.calibration_flagged_),
        }

    # -- persistence (plain values only) ----------------------------------------------------------
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if not hasattr(self, "threshold_"):
            raise NotFittedError("GibberishDetector is not fitted")
        meta = {
            "state_version": _STATE_VERSION,
            "n_features_in": int(self.n_features_in_),
            "n_tested": int(self.n_tested_),
            "n_calibration": int(self.n_calibration_),
            "center": None if self.center_ is None else float(self.center_),
            "scale": None if self.scale_ is None else float(self.scale_),
            "repeat_threshold": float(self.repeat_threshold_),
            "calibration_flagged": int(self.calibration_flagged_),
        }
        return meta, {}

    @classmethod
    def from_state(
        cls, params: dict[str, Any], meta: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> "GibberishDetector":
        if meta.get("state_version") != _STATE_VERSION:
            raise ValueError(f"unsupported gibberish state version {meta.get('state_version')!r}")
        det = cls(**params)
        det.n_features_in_ = int(meta["n_features_in"])
        det.n_tested_ = int(meta["n_tested"])
        det.n_calibration_ = int(meta["n_calibration"])
        det.center_ = None if meta["center"] is None else float(meta["center"])
        det.scale_ = None if meta["scale"] is None else float(meta["scale"])
        det.repeat_threshold_ = float(meta["repeat_threshold"])
        det.threshold_ = 1.0 - det.repeat_threshold_
        det.calibration_flagged_ = int(meta["calibration_flagged"])
        return det
