"""The trigger detector (reason ``trigger``): visible backdoor triggers in labelled data and
poisoned responses in unlabelled instruction data.

This module is the estimator: its knobs, the candidates, scoring and persistence. The
methods live in their own modules -- :mod:`~shardguard.detectors.trigger_mining` (labelled
data: n-grams whose rows read as another label once the n-gram is unseen) and
:mod:`~shardguard.detectors.instruction_rules` (unlabelled data: fixed responses, injected
content) -- and the n-gram statistics in :mod:`~shardguard.detectors.ngram_stats`.

Candidates come from every row. In a scan, pass 1 counts each shard's n-grams per label
(:class:`~shardguard.detectors.ngram_stats.NgramCounter`, spilled to sorted runs), the reduce
keeps the candidates (:meth:`TriggerDetector.select_candidates`), pass 1b finds all their
rows, and ``fit`` tests them against the reservoir sample as background
(``candidates=``, a :class:`~shardguard.detectors.ngram_stats.StreamCandidates`). Called as a
plain estimator, ``fit(X, y, texts=)`` does the same on the rows it is given.

Scores: ``-log10`` of the Bonferroni-adjusted p-value of the strongest trigger n-gram a row
carries with its label (labelled), or a comparable strength for the unlabelled rules;
``threshold_ = -log10(alpha_test)``. Candidates that fail a guard keep a score capped below the
threshold (never flagged) that preserves their order. Fitted state: the n-grams (text and
64-bit id) with their label and score, and the fixed-response suffixes -- JSON, no pickle.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import numpy as np
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from shardguard.detectors import instruction_rules
from shardguard.detectors.base import EmbeddingDetector, as_labels, check_X
from shardguard.detectors.ngram_stats import (
    TOKENIZER_VERSION,
    CandidateGatherer,
    Candidates,
    NgramCounter,
    NgramCounts,
    NgramHasher,
    StreamCandidates,
    select_candidates,
    tokenize,
)
from shardguard.detectors.trigger_mining import MiningData, mine_labelled

log = logging.getLogger(__name__)

_STATE_VERSION = 2


def _as_texts(texts: Any, n: int) -> np.ndarray:
    if texts is None:
        raise ValueError("the trigger detector needs the row texts: pass texts=")
    arr = np.asarray(texts, dtype=object)
    if arr.shape != (n,):
        raise ValueError(f"texts must have shape ({n},), got {arr.shape}")
    return np.array(["" if t is None else str(t) for t in arr], dtype=object)


class PrincipalDirections:
    """Centre, project on the top ``k`` principal directions of the fit rows (eigenvectors of
    the scatter matrix, largest first) and L2-normalise each row (an all-zero row stays zero).
    The identity when ``k`` is None or not below the dimension."""

    def __init__(self, X: np.ndarray, k: int | None):
        n, d = X.shape
        self.mean = None
        self.basis = None
        if k is None or int(k) >= d or n < 2:
            return
        self.mean = X.mean(axis=0)
        Z = X - self.mean
        _, vecs = np.linalg.eigh(Z.T @ Z)
        self.basis = vecs[:, ::-1][:, : int(k)]

    def __call__(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if self.basis is None:
            return X
        Z = (X - self.mean) @ self.basis
        norms = np.linalg.norm(Z, axis=1, keepdims=True)
        np.divide(Z, norms, out=Z, where=norms > 0)
        return Z


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
        Rows over it are, in a scan (whose embedder can embed new text), embedded again
        without the phrase they share around the n-gram; see ``max_context_coherence``.
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
        Unlabelled, without ``input.response_column``: the response is taken to be the text's
        last this many tokens.
    min_enrichment : float, default 10.0
        Unlabelled: observed / expected (general-language) occurrences of an injected word.
    max_zipf : float, default 5.0
        Unlabelled: words at least this common in English (wordfreq zipf) never count.
    max_context_coherence : float, default 0.1
        Rows over ``max_coherence`` (labelled) or ``max_coherence_unlabelled`` (an injected
        link, domain, emoji or tag; never a word: a name's rows are about it), read without the
        phrase they share around the n-gram, must be at most this
        much above random rows read the same way: a trigger sentence inserted into unrelated
        rows leaves unrelated rows (AddSent in 50 GoEmotions comments: 0.40 with it, -0.005
        without; a link: 0.35, -0.001), a template or topic does not (SMS spam "tones",
        "content": 0.33 without). Needs ``embed`` (a scan passes its embedder).
    max_coherence_unlabelled : float, default 0.1
        Unlabelled: an injected word's rows must be unrelated (mean pairwise cosine, in the
        principal directions, at most this much above random rows'). Measured on Alpaca: the
        rows of natural topic and entity words ("recipe", "Google", "Paris", "China") sit at
        0.12-0.59 (MiniLM) and 0.21-0.59 (static), McDonald's injected into 1-5% of answers
        at 0.044-0.056 (static; it carries its fixed sentences along).
    max_prompt_overlap : float, default 0.25
        Unlabelled: a shared response counts only when its prompts are unrelated -- the mean
        pairwise Jaccard overlap of their content words exceeds random prompts' by at most this.
    min_mid_sentence_share : float, default 0.6
        Unlabelled: share of an injected phrase's rows where it sits inside a sentence (not
        opening the text, a line or a sentence): a brand or link worked into an answer, not a
        discourse word ("Additionally, ...").
    min_proper_share : float, default 0.6
        Unlabelled: a word n-gram (not a link, domain, emoji or tag) must be capitalised
        mid-sentence in this share of its rows -- a name, not vocabulary.
    min_position : float, default 0.4
        Unlabelled without a response column: only occurrences at this relative token position
        or later count for injected content (the template puts the response last).
    random_state : int, default 0
        Unused (the method is exact); kept for a uniform interface.
    """

    name = "trigger"
    streaming = False
    needs_text = True
    #: The scan counts n-grams over every row and passes the candidates' rows to ``fit``.
    uses_stream_candidates = True
    #: With ``input.response_column`` the scan passes each row's response (``responses=``).
    reads_responses = True
    # Measured: on hashing vectors the held-out ridge reads every naturally pure n-gram's rows
    # as another label (2.3% of clean AG News, 6.4% of SMS Spam flagged, against 0.2-0.3% on MiniLM).
    needs_semantic_embeddings = True
    #: a scan passes ``embed=`` (its embedder's ``embed_texts``) to ``fit``: rows that agree are
    #: read again without the phrase they share around a candidate n-gram
    embeds_new_texts = True
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
        "min_context_tokens": "[0, 1000]",
        "max_candidate_rows": "[0, inf)",
        "suffix_words": "[1, 1000]",
        "min_enrichment": "[0, inf)",
        "max_zipf": "[0, 10]",
        "max_coherence_unlabelled": "[-1, 1]",
        "max_context_coherence": "[-1, 1]",
        "max_prompt_overlap": "[-1, 1]",
        "min_mid_sentence_share": "[0, 1]",
        "min_proper_share": "[0, 1]",
        "min_position": "[0, 1]",
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
        min_context_tokens: int = 3,
        max_candidate_rows: int = 200_000,
        max_coherence_unlabelled: float = 0.1,
        max_context_coherence: float = 0.1,
        max_prompt_overlap: float = 0.25,
        min_mid_sentence_share: float = 0.6,
        min_proper_share: float = 0.6,
        min_position: float = 0.4,
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
        self.min_context_tokens = min_context_tokens
        self.max_candidate_rows = max_candidate_rows
        self.max_coherence_unlabelled = max_coherence_unlabelled
        self.max_context_coherence = max_context_coherence
        self.max_prompt_overlap = max_prompt_overlap
        self.min_mid_sentence_share = min_mid_sentence_share
        self.min_proper_share = min_proper_share
        self.min_position = min_position
        self.random_state = random_state

    # -- candidates (the scan's reduce) ------------------------------------------------------
    def select_candidates(self, counts: NgramCounts) -> Candidates:
        """The n-grams of the whole stream worth testing: ``min_support`` rows or more, at most
        ``max_df`` of the rows, ``min_purity`` of them on one label (labelled data)."""
        labelled = sum(1 for lab in counts.labels if lab is not None) >= 2
        return select_candidates(counts, min_support=int(self.min_support), max_df=float(self.max_df),
                                 min_purity=float(self.min_purity), labelled=labelled)

    # -- fit ------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: Any = None, texts: Any = None,
            candidates: StreamCandidates | None = None, responses: Any = None,
            embed: Callable[[list[str]], np.ndarray] | None = None) -> "TriggerDetector":
        """Fit on ``X`` (n, d) with labels ``y`` (n,) (None: unlabelled) and ``texts`` (n,).

        ``candidates``: the scan's candidates from the whole stream, with the global sequence
        number of each row of ``X`` and a way to fetch other rows; None: candidates are
        counted on the rows given. ``responses`` (n,): each row's response (instruction data with
        ``input.response_column``); None: the text's last ``suffix_words`` tokens. ``embed(texts)``
        (m, d): the embedder of ``X``, when it can embed new text (see ``max_context_coherence``);
        None: coherent rows are judged as they are.
        """
        X = check_X(X)
        n, d = X.shape
        labels = as_labels(y, n)
        texts = _as_texts(texts, n)
        self.n_features_in_ = d
        self.ngrams_: dict[str, tuple[str | None, float]] = {}
        self.suffixes_: dict[str, float] = {}
        self.responses_: dict[str, float] = {}
        self.triggers_: list[dict[str, Any]] = []
        self.threshold_ = -math.log10(float(self.alpha_test))
        self.n_tests_ = 0
        self.rounds_ = 0
        self.candidates_ = {"counted_rows": 0, "candidates": 0, "tested": 0, "over_budget": 0,
                            "rows_outside_sample": 0, "tokenizer_version": TOKENIZER_VERSION}
        if n < max(2 * int(self.min_support), 10):
            self._index()
            return self
        pcs = PrincipalDirections(np.asarray(X, dtype=np.float64), self.n_components)
        # Labelled data with some unlabelled rows (a test split without labels): the labelled
        # rules run on the labelled rows, and an unlabelled row is never scored by them (a
        # candidate carries a label); the unlabelled rules are for wholly unlabelled data.
        has = np.zeros(n, bool) if labels is None else np.array([v is not None for v in labels.tolist()], bool)
        if has.any() and len(set(labels[has].tolist())) >= 2:
            self._fit_labelled(X, labels, texts, has, pcs, candidates, embed)
        else:
            resp = None if responses is None else _as_texts(responses, n)
            instruction_rules.fit_instruction_rules(self, pcs(X), texts, resp,
                                                    None if embed is None else (lambda t: pcs(embed(t))))
        self._index()
        return self

    def calibrate(self, X: np.ndarray, y: Any = None, texts: Any = None, **kw: Any) -> "TriggerDetector":
        """Same as :meth:`fit` (the thresholds come from the tests themselves)."""
        return self.fit(X, y, texts=texts, **kw)

    def _fit_labelled(self, X, labels, texts, has, pcs: PrincipalDirections,
                      stream: StreamCandidates | None, embed: Callable[[list[str]], np.ndarray] | None) -> None:
        n = X.shape[0]
        if stream is None:  # count on the rows given: every row is background
            counter = NgramCounter()
            occ = counter.add(texts[has].tolist(), labels[has].tolist())
            cands = self.select_candidates(counter.finish())
            gatherer = CandidateGatherer(cands)
            bg_rows = np.flatnonzero(has)
            gatherer.add(texts[has].tolist(), bg_rows.astype(np.int64), occ)
            rows = gatherer.finish()
            sample_seqs = np.arange(n, dtype=np.int64)
            fetch = None
        else:
            rows, sample_seqs, fetch = stream.rows, np.asarray(stream.sample_seqs, np.int64), stream.fetch
            cands = rows.candidates
        self.candidates_.update(counted_rows=int(cands.n_rows), candidates=len(cands))
        bg_X, bg_labels = X[has], labels[has]
        bg_seqs = sample_seqs[has]
        classes = sorted(set(bg_labels.tolist()))
        code_of = {c: i for i, c in enumerate(classes)}
        # the candidates' labels, in this fit's classes (a label never seen in the sample cannot be tested)
        cand_label = np.array([code_of.get(cands.labels[int(c)], -1) for c in cands.label], dtype=np.int64)
        order_bg = np.argsort(bg_seqs, kind="stable")
        sorted_bg = bg_seqs[order_bg]
        per_cand = []
        outside_all = []
        spent = 0
        over = 0
        # the budget counts distinct rows: candidates share rows (nested n-grams, one sentence)
        fetched = np.zeros(int(rows.seqs.max()) + 1 if rows.seqs.size else 0, dtype=bool)
        # strongest label association first: the budget of outside rows goes to them
        for j in np.argsort(cands.log_p, kind="stable").tolist():
            if cand_label[j] < 0:
                continue
            seqs = rows.rows(j)
            ctx = rows.context_of(j)
            p = np.searchsorted(sorted_bg, seqs)
            p[p >= sorted_bg.size] = 0
            inside = sorted_bg[p] == seqs if sorted_bg.size else np.zeros(seqs.size, bool)
            out = seqs[~inside]
            new = out[~fetched[out]]
            if new.size and spent + new.size > int(self.max_candidate_rows):
                over += 1
                continue
            fetched[new] = True
            spent += new.size
            per_cand.append((j, order_bg[p[inside]], ctx[inside], out, ctx[~inside]))
            outside_all.append(out)
        out_seqs = np.unique(np.concatenate(outside_all)) if outside_all else np.zeros(0, np.int64)
        if out_seqs.size:
            Xe_raw, labels_e, texts_e = fetch(out_seqs)
            Xe = pcs(Xe_raw)
            codes_e = np.array([code_of.get(v, -1) for v in labels_e], dtype=np.int64)
        else:
            Xe = np.zeros((0, pcs(bg_X[:1]).shape[1]))
            codes_e = np.zeros(0, np.int64)
            texts_e = []
        self.candidates_.update(tested=len(per_cand), over_budget=over, rows_outside_sample=int(out_seqs.size))
        if over:
            log.warning("trigger: %d candidate n-grams not tested (their rows outside the sample passed "
                        "max_candidate_rows=%d)", over, int(self.max_candidate_rows))
        data = MiningData(
            X=pcs(bg_X), codes=np.array([code_of[v] for v in bg_labels.tolist()], dtype=np.int64),
            classes=classes, Xe=Xe, codes_e=codes_e,
            cand_text=[rows.texts[j] for j, *_ in per_cand],
            cand_label=np.array([cand_label[j] for j, *_ in per_cand], dtype=np.int64),
            rows_bg=[b for _, b, _, _, _ in per_cand],
            rows_out=[np.searchsorted(out_seqs, o) for _, _, _, o, _ in per_cand],
            ctx_bg=[cb for _, _, cb, _, _ in per_cand],
            ctx_out=[co for _, _, _, _, co in per_cand],
            texts=np.asarray(texts[has], dtype=object), texts_e=np.asarray(texts_e, dtype=object),
            context_embed=None if embed is None else (lambda t: pcs(embed(t))),
        )
        triggers, scores, rounds, n_tests = mine_labelled(data, self)
        self.triggers_ = triggers
        self.rounds_ = rounds
        self.n_tests_ = n_tests
        self.ngrams_ = {data.cand_text[i]: (classes[int(data.cand_label[i])], float(s))
                        for i, s in scores.items() if s > 0}

    def _index(self) -> None:
        """Lookup arrays for scoring: the fitted n-grams' ids sorted, with label and score."""
        hasher = NgramHasher()
        names = sorted(self.ngrams_)
        keys = np.array([hasher.keys_of(g) for g in names], dtype=np.uint64)
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._names = [names[i] for i in order.tolist()]
        self._labels = [self.ngrams_[g][0] for g in self._names]
        self._scores = np.array([self.ngrams_[g][1] for g in self._names], dtype=np.float64)

    def findings(self) -> dict[str, Any]:
        """``{"triggers": [...]}``: every mined trigger, as report.json records it -- the n-gram
        (labelled data and injected content) or the shared ending (``suffix``, fixed responses),
        its ``label`` (None when unlabelled), ``rows`` carrying it with that label in the whole
        stream, ``score`` (-log10 of the Bonferroni-adjusted p-value) and that ``p_value``, and
        the rule's own statistics (``z``, ``other_label_share``, ``evidence_rows``, ``round``;
        ``rule``, ``enrichment``)."""
        check_is_fitted(self, "threshold_")
        out = []
        for t in self.triggers_:
            t = dict(t)
            t["p_value"] = float(min(1.0, 10.0 ** -float(t["score"])))
            out.append({k: (float(v) if isinstance(v, np.floating) else v) for k, v in t.items()})
        return {"triggers": out}

    # -- scoring ------------------------------------------------------------------------
    def score_samples(self, X: np.ndarray, y: Any = None, texts: Any = None, responses: Any = None) -> np.ndarray:
        """(n,) float64: the strength of the strongest fitted trigger a row carries with its
        label, or of the shared response it gives; 0 when none. Higher = more suspicious."""
        if not hasattr(self, "threshold_"):
            raise NotFittedError("TriggerDetector is not fitted: call fit")
        X = check_X(X, self.n_features_in_)
        n = X.shape[0]
        labels = as_labels(y, n)
        texts = _as_texts(texts, n)
        out = np.zeros(n)
        if n == 0:
            return out
        if not hasattr(self, "_keys"):
            self._index()
        where = texts if responses is None else _as_texts(responses, n)
        text_tokens = None
        if self._keys.size:
            on_texts = responses is None or any(lab is not None for lab in self._labels)
            occ = NgramHasher()(texts.tolist() if on_texts else where.tolist())
            if on_texts:
                text_tokens = occ.tokens  # tokenised once: the endings below reuse them
            pos = np.searchsorted(self._keys, occ.keys)
            pos[pos >= self._keys.size] = 0
            hit = np.flatnonzero(self._keys[pos] == occ.keys)
            for i, c in zip(occ.doc[hit].tolist(), pos[hit].tolist()):
                lab = self._labels[c]
                if lab is None or (labels is not None and lab == labels[i]):
                    if self._scores[c] > out[i]:
                        out[i] = self._scores[c]
        if self.suffixes_ or self.responses_:
            L = int(self.suffix_words)
            for i, t in enumerate(texts.tolist()):
                s = None
                if self.responses_ and responses is not None:
                    s = self.responses_.get(" ".join(tokenize(where[i])))
                if s is None and self.suffixes_:
                    toks = text_tokens[i] if text_tokens is not None else tokenize(t)
                    if len(toks) >= L + 1:
                        s = self.suffixes_.get(" ".join(toks[-L:]))
                if s is not None:
                    out[i] = max(out[i], s)
        return out

    def predict(self, X: np.ndarray, y: Any = None, texts: Any = None, responses: Any = None) -> np.ndarray:
        return self.score_samples(X, y, texts=texts, responses=responses) > self.threshold_

    # -- reporting and persistence ------------------------------------------------------
    def threshold_info(self) -> dict[str, Any]:
        if not hasattr(self, "threshold_"):
            raise NotFittedError("TriggerDetector is not fitted")
        return {
            "rule": (
                "labelled: every row of each candidate n-gram (counted over the whole stream) "
                "re-predicted by a ridge fitted on the sample without the n-gram's rows (exact "
                "leave-group-out); score = -log10(Bonferroni p) of the mean margin vs the "
                "label's spread; unlabelled: a response shared by unrelated prompts more often than "
                "the corpus's own repeats of responses that long allow, and words, links or emoji "
                "enriched over general-language frequency inside sentences of unrelated rows; flag "
                "when score > -log10(alpha_test)"
            ),
            "threshold": float(self.threshold_),
            "alpha_test": float(self.alpha_test),
            "tests": int(self.n_tests_),
            "rounds": int(self.rounds_),
            "candidates": dict(getattr(self, "candidates_", {})),
            "triggers": self.triggers_[:50],
        }

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if not hasattr(self, "threshold_"):
            raise NotFittedError("TriggerDetector is not fitted")
        meta = {
            "state_version": _STATE_VERSION,
            "tokenizer_version": TOKENIZER_VERSION,
            "n_features_in": int(self.n_features_in_),
            "threshold": float(self.threshold_),
            "n_tests": int(self.n_tests_),
            "rounds": int(self.rounds_),
            "ngrams": [[g, lab, s] for g, (lab, s) in sorted(self.ngrams_.items())],
            "suffixes": [[k, s] for k, s in sorted(self.suffixes_.items())],
            "responses": [[k, s] for k, s in sorted(self.responses_.items())],
            "triggers": self.triggers_,
            "candidates": dict(getattr(self, "candidates_", {})),
        }
        return meta, {}

    @classmethod
    def from_state(cls, params: dict[str, Any], meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "TriggerDetector":
        if meta.get("state_version") != _STATE_VERSION or meta.get("tokenizer_version") != TOKENIZER_VERSION:
            raise ValueError(f"unsupported trigger state version {meta.get('state_version')!r} "
                             f"(tokenizer {meta.get('tokenizer_version')!r}); refit the profile")
        det = cls(**params)
        det.n_features_in_ = int(meta["n_features_in"])
        det.threshold_ = float(meta["threshold"])
        det.n_tests_ = int(meta["n_tests"])
        det.rounds_ = int(meta["rounds"])
        det.ngrams_ = {str(g): (None if lab is None else str(lab), float(s)) for g, lab, s in meta["ngrams"]}
        det.suffixes_ = {str(k): float(s) for k, s in meta["suffixes"]}
        det.responses_ = {str(k): float(s) for k, s in meta.get("responses", [])}
        det.triggers_ = list(meta.get("triggers", []))
        det.candidates_ = dict(meta.get("candidates", {}))
        det._index()
        return det


__all__ = ["TriggerDetector", "PrincipalDirections", "tokenize"]
