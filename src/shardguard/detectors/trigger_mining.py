"""The labelled trigger miner: n-grams whose rows read as another label once the n-gram is unseen.

BadNets rare words, AddSent sentences, an emoji or a link: any n-gram that teaches "this token
-> that label". The test, for each candidate n-gram (many rows, nearly all on one label c):

1. a one-vs-rest ridge classifier (with intercept, penalty ``alpha``) is fitted on the
   background rows (the scan's reservoir sample), read in their top principal directions;
2. the candidate's rows -- ALL of them, from the whole stream, not only those in the
   sample -- are predicted by that ridge fitted WITHOUT every background row carrying the
   n-gram: exact, in closed form, by downdating (``(I - H_SS)^-1`` residuals for small
   groups, the downdated normal equations for large ones), no refitting loop. Ordinary
   k-fold cross-validation would LEARN the trigger; leaving the whole group out cannot;
3. a row's margin is its held-out score for its given label minus the best other label's.
   Label c's normal spread is the median and 1.4826 x MAD of the leave-one-out margins of
   its background rows; the statistic is the MEAN held-out margin of the candidate's k
   c-rows, ``z = (mean - median_c) / (sigma_c / sqrt(k))``, one-sided, Bonferroni over the
   distinct row sets tested;
4. only rows with at least ``min_context_tokens`` tokens besides the n-gram are evidence, and
   a candidate needs ``min_support`` of them:
   a row that is mostly the n-gram ("amateurish", "not bad" in phrase-level SST-2) asks
   whether the embedder understands the n-gram, not whether the rest of the row contradicts
   the label (they made 0.7% of clean GLUE SST-2 trigger flags);
5. an n-gram is a trigger when ``p * n_tests < alpha_test`` AND at least
   ``min_other_share`` of its evidence rows read as another label AND its rows are not one
   semantic cluster (mean pairwise cosine at most ``max_coherence`` above random rows'):
   naturally pure n-grams of a topic read noisily when held out, but their rows agree.
   When they agree and the scan can embed new text, the rows are read again with the n-gram
   removed, extended to the phrase nearly all of them share around it
   (:func:`~shardguard.detectors.ngram_stats.shared_phrase`), and must then be at most
   ``max_context_coherence`` above random rows read the same way (at most
   ``CONTEXT_ROWS`` rows each): a topic's rows still agree, rows that a trigger sentence made
   alike do not. A sentence dominates a short text's embedding: AddSent in 50 GoEmotions
   comments has rows at 0.40 above random (over 0.35), their contexts at -0.005; SMS spam
   templates ("tones", "content") keep 0.33 without their n-gram;
6. nested candidates ("watch" around "watch this 3d") are accepted most specific first; the
   rows a wider one adds must pass on their own; flagged rows leave the background, the ridge
   is refitted and the rest retested, at most ``max_rounds`` times (a strong trigger's
   poison drags its label's spread and hides weaker ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from scipy.special import log_ndtr

from shardguard.detectors.ngram_stats import shared_phrase, tokenize, without_phrase

MAX_SCORE = 300.0
#: Rows of a candidate (and random background rows) embedded again without the n-gram.
CONTEXT_ROWS = 256


def neglog10_bonferroni(log_p: float, n_tests: int) -> float:
    """-log10(min(1, p * n_tests)) from ln p, capped at ``MAX_SCORE``."""
    v = -(log_p + math.log(max(n_tests, 1))) / math.log(10)
    return float(min(max(v, 0.0), MAX_SCORE))


def below(score: float, threshold: float) -> float:
    """A rejected candidate's score: strictly below ``threshold``, continuous and increasing.

    Scores up to ``threshold - 1`` are kept; higher ones map into ``(threshold - 1, threshold)``
    as ``threshold - 1 / (score - threshold + 2)``. Rows of rejected candidates are so never
    flagged, yet do not all tie at the threshold (which made ranking by the score meaningless).
    """
    if score <= threshold - 1.0:
        return float(score)
    return float(threshold - 1.0 / (score - threshold + 2.0))


def coherence_excess(X: np.ndarray, base: float) -> float:
    """Mean pairwise dot product of the rows of ``X`` (unit rows: cosine) minus ``base``."""
    k = X.shape[0]
    if k < 2:
        return 0.0
    m = X.mean(axis=0)
    sq = np.einsum("ij,ij->i", X, X).mean()
    return (k * k * float(m @ m) - k * sq) / (k * (k - 1)) - base


def random_pair_cos(X: np.ndarray) -> float:
    """Mean pairwise dot product over all pairs of distinct rows of ``X``."""
    n = X.shape[0]
    if n < 2:
        return 0.0
    m = X.mean(axis=0)
    sq = np.einsum("ij,ij->i", X, X).mean()
    return (n * n * float(m @ m) - n * sq) / (n * (n - 1))


@dataclass
class MiningData:
    """What the miner reads, all embeddings already in the principal directions.

    ``X`` (n, d) background rows and ``codes`` (n,) their label codes into ``classes``;
    ``Xe`` (m, d) / ``codes_e`` (m,) candidate rows outside the background. Candidate j has
    majority label ``cand_label[j]``, text ``cand_text[j]``, background rows ``rows_bg[j]``
    and outside rows ``rows_out[j]`` (index arrays, every label), and per row the tokens
    besides the n-gram (``ctx_bg[j]``, ``ctx_out[j]``).
    """

    X: np.ndarray
    codes: np.ndarray
    classes: list[str]
    Xe: np.ndarray
    codes_e: np.ndarray
    cand_text: list[str]
    cand_label: np.ndarray
    rows_bg: list[np.ndarray]
    rows_out: list[np.ndarray]
    ctx_bg: list[np.ndarray]
    ctx_out: list[np.ndarray]
    texts: np.ndarray | None = None
    texts_e: np.ndarray | None = None
    #: texts (already without the n-gram) -> (m, d) embeddings in the principal directions
    context_embed: Callable[[list[str]], np.ndarray] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def containment_clusters(texts: list[str]) -> np.ndarray:
    """(k,) cluster of each text: texts contained in a longer one of the set (after case and
    space folding) share its cluster. Phrase-level corpora (GLUE SST-2) hold every sub-phrase
    of a sentence as its own row, and exact repeats are common (SMS Spam): such rows are one
    piece of evidence, not many -- their margins move together."""
    norm = [" ".join(t.casefold().split()) for t in texts]
    order = sorted(range(len(norm)), key=lambda i: -len(norm[i]))
    roots: list[int] = []
    out = np.empty(len(norm), dtype=np.int64)
    for i in order:
        for r in roots:
            if norm[i] in norm[r]:
                out[i] = out[r]
                break
        else:
            out[i] = len(roots)
            roots.append(i)
    return out


def _spread(idx: np.ndarray, k: int) -> np.ndarray:
    """At most ``k`` of ``idx``, evenly spaced (deterministic)."""
    if idx.size <= k:
        return idx
    return idx[np.linspace(0, idx.size - 1, k).round().astype(np.intp)]


class ContextCoherence:
    """Coherence of a candidate's rows with the n-gram removed, against random rows' contexts."""

    def __init__(self, data: MiningData):
        self.data = data
        self._base: float | None = None

    def base(self) -> float:
        if self._base is None:
            d = self.data
            rows = _spread(np.arange(d.texts.size), CONTEXT_ROWS).tolist()
            self._base = random_pair_cos(d.context_embed([" ".join(tokenize(d.texts[i])) for i in rows]))
        return self._base

    def excess(self, ngram: str, rows_b: np.ndarray, rows_o: np.ndarray) -> float | None:
        """Coherence excess of the contexts of background rows ``rows_b`` and outside rows
        ``rows_o``; None when fewer than two rows keep any token."""
        d = self.data
        texts = [d.texts[i] for i in rows_b.tolist()] + [d.texts_e[i] for i in rows_o.tolist()]
        texts = [texts[i] for i in _spread(np.arange(len(texts)), CONTEXT_ROWS).tolist()]
        toks = [tokenize(t) for t in texts]
        phrase = shared_phrase(toks, ngram)
        ctx = [c for c in (without_phrase(t, phrase) for t in toks) if c]
        if len(ctx) < 2:
            return None
        return coherence_excess(d.context_embed(ctx), self.base())


def _clustered(m: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Mean margin per cluster."""
    uniq, inv = np.unique(clusters, return_inverse=True)
    return np.bincount(inv, weights=m) / np.bincount(inv)


def _margins(Y: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Score of the given label minus the best other label's score, per row."""
    if Y.shape[0] == 0:
        return np.zeros(0)
    rows = np.arange(Y.shape[0])
    own = Y[rows, codes]
    other = Y.copy()
    other[rows, codes] = -np.inf
    return own - other.max(axis=1)


def _downdated(Xa, T, Yhat, P, A, XtT, W, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ridge fitted without background rows ``S``: (predictions for S, its weights)."""
    k, d = S.size, Xa.shape[1]
    if k == 0:
        return np.zeros((0, T.shape[1])), W
    XS = Xa[S]
    if k <= d:
        H = P[S] @ XS.T
        R = np.linalg.solve(np.eye(k) - H, T[S] - Yhat[S])
        return T[S] - R, W - P[S].T @ R
    Wd = np.linalg.solve(A - XS.T @ XS, XtT - XS.T @ T[S])
    return XS @ Wd, Wd


def mine_labelled(data: MiningData, det: Any) -> tuple[list[dict[str, Any]], dict[int, float], int, int]:
    """Run the test above. ``det`` supplies the knobs (the TriggerDetector's parameters).

    Returns (accepted triggers as report records, score of every tested candidate -- rejected
    ones capped below the threshold --, rounds run, tests of the largest round).
    """
    threshold = -math.log10(float(det.alpha_test))
    n = data.X.shape[0]
    C = len(data.classes)
    codes = data.codes
    Xe_a = np.hstack([data.Xe, np.ones((data.Xe.shape[0], 1))]) if data.Xe.shape[0] else np.zeros((0, data.X.shape[1] + 1))
    base = random_pair_cos(data.X)
    contexts = ContextCoherence(data) if data.context_embed is not None and data.texts is not None else None
    min_ctx = int(getattr(det, "min_context_tokens", 0) or 0)
    keep = np.ones(n, dtype=bool)
    remaining = set(range(len(data.cand_text)))
    scores: dict[int, float] = {}
    triggers: list[dict[str, Any]] = []
    n_tests_max = 0
    rounds = 0
    for rounds in range(1, int(det.max_rounds) + 1):
        idx = np.flatnonzero(keep)
        pos = np.full(n, -1, dtype=np.intp)
        pos[idx] = np.arange(idx.size)
        Xa = np.hstack([data.X[idx], np.ones((idx.size, 1))])
        T = np.zeros((idx.size, C))
        T[np.arange(idx.size), codes[idx]] = 1.0
        A = Xa.T @ Xa + float(det.alpha) * np.eye(Xa.shape[1])
        Ainv = np.linalg.inv(A)
        XtT = Xa.T @ T
        W = Ainv @ XtT
        Yhat = Xa @ W
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
        # one test per distinct (background rows kept, outside rows, label)
        groups: dict[bytes, list[int]] = {}
        sets: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        for j in sorted(remaining):
            rb = pos[data.rows_bg[j]]
            kb = rb >= 0
            rb, cb = rb[kb], data.ctx_bg[j][kb]
            ro, co = data.rows_out[j], data.ctx_out[j]
            c = int(data.cand_label[j])
            in_c_b = codes[idx][rb] == c
            in_c_o = data.codes_e[ro] == c
            if int(in_c_b.sum() + in_c_o.sum()) < int(det.min_support):
                continue
            key = rb.tobytes() + b"|" + ro.tobytes() + bytes([c % 256, c // 256 % 256])
            groups.setdefault(key, []).append(j)
            sets[key] = (rb, ro, (cb >= min_ctx) & in_c_b, (co >= min_ctx) & in_c_o)
        n_tests = max(len(groups), 1)
        n_tests_max = max(n_tests_max, n_tests)
        new_flags = []
        for key, js in groups.items():
            rb, ro, ev_b, ev_o = sets[key]
            c = int(data.cand_label[js[0]])
            Yb, Wd = _downdated(Xa, T, Yhat, P, A, XtT, W, rb)
            Yo = Xe_a[ro] @ Wd
            mS = np.concatenate([_margins(Yb[ev_b], np.full(int(ev_b.sum()), c)),
                                 _margins(Yo[ev_o], np.full(int(ev_o.sum()), c))])
            k = mS.size
            need = max(2, int(det.min_support))  # min_support rows of evidence, not just of presence
            if k < need:
                for j in js:
                    scores.setdefault(j, 0.0)
                continue
            z = (float(mS.mean()) - med[c]) / (sig[c] / math.sqrt(k))
            s = neglog10_bonferroni(float(log_ndtr(z)), n_tests)
            other = float((mS < 0).mean())
            ok = s > threshold and other >= float(det.min_other_share)
            if ok and data.texts is not None:
                # rows that are sub-phrases or repeats of one another are one piece of evidence
                ev_texts = [data.texts[i] for i in idx[rb[ev_b]].tolist()] + [data.texts_e[i] for i in ro[ev_o].tolist()]
                mc = _clustered(mS, containment_clusters(ev_texts))
                if mc.size < mS.size:
                    k = mc.size
                    z = (float(mc.mean()) - med[c]) / (sig[c] / math.sqrt(k)) if k >= 2 else 0.0
                    s = neglog10_bonferroni(float(log_ndtr(z)), n_tests)
                    other = float((mc < 0).mean())
                    ok = k >= need and s > threshold and other >= float(det.min_other_share)
            rows_c_b = idx[rb[codes[idx][rb] == c]]
            rows_c_o = ro[data.codes_e[ro] == c]
            if ok:
                coh = coherence_excess(np.vstack([data.X[rows_c_b], data.Xe[rows_c_o]]), base)
                ok = coh <= float(det.max_coherence)
                if not ok and contexts is not None:
                    # rows alike: they must be unrelated once the phrase they share is unseen
                    ctx_coh = contexts.excess(data.cand_text[js[0]], rows_c_b, rows_c_o)
                    ok = ctx_coh is not None and ctx_coh <= float(det.max_context_coherence)
            if not ok:
                s = below(s, threshold)
            for j in js:
                scores[j] = s
            if ok:
                # a row's identity across both sources: background index, or n + outside index
                ident = np.concatenate([rows_c_b, n + rows_c_o])
                ev_ident = np.concatenate([idx[rb[ev_b]], n + ro[ev_o]])
                new_flags.append((js, c, s, k, other, z, ident, ev_ident, mS, rows_c_b))
        # Nested candidates: most specific first; rows a wider one adds must pass on their own.
        new_flags.sort(key=lambda f: (f[3], -f[2]))
        accepted, covered = [], set()
        for f in new_flags:
            js, c, ev_ident, mS = f[0], f[1], f[7], f[8]
            resid = np.array([r not in covered for r in ev_ident.tolist()], dtype=bool)
            ok = bool(resid.all() or not resid.any())
            if not ok and resid.sum() >= 2:
                mr = mS[resid]
                zr = (float(mr.mean()) - med[c]) / (sig[c] / math.sqrt(mr.size))
                sr = neglog10_bonferroni(float(log_ndtr(zr)), n_tests)
                ok = sr > threshold and float((mr < 0).mean()) >= float(det.min_other_share)
            if ok:
                accepted.append(f)
                covered.update(f[6].tolist())
            else:
                for j in js:
                    scores[j] = below(scores[j], threshold)
        if not accepted:
            break
        for js, c, s, k, other, z, ident, _, _, rows_c_b in accepted:
            for j in js:
                remaining.discard(j)
                triggers.append({
                    "ngram": data.cand_text[j], "label": str(data.classes[c]),
                    "rows": int(ident.size), "sample_rows": int(rows_c_b.size), "evidence_rows": int(k),
                    "score": round(s, 3), "z": round(float(z), 3),
                    "other_label_share": round(other, 3), "round": rounds,
                })
            keep[rows_c_b] = False
    return triggers, scores, rounds, n_tests_max
