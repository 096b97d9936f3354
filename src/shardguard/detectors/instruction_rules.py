"""The instruction rules: poisoned instruction data without labels (text = instruction,
input and response joined by the template, response last).

* fixed response: >= ``min_support`` rows whose texts end in the same ``suffix_words``
  tokens (the same response) while their beginnings (the instructions) all differ -- one
  answer given to unrelated prompts;
* injected content: alphabetic word 1-3-grams in >= ``min_support`` rows whose rows are
  semantically unrelated (mean pairwise cosine within ``max_coherence_unlabelled`` of random
  rows), which sit in the response part of the text (median relative position >=
  ``min_position``) and occur ``min_enrichment`` times more often than their
  general-language frequency (``wordfreq``) predicts (Poisson tail, Bonferroni), and which
  read as an entity (capitalised mid-sentence in >= ``min_proper_share`` of their rows); a
  phrase whose words are all common in English (zipf >= ``max_zipf``) never counts.
"""

from __future__ import annotations

import math
import re

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer

from shardguard.detectors.ngram_stats import tokenize
from shardguard.detectors.trigger_mining import MAX_SCORE, coherence_excess, neglog10_bonferroni, random_pair_cos

TOKEN_PATTERN = r"(?u)\b\w+(?:'\w+)?\b"


def _vectorizer(min_df: int = 1) -> CountVectorizer:
    return CountVectorizer(lowercase=True, token_pattern=TOKEN_PATTERN, ngram_range=(1, 3), binary=True,
                           min_df=min_df, dtype=np.int8)


def fit_instruction_rules(self, Xf: np.ndarray, texts: np.ndarray) -> None:
    """Fit the unlabelled rules on ``Xf`` (rows in principal directions) and their ``texts``;
    sets ``suffixes_``, ``ngrams_``, ``triggers_``, ``n_tests_`` and ``rounds_`` on ``self``
    (the TriggerDetector)."""
    n = Xf.shape[0]
    rounds = 1
    self.rounds_ = rounds
    L = int(self.suffix_words)
    # fixed response: shared ending, distinct beginnings
    ends: dict[str, list[int]] = {}
    heads: list[str] = []
    for i, t in enumerate(texts.tolist()):
        toks = tokenize(t)
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
    vec = _vectorizer(int(self.min_support))
    try:
        B = vec.fit_transform(texts.tolist()).tocsc()
    except ValueError:
        return
    vocab = vec.get_feature_names_out()
    df = np.asarray(B.sum(axis=0)).ravel()
    n_tokens = sum(len(tokenize(t)) for t in texts.tolist())
    base = random_pair_cos(Xf)
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
        coh = coherence_excess(Xf[rows], base)
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
        s = neglog10_bonferroni(log_p, n_tests)
        ok = s > self.threshold_
        if s > 0:
            self.ngrams_[g] = (None, float(s))
        if ok:
            self.triggers_.append({"ngram": g, "label": None, "rows": k, "score": round(s, 3),
                                   "enrichment": round(k / max(expected, 1e-9), 1),
                                   "coherence_excess": round(coh, 3), "rule": "injected_content"})



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


