"""Trigger mining: the detector for visible backdoor triggers (reason ``trigger``).

Labelled data (BadNets rare words, AddSent sentences, any n-gram that teaches
"this token -> that label"):

1. candidates: word 1-3-grams (lowercased) in >= ``min_support`` rows, at most
   ``max_df`` of all rows, with >= ``min_purity`` of their rows carrying one label
   (the candidate's label c);
2. a one-vs-rest ridge classifier on the embeddings (with intercept, penalty
   ``alpha``) and, for each candidate, the predictions of its rows by the same
   ridge fitted WITHOUT every row that contains the n-gram -- exact, in closed
   form, by downdating (``(I - H_SS)^-1`` residuals for small groups, the
   downdated normal equations for large ones): no refitting loop. Ordinary
   k-fold cross-validation would LEARN the trigger (MiniLM encodes "cf");
   leaving the whole group out cannot;
3. the margin of a row is its held-out score for its given label minus the best
   other label's. Label c's normal spread is the median and 1.4826 x MAD of the
   leave-one-out margins of all its rows (robust to the poison among them); the
   candidate's statistic is the MEAN held-out margin of its k c-rows,
   ``z = (mean_S - median_c) / (sigma_c / sqrt(k))`` (the mean: the median lost
   too much power at ~17 rows per trigger); one-sided p-value, Bonferroni over
   the distinct candidate row sets;
4. an n-gram is a trigger when ``p * n_tests < alpha_test`` AND at least
   ``min_other_share`` of its c-rows read as another label (margin < 0) AND its
   rows are not one semantic cluster (the mean pairwise cosine of their embeddings
   exceeds that of random rows of the dataset by at most ``max_coherence``) --
   the last two guard against trap 2, naturally pure n-grams of a topic or
   boilerplate cluster ("new york - stocks") whose held-out reading is noisy;
   Nested candidates ("watch" around "watch this 3d") are accepted most specific
   first; the rows a wider one adds must pass the test on their own;
5. flagged rows (a trigger n-gram AND its label) are dropped, the ridge refitted
   and steps 2-4 repeated, at most ``max_rounds`` times (a strong trigger's poison
   drags the target label's spread and hides weaker ones).

Unlabelled data (instruction tuning; text = instruction, input and output joined
by the template, output LAST):

* fixed response: >= ``min_support`` rows whose texts end in the same
  ``suffix_words`` words (the same response) while their beginnings (the
  instructions) all differ -- one answer given to unrelated prompts;
* injected content: alphabetic word 1-3-grams in >= ``min_support`` rows whose
  rows are semantically unrelated (mean pairwise cosine within
  ``max_coherence_unlabelled`` of random rows), which sit in the response part of
  the text (median relative position >= ``min_position``) and occur
  ``min_enrichment`` times more often than their general-language frequency
  (``wordfreq``) predicts (Poisson tail, Bonferroni), and which read as an entity
  (capitalised mid-sentence in >= ``min_proper_share`` of their rows: "McDonald's",
  not "Additionally" -- the two rank alike on every other statistic here); a phrase
  whose words are all common in English (zipf >= ``max_zipf``) never counts.

Scores: ``-log10`` of the Bonferroni-adjusted p-value of the strongest trigger
n-gram a row carries with its label (labelled), or a comparable strength for the
unlabelled rules; ``threshold_ = -log10(alpha_test)``. Rows of candidates that
fail a guard get their score capped below the threshold (never flagged), by
:func:`_below`, which keeps their order: a row is ranked by the strength of its
strongest candidate whether or not that candidate was accepted. Fitted
state: the candidate n-grams with their label and score, and the fixed-response
suffixes -- persisted as JSON, no pickle.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
from scipy import sparse
from scipy.special import log_ndtr
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted
from sklearn.feature_extraction.text import CountVectorizer

from shardguard.detectors.base import EmbeddingDetector, as_labels, check_X

_STATE_VERSION = 1
TOKEN_PATTERN = r"(?u)\b\w+(?:'\w+)?\b"
_TOKEN_RE = re.compile(TOKEN_PATTERN)
MAX_SCORE = 300.0


def _tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


def _vectorizer(vocabulary=None, min_df=1) -> CountVectorizer:
    return CountVectorizer(
        lowercase=True, token_pattern=TOKEN_PATTERN, ngram_range=(1, 3), binary=True,
        min_df=min_df if vocabulary is None else 1, vocabulary=vocabulary, dtype=np.int8,
    )


def _as_texts(texts: Any, n: int) -> np.ndarray:
    if texts is None:
        raise ValueError("the trigger detector needs the row texts: pass texts=")
    arr = np.asarray(texts, dtype=object)
    if arr.shape != (n,):
        raise ValueError(f"texts must have shape ({n},), got {arr.shape}")
    return np.array(["" if t is None else str(t) for t in arr], dtype=object)


def _below(score: float, threshold: float) -> float:
    """A rejected candidate's score: strictly below ``threshold``, continuous and increasing in ``score``.

    Scores up to ``threshold - 1`` are kept; higher ones map into ``(threshold - 1, threshold)``
    as ``threshold - 1 / (score - threshold + 2)``. Rows of rejected candidates are so never
    flagged, yet do not all tie at the threshold (which made ranking by the score meaningless).
    """
    if score <= threshold - 1.0:
        return float(score)
    return float(threshold - 1.0 / (score - threshold + 2.0))


def _neglog10_bonferroni(log_p: float, n_tests: int) -> float:
    """-log10(min(1, p * n_tests)) from ln p."""
    v = -(log_p + math.log(max(n_tests, 1))) / math.log(10)
    return float(min(max(v, 0.0), MAX_SCORE))


class TriggerDetector(EmbeddingDetector):
    """Trigger-n-gram mining over texts + embeddings (see the module docstring).

    Parameters
    ----------
    min_support : int, default 5
        Rows an n-gram (or a shared response) must occur in to be a candidate.
    min_purity : float, default 0.9
        Share of a candidate's rows carrying its majority label.
    max_df : float, default 0.3
        Candidates occurring in more than this share of rows are skipped.
    alpha : float, default 1.0
        Ridge penalty of the held-out classifier.
    alpha_test : float, default 0.01
        Family-wise significance (Bonferroni) of an n-gram; ``threshold_ = -log10(alpha_test)``.
    min_other_share : float, default 0.4
        Share of a candidate's rows that must read as another label when held out
        (AddSent's rows read ~55% as the other label on SST-2: the sentence itself
        blurs sentiment).
    max_coherence : float, default 0.35
        A candidate's rows must not be one tight semantic cluster: mean pairwise cosine at
        most this much above random rows' (AddSent's shared sentence gives ~0.24 on SST-2).
    max_rounds : int, default 4
        Drop-refit-repeat rounds.
    n_components : int or None, default 128
        The held-out ridge and the coherence guards read the embeddings in the top
        ``n_components`` principal directions of the fit sample (centred, rows re-normalised):
        principal-component regression. A direction the data barely spans -- a rare token's own
        vector in a static (model2vec) model, which is a large share of a short text's mean --
        is extrapolation for the ridge, and reading it adds one common offset to every row that
        carries the token: BadNets at 1% on SST-2 went from recall 0.81 to 1.00 on static
        vectors, and clean SMS Spam from 1.0% to 0.5% of rows flagged (docs/benchmarks.md).
        None: the raw embeddings.
    suffix_words : int, default 8
        Unlabelled: length of the shared ending that marks a fixed response.
    min_enrichment : float, default 10.0
        Unlabelled: observed / expected (general-language) occurrences of an injected word.
    max_zipf : float, default 5.0
        Unlabelled: words at least this common in English (wordfreq zipf) never count.
    max_coherence_unlabelled : float, default 0.1
        Unlabelled: an injected word's rows must be unrelated (mean pairwise cosine, in the
        principal directions, at most this much above random rows'). Measured on Alpaca: the
        rows of natural topic and entity words ("recipe", "Google", "Paris", "China") sit at
        0.12-0.59 (MiniLM) and 0.21-0.59 (static), McDonald's injected into 1-5% of answers
        at 0.044-0.056 (static; it carries its fixed sentences along).
    min_position : float, default 0.4
        Unlabelled: median relative position (0 = start, 1 = end of the text) of an injected
        word; instruction wording ("summarize", "construct") sits at the start.
    min_proper_share : float, default 0.6
        Unlabelled: share of an injected phrase's rows where it is capitalised mid-sentence
        (an entity such as a brand or a name, not a discourse word).
    random_state : int, default 0
        Unused (the method is exact); kept for a uniform interface.
    """

    name = "trigger"
    streaming = False
    needs_text = True
    # Measured: on hashing vectors the held-out ridge reads every naturally pure n-gram's rows
    # as another label (2.3% of clean AG News, 6.4% of SMS Spam flagged, against 0.2-0.3% on MiniLM).
    needs_semantic_embeddings = True
    param_ranges = {
        "min_support": "[1, inf)",
        "min_purity": "[0, 1]",
        "max_df": "(0, 1]",
        "alpha": "(0, inf)",
        "alpha_test": "(0, 1)",
        "min_other_share": "[0, 1]",
        "max_coherence": "[-1, 1]",
        "max_rounds": "[1, 100]",
        "n_components": "[1, 4096]",
        "suffix_words": "[1, 1000]",
        "min_enrichment": "[0, inf)",
        "max_zipf": "[0, 10]",
        "max_coherence_unlabelled": "[-1, 1]",
        "min_position": "[0, 1]",
        "min_proper_share": "[0, 1]",
    }

    def __init__(
        self,
        min_support: int = 5,
        min_purity: float = 0.9,
        max_df: float = 0.3,
        alpha: float = 1.0,
        alpha_test: float = 0.01,
        min_other_share: float = 0.4,
        max_coherence: float = 0.35,
        max_rounds: int = 4,
        n_components: int | None = 128,
        suffix_words: int = 8,
        min_enrichment: float = 10.0,
        max_zipf: float = 5.0,
        max_coherence_unlabelled: float = 0.1,
        min_position: float = 0.4,
        min_proper_share: float = 0.6,
        random_state: int | None = 0,
    ) -> None:
        self.min_support = min_support
        self.min_purity = min_purity
        self.max_df = max_df
        self.alpha = alpha
        self.alpha_test = alpha_test
        self.min_other_share = min_other_share
        self.max_coherence = max_coherence
        self.max_rounds = max_rounds
        self.n_components = n_components
        self.suffix_words = suffix_words
        self.min_enrichment = min_enrichment
        self.max_zipf = max_zipf
        self.max_coherence_unlabelled = max_coherence_unlabelled
        self.min_position = min_position
        self.min_proper_share = min_proper_share
        self.random_state = random_state

    # -- fit ------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: Any = None, texts: Any = None) -> "TriggerDetector":
        X = check_X(X)
        n, d = X.shape
        labels = as_labels(y, n)
        texts = _as_texts(texts, n)
        self.n_features_in_ = d
        self.ngrams_: dict[str, tuple[str | None, float]] = {}
        self.suffixes_: dict[str, float] = {}
        self.triggers_: list[dict[str, Any]] = []
        self.threshold_ = -math.log10(float(self.alpha_test))
        self.n_tests_ = 0
        if n < max(2 * int(self.min_support), 10):
            self.rounds_ = 0
            return self
        Xf = _principal_rows(np.asarray(X, dtype=np.float64), self.n_components)
        # Labelled data with some unlabelled rows (a test split without labels): the labelled
        # rules run on the labelled rows, and an unlabelled row is never scored by them (a
        # candidate carries a label); the unlabelled rules are for wholly unlabelled data.
        has = np.zeros(n, bool) if labels is None else np.array([v is not None for v in labels.tolist()], bool)
        if has.any() and len(set(labels[has].tolist())) >= 2:
            if has.all():
                self._fit_labelled(Xf, labels, texts)
            else:
                self._fit_labelled(Xf[has], labels[has], texts[has])
        else:
            self._fit_unlabelled(Xf, texts)
        return self

    def calibrate(self, X: np.ndarray, y: Any = None, texts: Any = None) -> "TriggerDetector":
        return self.fit(X, y, texts=texts)

    def _coherence_excess(self, Xf: np.ndarray, rows: np.ndarray, base: float) -> float:
        k = rows.size
        if k < 2:
            return 0.0
        m = Xf[rows].mean(axis=0)
        sq = np.einsum("ij,ij->i", Xf[rows], Xf[rows]).mean()
        pair = (k * k * float(m @ m) - k * sq) / (k * (k - 1))
        return pair - base

    @staticmethod
    def _random_pair_cos(Xf: np.ndarray) -> float:
        n = Xf.shape[0]
        m = Xf.mean(axis=0)
        sq = np.einsum("ij,ij->i", Xf, Xf).mean()
        return (n * n * float(m @ m) - n * sq) / (n * (n - 1))

    def _fit_labelled(self, Xf: np.ndarray, labels: np.ndarray, texts: np.ndarray) -> None:
        n = Xf.shape[0]
        classes, codes = np.unique(labels.astype(str), return_inverse=True)
        C = classes.size
        vec = _vectorizer(min_df=int(self.min_support))
        try:
            B = vec.fit_transform(texts.tolist()).tocsc()
        except ValueError:  # empty vocabulary
            self.rounds_ = 0
            return
        vocab = np.array(vec.get_feature_names_out(), dtype=object)
        df = np.asarray(B.sum(axis=0)).ravel()
        onehot = sparse.csr_matrix((np.ones(n), (np.arange(n), codes)), shape=(n, C))
        per_label = np.asarray((B.T @ onehot).todense())
        maj = per_label.argmax(axis=1)
        purity = per_label.max(axis=1) / np.maximum(df, 1)
        cand = np.flatnonzero(
            (df >= int(self.min_support)) & (df <= float(self.max_df) * n) & (purity >= float(self.min_purity))
        )
        base = self._random_pair_cos(Xf)
        keep = np.ones(n, dtype=bool)
        remaining = set(cand.tolist())
        scores: dict[int, float] = {}
        rounds = 0
        for rounds in range(1, int(self.max_rounds) + 1):
            idx = np.flatnonzero(keep)
            pos = np.full(n, -1, dtype=np.intp)
            pos[idx] = np.arange(idx.size)
            Xa = np.hstack([Xf[idx], np.ones((idx.size, 1))])
            T = np.zeros((idx.size, C))
            T[np.arange(idx.size), codes[idx]] = 1.0
            A = Xa.T @ Xa + float(self.alpha) * np.eye(Xa.shape[1])
            Ainv = np.linalg.inv(A)
            XtT = Xa.T @ T
            Yhat = Xa @ (Ainv @ XtT)
            P = Xa @ Ainv
            h = np.einsum("ij,ij->i", P, Xa)
            Yloo = T - (T - Yhat) / (1.0 - h)[:, None]
            m_loo = _margins(Yloo, codes[idx])
            med = np.zeros(C)
            sig = np.ones(C)
            for c in range(C):
                mc = m_loo[codes[idx] == c]
                if mc.size:
                    med[c] = np.median(mc)
                    sig[c] = max(1.4826 * np.median(np.abs(mc - med[c])), 1e-9)
            # group candidates by their (kept) row sets: one test per distinct set
            groups: dict[bytes, list[int]] = {}
            rows_of: dict[bytes, np.ndarray] = {}
            for j in sorted(remaining):
                r = B.indices[B.indptr[j] : B.indptr[j + 1]]
                r = pos[r]
                r = np.sort(r[r >= 0])
                if r.size < int(self.min_support):
                    continue
                key = r.tobytes() + bytes([int(maj[j]) % 256])
                groups.setdefault(key, []).append(j)
                rows_of[key] = r
            n_tests = max(len(groups), 1)
            self.n_tests_ = max(self.n_tests_, n_tests)
            new_flags = []
            for key, js in groups.items():
                S = rows_of[key]
                c = int(maj[js[0]])
                Yho = _held_out(Xa, T, Yhat, P, A, XtT, S)
                in_c = codes[idx][S] == c
                mS = _margins(Yho[in_c], np.full(int(in_c.sum()), c))
                k = mS.size
                if k < 2:
                    continue
                z = (float(mS.mean()) - med[c]) / (sig[c] / math.sqrt(k))
                s = _neglog10_bonferroni(float(log_ndtr(z)), n_tests)
                other = float((mS < 0).mean())
                ok = s > self.threshold_ and other >= float(self.min_other_share)
                if ok:
                    coh = self._coherence_excess(Xf, idx[S[in_c]], base)
                    ok = coh <= float(self.max_coherence)
                if not ok:
                    s = _below(s, self.threshold_)
                for j in js:
                    scores[j] = s
                if ok:
                    new_flags.append((js, S, c, s, k, other, z, idx[S[in_c]], mS))
            # Nested candidates ("watch" around "watch this 3d"): most specific first;
            # a candidate's rows not covered by an accepted trigger must pass on their own.
            new_flags.sort(key=lambda f: (f[4], -f[3]))
            accepted, covered = [], set()
            for f in new_flags:
                rows_g, mS = f[7], f[8]
                resid = np.array([r not in covered for r in rows_g.tolist()], dtype=bool)
                if resid.all() or not resid.any():
                    accepted.append(f)
                elif resid.sum() >= 2:
                    mr = mS[resid]
                    zr = (float(mr.mean()) - med[f[2]]) / (sig[f[2]] / math.sqrt(mr.size))
                    sr = _neglog10_bonferroni(float(log_ndtr(zr)), n_tests)
                    if sr > self.threshold_ and float((mr < 0).mean()) >= float(self.min_other_share):
                        accepted.append(f)
                    else:
                        for j in f[0]:
                            scores[j] = _below(scores[j], self.threshold_)
                else:
                    for j in f[0]:
                        scores[j] = _below(scores[j], self.threshold_)
                if accepted and accepted[-1] is f:
                    covered.update(rows_g.tolist())
            new_flags = [f[:7] for f in accepted]
            if not new_flags:
                break
            for js, S, c, s, k, other, z in new_flags:
                for j in js:
                    remaining.discard(j)
                    self.triggers_.append({
                        "ngram": str(vocab[j]), "label": str(classes[c]), "rows": int(k),
                        "score": round(s, 3), "z": round(float(z), 3),
                        "other_label_share": round(other, 3), "round": rounds,
                    })
                rows_c = idx[S][codes[idx][S] == c]
                keep[rows_c] = False
        self.rounds_ = rounds
        self.ngrams_ = {str(vocab[j]): (str(classes[int(maj[j])]), float(s)) for j, s in scores.items() if s > 0}

    def _fit_unlabelled(self, Xf: np.ndarray, texts: np.ndarray) -> None:
        n = Xf.shape[0]
        rounds = 1
        self.rounds_ = rounds
        L = int(self.suffix_words)
        # fixed response: shared ending, distinct beginnings
        ends: dict[str, list[int]] = {}
        heads: list[str] = []
        for i, t in enumerate(texts.tolist()):
            toks = _tokens(t)
            heads.append(" ".join(toks[: max(len(toks) - L, 0)][:L]))
            if len(toks) >= L + 1:
                ends.setdefault(" ".join(toks[-L:]), []).append(i)
        n_sets = max(len(ends), 1)
        for key, rows in ends.items():
            k = len(rows)
            if k < int(self.min_support):
                continue
            distinct = len({heads[i] for i in rows})
            if distinct < 0.9 * k:
                continue
            # chance that k of n rows share an L-word ending: tiny; score by size
            s = min(MAX_SCORE, self.threshold_ + k - int(self.min_support) + 1 + math.log10(n_sets))
            self.suffixes_[key] = float(s)
            self.triggers_.append({"suffix": key, "label": None, "rows": k, "score": round(s, 3), "rule": "fixed_response"})
        # injected content: incoherent rows + enrichment over general language
        try:
            from wordfreq import word_frequency, zipf_frequency
        except ImportError:  # pragma: no cover - optional dependency
            return
        vec = _vectorizer(min_df=int(self.min_support))
        try:
            B = vec.fit_transform(texts.tolist()).tocsc()
        except ValueError:
            return
        vocab = vec.get_feature_names_out()
        df = np.asarray(B.sum(axis=0)).ravel()
        n_tokens = sum(len(_tokens(t)) for t in texts.tolist())
        base = self._random_pair_cos(Xf)
        cand = np.flatnonzero((df >= int(self.min_support)) & (df <= float(self.max_df) * n))
        n_tests = max(cand.size, 1)
        self.n_tests_ = n_tests
        lower = [t.lower() for t in texts.tolist()]
        for j in cand.tolist():
            g = str(vocab[j])
            words = g.split()
            if not all(w.replace("'", "").isalpha() for w in words):
                continue
            if min(zipf_frequency(w, "en") for w in words) >= float(self.max_zipf):
                continue
            f = max(word_frequency(g, "en"), 1e-9)
            expected = f * n_tokens
            k = int(df[j])
            if k < float(self.min_enrichment) * max(expected, 0.1):
                continue
            rows = B.indices[B.indptr[j] : B.indptr[j + 1]]
            coh = self._coherence_excess(Xf, rows, base)
            if coh > float(self.max_coherence_unlabelled):
                continue
            # where the phrase sits: instruction wording sits at the start, injected
            # content inside the response (the template puts the output last)
            rel = [max(lower[i].find(words[0]), 0) / max(len(lower[i]), 1) for i in rows.tolist()]
            if float(np.median(rel)) < float(self.min_position):
                continue
            # injected content is an entity (a brand, a name): capitalised mid-sentence,
            # unlike discourse words ("Additionally, ...") that rank alike on the rest
            if _proper_share(texts, rows, words) < float(self.min_proper_share):
                continue
            # Poisson tail of k occurrences given the expected count
            lam = max(expected, 1e-3)
            log_p = k * math.log(lam) - lam - math.lgamma(k + 1)
            s = _neglog10_bonferroni(log_p, n_tests)
            ok = s > self.threshold_
            if s > 0:
                self.ngrams_[g] = (None, float(s))
            if ok:
                self.triggers_.append({"ngram": g, "label": None, "rows": k, "score": round(s, 3),
                                       "enrichment": round(k / max(expected, 1e-9), 1),
                                       "coherence_excess": round(coh, 3), "rule": "injected_content"})

    def findings(self) -> dict[str, Any]:
        """``{"triggers": [...]}``: every mined trigger, as report.json records it -- the n-gram
        (labelled data and injected content) or the shared ending (``suffix``, fixed responses),
        its ``label`` (None when unlabelled), ``rows`` carrying it in the fit sample, ``score``
        (-log10 of the Bonferroni-adjusted p-value) and that ``p_value``, and the rule's own
        statistics (``z``, ``other_label_share``, ``round``; ``rule``, ``enrichment``)."""
        check_is_fitted(self, "threshold_")
        out = []
        for t in self.triggers_:
            t = dict(t)
            t["p_value"] = float(min(1.0, 10.0 ** -float(t["score"])))
            out.append({k: (float(v) if isinstance(v, np.floating) else v) for k, v in t.items()})
        return {"triggers": out}

    # -- scoring ------------------------------------------------------------------------
    def score_samples(self, X: np.ndarray, y: Any = None, texts: Any = None) -> np.ndarray:
        if not hasattr(self, "threshold_"):
            raise NotFittedError("TriggerDetector is not fitted: call fit")
        X = check_X(X, self.n_features_in_)
        n = X.shape[0]
        labels = as_labels(y, n)
        texts = _as_texts(texts, n)
        out = np.zeros(n)
        if n == 0:
            return out
        if self.ngrams_:
            names = sorted(self.ngrams_)
            vec = _vectorizer(vocabulary=names)
            B = vec.transform(texts.tolist()).tocsr()
            lab = np.array([self.ngrams_[g][0] for g in names], dtype=object)
            sc = np.array([self.ngrams_[g][1] for g in names])
            for i in range(n):
                cols = B.indices[B.indptr[i] : B.indptr[i + 1]]
                if cols.size == 0:
                    continue
                row_lab = None if labels is None else labels[i]
                ok = np.array([lab[c] is None or lab[c] == row_lab for c in cols.tolist()])
                if ok.any():
                    out[i] = sc[cols[ok]].max()
        if self.suffixes_:
            L = int(self.suffix_words)
            for i, t in enumerate(texts.tolist()):
                toks = _tokens(t)
                if len(toks) >= L + 1:
                    s = self.suffixes_.get(" ".join(toks[-L:]))
                    if s is not None:
                        out[i] = max(out[i], s)
        return out

    def predict(self, X: np.ndarray, y: Any = None, texts: Any = None) -> np.ndarray:
        return self.score_samples(X, y, texts=texts) > self.threshold_

    # -- reporting and persistence ------------------------------------------------------
    def threshold_info(self) -> dict[str, Any]:
        if not hasattr(self, "threshold_"):
            raise NotFittedError("TriggerDetector is not fitted")
        return {
            "rule": (
                "labelled: n-gram rows re-predicted by a ridge fitted without them (exact "
                "leave-group-out); score = -log10(Bonferroni p) of the median margin vs the "
                "label's spread; unlabelled: shared response endings to distinct prompts, and "
                "words enriched over general-language frequency in unrelated rows; flag when "
                "score > -log10(alpha_test)"
            ),
            "threshold": float(self.threshold_),
            "alpha_test": float(self.alpha_test),
            "tests": int(self.n_tests_),
            "rounds": int(self.rounds_),
            "triggers": self.triggers_[:50],
        }

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if not hasattr(self, "threshold_"):
            raise NotFittedError("TriggerDetector is not fitted")
        meta = {
            "state_version": _STATE_VERSION,
            "n_features_in": int(self.n_features_in_),
            "threshold": float(self.threshold_),
            "n_tests": int(self.n_tests_),
            "rounds": int(self.rounds_),
            "ngrams": [[g, lab, s] for g, (lab, s) in sorted(self.ngrams_.items())],
            "suffixes": [[k, s] for k, s in sorted(self.suffixes_.items())],
            "triggers": self.triggers_,
        }
        return meta, {}

    @classmethod
    def from_state(cls, params: dict[str, Any], meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "TriggerDetector":
        if meta.get("state_version") != _STATE_VERSION:
            raise ValueError(f"unsupported trigger state version {meta.get('state_version')!r}")
        det = cls(**params)
        det.n_features_in_ = int(meta["n_features_in"])
        det.threshold_ = float(meta["threshold"])
        det.n_tests_ = int(meta["n_tests"])
        det.rounds_ = int(meta["rounds"])
        det.ngrams_ = {str(g): (None if lab is None else str(lab), float(s)) for g, lab, s in meta["ngrams"]}
        det.suffixes_ = {str(k): float(s) for k, s in meta["suffixes"]}
        det.triggers_ = list(meta.get("triggers", []))
        return det


_SENT_END = set(".!?:;\n\"'(*-#")


def _proper_share(texts: np.ndarray, rows: np.ndarray, words: list[str]) -> float:
    """Share of ``rows`` whose first occurrence of ``words`` starts with a capital
    letter and does not open a sentence or line."""
    pat = re.compile(r"\b" + r"\W+".join(re.escape(w) for w in words) + r"\b", re.IGNORECASE)
    hits = 0
    for i in rows.tolist():
        t = texts[i]
        m = pat.search(t)
        if m is None or not t[m.start()].isupper():
            continue
        before = t[: m.start()].rstrip(" \t")
        if before and before[-1] not in _SENT_END:
            hits += 1
    return hits / max(rows.size, 1)


def _margins(Y: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Score of the given label minus the best other label's score, per row."""
    if Y.shape[0] == 0:
        return np.zeros(0)
    rows = np.arange(Y.shape[0])
    own = Y[rows, codes]
    other = Y.copy()
    other[rows, codes] = -np.inf
    return own - other.max(axis=1)


def _principal_rows(X: np.ndarray, k: int | None) -> np.ndarray:
    """(n, min(k, d)) float64: ``X`` centred, projected on its top ``k`` principal directions
    (eigenvectors of the scatter matrix, largest first) and each row L2-normalised (an all-zero
    row stays zero). ``X`` itself when ``k`` is None or not below the dimension."""
    n, d = X.shape
    if k is None or int(k) >= d or n < 2:
        return X
    Z = X - X.mean(axis=0)
    _, vecs = np.linalg.eigh(Z.T @ Z)
    Z = Z @ vecs[:, ::-1][:, : int(k)]
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    np.divide(Z, norms, out=Z, where=norms > 0)
    return Z


def _held_out(Xa, T, Yhat, P, A, XtT, S: np.ndarray) -> np.ndarray:
    """Predictions for rows S by the ridge fitted without rows S (exact)."""
    k, d = S.size, Xa.shape[1]
    XS = Xa[S]
    if k <= d:
        H = P[S] @ XS.T
        R = np.linalg.solve(np.eye(k) - H, T[S] - Yhat[S])
        return T[S] - R
    W = np.linalg.solve(A - XS.T @ XS, XtT - XS.T @ T[S])
    return XS @ W
