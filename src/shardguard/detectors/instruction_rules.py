"""The instruction rules: poisoned instruction data without labels (the text renders the
instruction, input and response; ``input.response_column`` names the response, else the
response is taken to be the text's last ``suffix_words`` tokens).

* **Shared response, against the corpus's own distribution.** Responses (whole responses
  with a response column, else the endings) shared by ``min_support`` rows or more whose
  prompts all differ are tested. Within the response's length bucket (1, 2, 3-4, 5-8, ...
  tokens), the corpus's own responses repeat at some rate with some spread: the share of
  distinct responses that repeat at all (``r``), and how far the repeats go -- a discrete
  power law fitted to their copies (exponent ``alpha``), both estimated without the tested
  response. The chance that one response reaches ``k`` copies is
  ``r * zeta(alpha, k) / zeta(alpha, 2)``; times the bucket's distinct responses and the
  buckets tested it is an expected count, the p-value's Bonferroni bound. A class name ("positive", 2,000 copies) sits in a bucket where repeats are
  the rule; a 25-token answer given 50 times sits where almost nothing repeats. And the
  prompts must be unrelated: the mean pairwise overlap of their content words (words rarer
  than ``max_zipf`` in English) may exceed random prompts' by at most ``max_prompt_overlap``
  -- "print hello world" answered to eleven paraphrases of one request is natural; one answer
  to fifty unrelated requests that share only a trigger phrase is not.
* **Injected content.** 1-3-grams of the responses in ``min_support`` rows or more (without a
  response column: occurrences in the back of the text, relative position >=
  ``min_position``, are the ones that count) that are semantically
  unrelated (mean pairwise cosine within ``max_coherence_unlabelled`` of random rows; rows of a
  link, domain, emoji or tag over it are read again without the phrase they share around it,
  within ``max_context_coherence``, when the scan passes its embedder), occur
  ``min_enrichment`` times more often than their general-language frequency (``wordfreq``)
  predicts (Poisson tail, Bonferroni), sit inside sentences in at least
  ``min_mid_sentence_share`` of their rows (injected content is worked into a sentence; a
  discourse word such as "Additionally" opens one), and name something: a link, domain,
  emoji or tag in any case, or a word capitalised mid-sentence in ``min_proper_share`` of
  its rows (a lowercase brand name is not found: see the measurement at the check).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Callable

import numpy as np
from scipy.optimize import brentq
from scipy.special import zeta

from shardguard.detectors.ngram_stats import NgramHasher, tokenize
from shardguard.detectors.trigger_mining import (
    ContextCoherence,
    coherence_excess,
    neglog10_bonferroni,
    random_pair_cos,
)


def _bucket(n_tokens: int) -> int:
    """Length bucket of a response: 0 for 1 token, then 2, 3-4, 5-8, 9-16, ... tokens."""
    return 0 if n_tokens <= 1 else int(math.log2(n_tokens - 1)) + 1


def _split(texts: np.ndarray, responses: np.ndarray | None, L: int,
           tokens: list[list[str]] | None = None) -> tuple[list[list[str]], list[list[str]]]:
    """(prompt tokens, response tokens) of each row. ``tokens``: each text's tokens, already
    found (without ``responses``: the prompts and responses are slices of them)."""
    prompts, resps = [], []
    for i, t in enumerate(texts.tolist()):
        if responses is not None:
            r = responses[i] or ""
            at = t.rfind(r) if r else -1
            prompt = t if at < 0 else t[:at] + t[at + len(r):]
            prompts.append(tokenize(prompt))
            resps.append(tokenize(r))
        else:
            toks = tokenize(t) if tokens is None else tokens[i]
            if len(toks) >= L + 1:
                prompts.append(toks[:-L])
                resps.append(toks[-L:])
            else:
                prompts.append(toks)
                resps.append([])
    return prompts, resps


def _common_ending(tokens: list[list[str]], rows: list[int], cap: int) -> int:
    """Length (in tokens, at most ``cap``) of the longest ending all ``rows`` share."""
    first = tokens[rows[0]]
    n = 0
    while n < min(cap, len(first)) and all(len(tokens[i]) > n and tokens[i][-1 - n] == first[-1 - n] for i in rows):
        n += 1
    return n


def _content(tokens: list[str], zipf) -> frozenset:
    return frozenset(t for t in tokens if zipf(t) < 5.0)


def _mean_jaccard(sets: list[frozenset], rng: np.random.Generator, pairs: int = 2000) -> float:
    """Mean Jaccard similarity over (at most ``pairs`` random) pairs of distinct sets."""
    k = len(sets)
    if k < 2:
        return 0.0
    a = rng.integers(0, k, pairs)
    b = rng.integers(0, k - 1, pairs)
    b[b >= a] += 1
    tot = 0.0
    for i, j in zip(a.tolist(), b.tolist()):
        u = len(sets[i] | sets[j])
        tot += len(sets[i] & sets[j]) / u if u else 0.0
    return tot / pairs


_GRID = np.arange(2, 100_002, dtype=np.float64)
_LOG_GRID = np.log(_GRID)


def _power_law_alpha(repeats: list[int]) -> float:
    """Maximum-likelihood exponent of a discrete power law ``P(c) ~ c^-alpha`` on ``c >= 2``
    (the copies of the responses that repeat), in [1.2, 30]; 30 (nothing repeats that far)
    with fewer than 3 repeats to learn from."""
    if len(repeats) < 3:
        return 30.0
    target = float(np.mean(np.log(repeats)))

    def gap(a: float) -> float:  # E[ln c] under alpha, minus the observed mean
        w = _GRID ** -a
        return float((_LOG_GRID * w).sum() / w.sum()) - target

    if gap(30.0) >= 0:
        return 30.0
    if gap(1.2) <= 0:
        return 1.2
    return float(brentq(gap, 1.2, 30.0))


def _shared_response_log_p(k: int, counts: list[int], group_count: int,
                           longer: list[int] | None = None) -> tuple[float, int]:
    """ln P(a response reaches ``k`` copies) in its bucket, and the bucket's distinct responses,
    from the bucket's ``counts`` without the tested response (``group_count`` of them; 0: it has
    no entry there):
    ``r`` (share of distinct responses that repeat) x the power-law tail ``P(C >= k | C >= 2)``
    fitted on the repeats' copies. Measured on Alpaca: one-token answers repeat with a heavy
    tail (alpha ~1.8: "negative" 59 times is ordinary), 17-32-token answers hardly at all
    (a quote given 5 times is at the edge, 50 copies far past it). The exponent is fitted on
    the repeats of this bucket and every longer one (``longer``: their copies), since long
    answers repeat too rarely for one bucket to say how far."""
    others = list(counts)
    if group_count:  # 0: the tested response has no entry in ``counts``
        others.remove(group_count)
    n_units = len(counts)
    rep = [c for c in others if c >= 2]
    r = (len(rep) + 0.5) / (len(others) + 1.0)
    pooled = list(rep) + [c for c in (longer or []) if c >= 2]
    alpha = _power_law_alpha(pooled)
    tail = float(zeta(alpha, k) / zeta(alpha, 2))
    return math.log(r) + math.log(max(tail, 1e-300)), n_units


def fit_instruction_rules(self, Xf: np.ndarray, texts: np.ndarray, responses: np.ndarray | None = None,
                          embed: "Callable[[list[str]], np.ndarray] | None" = None) -> None:
    """Fit the unlabelled rules on ``Xf`` (rows in principal directions), their ``texts`` and,
    when the scan knows them, their ``responses``; sets ``suffixes_``, ``responses_``,
    ``ngrams_``, ``triggers_``, ``n_tests_`` and ``rounds_`` on ``self`` (the TriggerDetector).
    ``embed(texts)`` (m, d), in the principal directions, when new text can be embedded: rows of
    an injected n-gram that agree are read again without the phrase they share around it."""
    from wordfreq import word_frequency, zipf_frequency

    n = Xf.shape[0]
    self.rounds_ = 1
    L = int(self.suffix_words)
    rng = np.random.default_rng(self.random_state)
    # Without a response column every rule reads the texts' own tokens: found once and shared
    # (the split, the shared endings, the n-grams), not once per rule -- each copy is a Python
    # string per token, ~300 MiB for a 50,000-row reservoir of paragraphs.
    all_tokens = None if responses is not None else [tokenize(t) for t in texts.tolist()]
    prompts, resps = _split(texts, responses, L, all_tokens)
    zipf = lambda w: zipf_frequency(w, "en")  # noqa: E731

    # -- shared response ----------------------------------------------------------------------
    units = [" ".join(r) for r in resps]
    multiplicity = Counter(u for u in units if u)
    by_bucket: dict[int, list[int]] = {}
    for u, c in multiplicity.items():
        by_bucket.setdefault(_bucket(len(u.split())), []).append(c)
    groups: dict[str, list[int]] = {}
    for i, u in enumerate(units):
        if u and multiplicity[u] >= int(self.min_support):
            groups.setdefault(u, []).append(i)
    tested = {}
    for u, rows in groups.items():
        # distinct prompts (a record repeated whole is a copy, not a response given to many
        # prompts); whole prompts, not their openings: templated prompts share their opening
        if len({" ".join(prompts[i]) for i in rows}) >= 0.9 * len(rows):
            tested[u] = rows
    n_buckets = max(len({_bucket(len(u.split())) for u in tested}), 1)
    base_overlap = None
    endings_of: dict[int, Counter] = {}
    for u, rows in tested.items():
        k = len(rows)
        counts, longer, own = by_bucket[_bucket(len(u.split()))], None, k
        if responses is None:
            # Without a response column the unit is the last L tokens; the response shared by the
            # group may be longer. Judge it at the length the rows share (their longest common
            # ending, at most 64 tokens), against the corpus's endings of that length.
            shared = _common_ending(all_tokens, rows, 64)
            if shared > L:
                if shared not in endings_of:
                    endings_of[shared] = Counter(" ".join(t[-shared:]) for t in all_tokens if len(t) > shared)
                counts = list(endings_of[shared].values())
                # the group's own entry there: its rows longer than the ending (a row that is
                # the ending alone has no prompt and is not counted), none when all are
                own = sum(1 for i in rows if len(all_tokens[i]) > shared)
        else:
            b = _bucket(len(u.split()))
            longer = [c for bb, cs in by_bucket.items() if bb > b for c in cs]
        log_p, n_units = _shared_response_log_p(k, counts, own, longer)
        s = neglog10_bonferroni(log_p + math.log(n_units), n_buckets)
        if s <= self.threshold_:
            continue
        if base_overlap is None:
            sample = rng.choice(n, size=min(n, 2000), replace=False)
            base_overlap = _mean_jaccard([_content(prompts[i], zipf) for i in sample.tolist()], rng)
        overlap = _mean_jaccard([_content(prompts[i], zipf) for i in rows], rng) - base_overlap
        if overlap > float(self.max_prompt_overlap):
            continue
        if responses is not None:
            self.responses_[u] = float(s)
        else:
            self.suffixes_[u] = float(s)
        self.triggers_.append({"suffix": u, "label": None, "rows": k, "score": round(s, 3),
                               "prompt_overlap_excess": round(overlap, 3), "rule": "fixed_response"})

    # -- injected content -------------------------------------------------------------------
    del endings_of
    where = [" ".join(r) for r in resps] if responses is not None else [t for t in texts.tolist()]
    occ = NgramHasher()(where, all_tokens)
    if occ.keys.size == 0:
        return
    keys, first, df = np.unique(occ.keys, return_index=True, return_counts=True)
    cand = np.flatnonzero((df >= int(self.min_support)) & (df <= float(self.max_df) * n))
    n_tokens = sum(len(t) for t in occ.tokens)
    base = random_pair_cos(Xf)
    contexts = None if embed is None else ContextCoherence(embed, where)
    n_tests = max(cand.size, 1)
    self.n_tests_ = n_tests
    order = np.argsort(occ.keys, kind="stable")
    sorted_keys = occ.keys[order]
    for j in cand.tolist():
        g = occ.text(int(first[j]))
        words = g.split()
        if min(zipf(w) for w in words) >= float(self.max_zipf) or any(not w.strip("_") for w in words):
            continue  # all common words, or a fill-in blank ("___")
        expected = max(word_frequency(g, "en"), 1e-9) * n_tokens
        if int(df[j]) < float(self.min_enrichment) * max(expected, 0.1):
            continue
        lo = np.searchsorted(sorted_keys, keys[j], side="left")
        hi = np.searchsorted(sorted_keys, keys[j], side="right")
        hits = order[lo:hi]
        if responses is None:
            # Without a response column, position is the evidence: only occurrences in the back
            # of the text (relative token position >= min_position), where the template puts
            # the response, count -- instruction wording ("write a Python function") sits first.
            rel = occ.start[hits] / np.maximum([len(occ.tokens[d]) for d in occ.doc[hits].tolist()], 1)
            hits = hits[rel >= float(self.min_position)]
        rows = np.unique(occ.doc[hits])
        k = int(rows.size)
        if k < int(self.min_support) or k < float(self.min_enrichment) * max(expected, 0.1):
            continue
        coh = coherence_excess(Xf[rows], base)
        row_texts = [where[i] for i in rows.tolist()]
        if coh > float(self.max_coherence_unlabelled):
            # Rows alike. A link, domain, emoji or tag is no subject: its rows must be unrelated
            # once the phrase they share around it is unseen (250 Alpaca answers carrying one of
            # five sentences naming a link: 0.106 with them). A word's rows are about it -- a
            # name's biographies lose their agreement with the name ("Kuczynski", "Eugène" in
            # Wikipedia: 0.15 and 0.11 with it, 0.04 and 0.06 without) -- so they are not re-read.
            if contexts is None or not any(_is_entity_token(w) for w in words):
                continue
            ctx = contexts.excess(g, row_texts)
            if ctx is None or ctx > float(self.max_context_coherence):
                continue
        mid = _mid_sentence_share(row_texts, words)
        if mid < float(self.min_mid_sentence_share):
            continue
        # An entity, not vocabulary: a link, domain, emoji or tag by its form, in any case; a
        # word only when capitalised (a name). Measured on 2,000 clean Alpaca rows: without
        # this, 86 natural words ("sentence", "efficient", "algorithm") pass every other test
        # -- a lowercase brand name is therefore not found (docs/benchmarks.md).
        if not any(_is_entity_token(w) for w in words) and \
                _proper_share(row_texts, words) < float(self.min_proper_share):
            continue
        lam = max(expected, 1e-3)
        log_p = k * math.log(lam) - lam - math.lgamma(k + 1)
        s = neglog10_bonferroni(log_p, n_tests)
        if s > 0:
            self.ngrams_[g] = (None, float(s))
        if s > self.threshold_:
            self.triggers_.append({"ngram": g, "label": None, "rows": k, "score": round(s, 3),
                                   "enrichment": round(k / max(expected, 1e-9), 1),
                                   "coherence_excess": round(coh, 3), "mid_sentence_share": round(mid, 3),
                                   "rule": "injected_content"})


def _is_entity_token(tok: str) -> bool:
    """A token that names something by its form: a URL or domain, a tag, an emoji or symbol."""
    return "." in tok or "/" in tok or tok.startswith("<") or (len(tok) == 1 and not tok.isalnum())


def _proper_share(texts: list[str], words: list[str]) -> float:
    """Share of ``texts`` whose first occurrence of ``words`` starts with a capital letter
    and does not open the text, a line or a sentence."""
    pat = re.compile(r"(?<![\w.])" + r"\W+".join(re.escape(w) for w in words) + r"(?![\w])", re.IGNORECASE)
    hits = 0
    for t in texts:
        m = pat.search(t)
        if m is None or not t[m.start()].isupper():
            continue
        if not _SENT_START.search(t[max(0, m.start() - 3): m.start()]):
            hits += 1
    return hits / max(len(texts), 1)


_SENT_START = re.compile(r"(?:^|[.!?:;\n\"(*#-]\s*|\n\s*)$")


def _mid_sentence_share(texts: list[str], words: list[str]) -> float:
    """Share of ``texts`` whose first occurrence of ``words`` (any case) does not open the
    text, a line or a sentence."""
    pat = re.compile(r"(?<![\w.])" + r"\W+".join(re.escape(w) for w in words) + r"(?![\w])", re.IGNORECASE)
    hits = 0
    for t in texts:
        m = pat.search(t)
        if m is None:
            continue
        before = t[max(0, m.start() - 3): m.start()]
        if not _SENT_START.search(before):
            hits += 1
    return hits / max(len(texts), 1)
