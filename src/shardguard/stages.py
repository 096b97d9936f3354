"""Small pipeline stages shared by ``scan`` (pipeline.py) and the library ``Guard``.

Each class has one job: keep a seeded reservoir sample, track near-duplicate
clusters, turn scores into verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shardguard.detectors.base import as_labels, label_groups
from shardguard.dedup.consensus import consensus_agreement
from shardguard.dedup.statements import MAX_WORD_DIFF, MIN_LENGTH_RATIO, RootFeatures, StatementFeatures
from shardguard.mixing import splitmix64

#: Reasons written by the near-duplicate stage and the validator.
INVALID = "invalid"
NEAR_DUPLICATE = "near_duplicate"
DUPLICATE_FLOOD = "duplicate_flood"



#: A cluster without a label contradiction is a flood only if its copies agree on one text
#: (:func:`consensus_agreement`) from its first this many rows of about the median length
#: (each cut to :data:`~shardguard.dedup.consensus.FLOOD_CHARS` characters).
FLOOD_SAMPLE = 64


def _reservoir_keys(random_state: int, seqs: np.ndarray) -> np.ndarray:
    """(n,) uint64 pseudo-random keys of the rows with global sequence numbers ``seqs``:
    splitmix64 of (seq, random_state). A row's key depends on nothing else, so any split of
    the stream draws the same key for it."""
    with np.errstate(over="ignore"):
        return splitmix64(seqs.astype(np.uint64) + np.uint64((random_state * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF))


class ReservoirSample:
    """Uniform fixed-size sample of a stream by random keys (bottom-k), seeded, mergeable.

    Every row gets a key from its global sequence number and ``random_state``
    (:func:`_reservoir_keys`); the sample is the ``size`` rows with the smallest
    keys, returned in scan order. Because a row's key does not depend on which
    worker saw it, :meth:`merge` of the samples of disjoint parts of the stream is
    exactly the sample of their union (in any order): the scan's statistics map runs
    per shard and the partial samples reduce into the one a single pass keeps.

    Holds at most ``size`` rows of embeddings (float32, ``(rows, dim)``), labels and, with
    ``keep_text``, texts (for detectors that read the text) and responses, plus the batch
    being offered: once full, a row with a key under the largest kept takes that row's place
    in the same arrays, so the sample costs what a fixed reservoir costs at every size of the
    stream (over ``N`` rows about ``size * ln(N / size)`` rows enter in all).
    """

    def __init__(self, size: int, random_state: int = 0, keep_text: bool = False):
        self.size = size
        self.random_state = random_state
        self.keep_text = keep_text
        self.seen = 0
        self._parts: list[dict[str, Any]] = []
        self._held = 0
        self._borrowed = False
        self._in_scan_order = False  # the single part sorted by sequence number, nothing added since
        #: the largest key kept once ``size`` rows are held: a larger key can never enter
        self._bound: np.uint64 | None = None

    def add(self, X: np.ndarray, y: np.ndarray, texts: np.ndarray | None = None,
            seqs: np.ndarray | None = None, responses: np.ndarray | None = None) -> None:
        """Offer one batch: ``X`` (n, dim), ``y`` (n,), ``texts`` (n,) when kept, ``seqs`` (n,)
        the rows' global sequence numbers (default: their position in the stream) and
        ``responses`` (n,) (kept with the texts when given)."""
        n = X.shape[0]
        if n == 0:
            return
        seqs = self.seen + np.arange(n, dtype=np.int64) if seqs is None else np.asarray(seqs, dtype=np.int64)
        self.seen += n
        keys = _reservoir_keys(self.random_state, seqs)
        take = np.flatnonzero(keys <= self._bound) if self._bound is not None else np.arange(n)
        if take.size == 0:
            return
        part: dict[str, Any] = {"key": keys[take], "seq": seqs[take],
                                "X": np.asarray(X[take], dtype=np.float32), "y": np.asarray(y, dtype=object)[take]}
        if self.keep_text:
            part["texts"] = np.asarray(texts, dtype=object)[take]
            if responses is not None:
                part["responses"] = np.asarray(responses, dtype=object)[take]
        self._append(part)

    def _append(self, part: dict[str, Any]) -> None:
        self._in_scan_order = False
        if self._held >= self.size and len(self._parts) == 1:
            self._replace(part)
            return
        self._parts.append(part)
        self._held += part["key"].size
        if self._held >= self.size:
            self._cut()

    def _replace(self, part: dict[str, Any]) -> None:
        """Full: the rows of ``part`` among the ``size`` smallest keys of both take the places
        of the held rows that no longer are, in the held arrays."""
        held = self._parts[0]
        # arrays another reservoir handed over (merge) or handed out read-only (sample): copied once
        if self._borrowed or not held["key"].flags.writeable:
            held = self._parts[0] = {k: v.copy() for k, v in held.items()}
            self._borrowed = False
        for k in [k for k in held if k not in part]:
            del held[k]
        keys = np.concatenate([held["key"], part["key"]])
        keep = np.lexsort((np.concatenate([held["seq"], part["seq"]]), keys))[: self.size]
        incoming = keep[keep >= self.size] - self.size
        if incoming.size:
            stays = np.zeros(self.size, bool)
            stays[keep[keep < self.size]] = True
            slots = np.flatnonzero(~stays)  # as many as the rows coming in
            for k, v in held.items():
                v[slots] = part[k][incoming]
        self._bound = keys[keep].max()

    def _cut(self) -> None:
        """Keep the ``size`` smallest keys (ties, impossible in practice, by sequence number)."""
        if len(self._parts) == 0 or (len(self._parts) == 1 and self._held <= self.size):
            return
        parts = self._parts
        names = set(parts[0])
        for p in parts[1:]:
            names &= set(p)
        keys = np.concatenate([p["key"] for p in parts])
        order = np.lexsort((np.concatenate([p["seq"] for p in parts]), keys))[: self.size]
        order.sort()  # keeps the arrival order: cheap for the next cut, and no meaning attached
        starts = np.cumsum([0] + [p["key"].size for p in parts])
        cuts = np.searchsorted(order, starts)  # each part's share of ``order``, a slice of it
        kept: dict[str, np.ndarray] = {}
        for k in names:
            first = parts[0][k]
            out = np.empty((order.size,) + first.shape[1:], dtype=first.dtype)
            for j, p in enumerate(parts):
                np.take(p[k], order[cuts[j]:cuts[j + 1]] - starts[j], axis=0, out=out[cuts[j]:cuts[j + 1]])
            kept[k] = out
        self._parts = [kept]
        self._borrowed = False
        self._held = order.size
        if order.size >= self.size:
            self._bound = keys[order].max()

    def merge(self, other: "ReservoirSample") -> "ReservoirSample":
        """Add the sample of a disjoint part of the stream (same ``size`` and ``random_state``):
        the result is the sample of both parts."""
        if other.size != self.size or other.random_state != self.random_state:
            raise ValueError("cannot merge reservoirs of different sizes or seeds")
        self.seen += other.seen
        for p in other._parts:
            self._append(dict(p))
            # a part of ``other`` that became this reservoir's only one is still ``other``'s
            self._borrowed = len(self._parts) == 1 and any(
                v is w for v, w in zip(self._parts[0].values(), p.values()))
        return self

    def _final(self) -> dict[str, np.ndarray] | None:
        """The sample in scan order, put in that order once: the fit asks for its rows,
        sequence numbers and responses in turn, and holds the arrays it was given."""
        if self._in_scan_order:
            return self._parts[0]
        self._cut()
        if not self._parts:
            return None
        part = self._parts[0]
        order = np.argsort(part["seq"], kind="stable")  # scan order: the same for any split
        self._parts = [{k: v[order] for k, v in part.items()}]
        for v in self._parts[0].values():  # handed out as they are, so nobody may change them
            v.flags.writeable = False
        self._borrowed = False
        self._in_scan_order = True
        return self._parts[0]

    def sample_responses(self) -> np.ndarray | None:
        """(k,) the responses of the rows :meth:`sample` returns, or None when none were given."""
        part = self._final()
        return None if part is None or "responses" not in part else part["responses"]

    def sample_seqs(self) -> np.ndarray:
        """(k,) int64: the global sequence number of each row :meth:`sample` returns."""
        part = self._final()
        return np.zeros(0, np.int64) if part is None else part["seq"].copy()

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(X, y, texts) of the rows kept, in scan order; texts is None unless ``keep_text``."""
        part = self._final()
        if part is None:
            return np.zeros((0, 0), np.float32), np.zeros(0, dtype=object), None
        return part["X"], part["y"], part.get("texts") if self.keep_text else None


def text_kwargs(detector: Any, texts: np.ndarray | None, responses: np.ndarray | None = None) -> dict[str, Any]:
    """``{"texts": texts}`` for detectors that declare ``needs_text = True``, else nothing; with
    ``responses`` (``input.response_column``), also ``{"responses": responses}`` for detectors
    that declare ``reads_responses = True``."""
    if not getattr(detector, "needs_text", False):
        return {}
    if responses is not None and getattr(detector, "reads_responses", False):
        return {"texts": texts, "responses": responses}
    return {"texts": texts}


class DuplicateClusters:
    """Near-duplicate bookkeeping over a run, in scan order.

    ``roots`` are global sequence numbers (over valid rows, in scan order) of
    first occurrences that something duplicates; members point at them.
    Memory grows with the number of copies, not with the data: 57 bytes a copy with
    statement features and sequence numbers, in numpy arrays (no Python object per copy or
    per cluster while a scan streams; label strings are kept once each, as small integer
    codes).

    After pass 1b, :meth:`resolve` is given the roots' labels and fixes each
    cluster's reference label (its first occurrence's) and majority label (the
    label most of its rows carry; ties go to the reference, then to the
    smallest label as a string), and whether it is a flood, which
    :func:`duplicate_flags` turns into verdicts through :meth:`table`.

    A flood is a cluster whose core -- its rows of about the cluster's median length
    (length ratio >= :data:`MIN_LENGTH_RATIO`, at most :data:`MAX_WORD_DIFF` words apart)
    -- holds more than ``flood_size`` rows, and that is poison-like: its rows carry two
    labels or more (a contradiction), or -- under one label or none -- its core is copies of
    one text edited to evade exact deduplication: mostly distinct texts rather than verbatim
    repeats, that agree on one text (:func:`consensus_agreement` of the core's first
    :data:`FLOOD_SAMPLE` rows at least ``flood_agreement``). Not floods: a reply or a heading
    repeated verbatim ("Sorry, I'll call later" sent 37 times, "History." heading 2,793
    Wikipedia paragraphs), rows that fill one frame with their own content ("<name> is a
    surname. ...", "<text> @ Los Angeles, California"), a phrase-level dataset's overlapping
    sub-phrases of different lengths. Without statement features (``record`` without
    ``features``) every row is core and distinct; without the rows' texts (``resolve``
    without ``texts``) the agreement is not measured.
    """

    def __init__(self, flood_size: int, flood_agreement: float = 0.65) -> None:
        self.flood_size = flood_size
        self.flood_agreement = flood_agreement
        self._seqs: list[np.ndarray | None] = []  # sequence number of every copy, when given
        self._shard_chunks: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self._roots: list[np.ndarray] = []  # root of every copy, a chunk per batch
        self._codes: list[np.ndarray] = []  # label code of every copy
        self._feats: list[StatementFeatures | None] = []  # the copies' length, words, text hash
        self._code_of: dict[Any, int] = {}  # label -> code
        self._table: ClusterTable | None = None
        self._released = False

    def _encode(self, labels: list[Any]) -> np.ndarray:
        return np.array([self._code_of.setdefault(lab, len(self._code_of)) for lab in labels], dtype=np.int32)

    def record(self, shard: str, rows: np.ndarray, root: np.ndarray, sim: np.ndarray,
               labels: np.ndarray | None = None, contradicts: np.ndarray | None = None,
               features: StatementFeatures | None = None, seqs: np.ndarray | None = None) -> None:
        """Keep the copies among ``rows`` (root >= 0) of one shard, with their labels.

        All arrays ``(n,)``: ``rows`` (row numbers in the shard), ``root`` (sequence
        number of the first occurrence, -1 for none), ``sim``, ``labels`` (object),
        ``contradicts`` (bool: the row contradicts the label of an earlier row that says
        the same thing, see :func:`index_texts`; None: not judged, the copy is judged by
        its first occurrence's label); ``features``: every row's :class:`StatementFeatures`
        (for floods; 20 bytes a copy are kept); ``seqs``: every row's sequence number (8
        bytes a copy), with which :meth:`resolve` fetches a flood's texts.
        """
        dup = np.flatnonzero(np.asarray(root) >= 0)
        if not dup.size:
            return
        self._table = None
        ro = np.asarray(root, dtype=np.int64)[dup]
        self._shard_chunks.setdefault(shard, []).append(
            (np.asarray(rows, dtype=np.int64)[dup], ro, np.asarray(sim, dtype=np.float32)[dup],
             None if contradicts is None else np.asarray(contradicts, bool)[dup])
        )
        self._roots.append(ro)
        self._seqs.append(None if seqs is None else np.asarray(seqs, dtype=np.int64)[dup])
        self._feats.append(None if features is None else StatementFeatures(
            features.length[dup], features.words[dup], np.zeros(0, np.int16), features.h_full[dup],
            np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros((0, 0), np.uint8), np.zeros((0, 0), np.uint8)))
        if labels is None:
            self._codes.append(np.full(dup.size, self._encode([None])[0], dtype=np.int32))
        else:
            codes, keys = label_groups(as_labels(np.asarray(labels, dtype=object)[dup], dup.size))
            self._codes.append(self._encode(keys)[codes])

    def members(self, shard: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """``(rows, root, sim, contradicts)`` of one shard's copies, sorted by row
        (``contradicts`` None where :meth:`record` was given none)."""
        chunks = self._shard_chunks.get(shard)
        if not chunks:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, bool)
        rows, root, sim = (np.concatenate(c) for c in list(zip(*chunks))[:3])
        judged = [c[3] for c in chunks]
        contradicts = None if any(j is None for j in judged) else np.concatenate(judged)
        order = np.argsort(rows, kind="stable")
        return rows[order], root[order], sim[order], None if contradicts is None else contradicts[order]

    def copies(self) -> tuple[np.ndarray, np.ndarray, StatementFeatures | None, np.ndarray | None]:
        """Every copy recorded so far, in record order: ``(roots, labels, features, seqs)`` --
        its root (int64), label (object), :class:`StatementFeatures` (``length``, ``words``
        and ``h_full`` only; None where not recorded) and sequence number (int64; None where
        not recorded). What a guard needs to keep growing the clusters."""
        if self._released:
            raise RuntimeError("DuplicateClusters.copies() after release_resolved(): the copies' labels "
                               "and features are gone")
        if not self._roots:
            return np.zeros(0, np.int64), np.zeros(0, dtype=object), StatementFeatures.empty(), np.zeros(0, np.int64)
        labels = np.array(list(self._code_of) + [None], dtype=object)[:-1]
        feats = None if any(f is None for f in self._feats) else StatementFeatures.concat(self._feats)
        seqs = None if any(s is None for s in self._seqs) else np.concatenate(self._seqs)
        return np.concatenate(self._roots), labels[np.concatenate(self._codes)], feats, seqs

    def all_roots(self) -> np.ndarray:
        """Sorted roots of every cluster so far (int64)."""
        return np.unique(np.concatenate(self._roots)) if self._roots else np.zeros(0, np.int64)

    def resolve(self, root_labels: Mapping[int, Any] | Callable[[np.ndarray], Sequence[Any]],
                root_features: "RootFeatures | None" = None,
                texts: Callable[[np.ndarray], Sequence[str]] | None = None) -> None:
        """Fix every cluster's size, reference and majority label from its root's label, and
        whether it is a flood (with ``root_features``: from its rows' lengths and texts).

        ``root_labels``: root sequence number -> label, or a function giving the labels of
        the sorted roots (:meth:`all_roots`) in their order (the scan's
        :meth:`~shardguard.scoring.RootTable.label_of`, with no dict per cluster).

        ``texts`` returns the texts of the rows with the given sequence numbers (sorted
        int64), in that order; it is asked once, for at most :data:`FLOOD_SAMPLE` rows of each
        cluster whose agreement decides whether it is a flood (the copies' ``seqs`` must have
        been recorded).
        """
        if self._released:
            raise RuntimeError("DuplicateClusters.resolve() after release_resolved()")
        if not self._roots:
            self._table = ClusterTable(np.zeros(0, np.int64), np.zeros(0, np.int64),
                                       np.zeros(0, dtype=object), np.zeros(0, dtype=object), np.zeros(0, bool),
                                       np.zeros(0))
            return
        roots, inv = np.unique(np.concatenate(self._roots), return_inverse=True)
        k = roots.size
        ref_codes = self._encode(list(root_labels(roots)) if callable(root_labels)
                                 else [root_labels.get(r) for r in roots.tolist()])
        labels = list(self._code_of)  # code -> label
        inv = inv.ravel()
        # every row's cluster and label code: copies, then roots (the root's own row included)
        cl = np.concatenate([inv, np.arange(k)])
        codes = np.concatenate([np.concatenate(self._codes), ref_codes])
        majority_codes = majority_labels(cl, codes, ref_codes, labels)
        label_arr = np.array(labels + [None], dtype=object)[:-1]
        have = root_features is not None and all(f is not None for f in self._feats)
        feats = None
        if have:
            rf = root_features.lookup(roots)
            feats = (np.concatenate([f.length for f in self._feats] + [rf.length]),
                     np.concatenate([f.words for f in self._feats] + [rf.words]),
                     np.concatenate([f.h_full for f in self._feats] + [rf.h_full]))
        seq = None if any(s is None for s in self._seqs) else np.concatenate([*self._seqs, roots])
        flood, agreement = flood_flags(cl, k, codes, self._code_of.get(None, -1), feats, self.flood_size,
                                       self.flood_agreement, seq, texts)
        self._table = ClusterTable(roots, np.bincount(inv, minlength=k) + 1,
                                   label_arr[ref_codes], label_arr[majority_codes], flood, agreement)

    def release_resolved(self) -> None:
        """Drop what only :meth:`resolve` and :meth:`copies` read -- the copies' label codes,
        statement features and sequence numbers, 32 of the 57 bytes a copy -- keeping the
        resolved table and each shard's members, which is all pass 2 reads. For a scan, after
        :meth:`resolve`; a guard keeps them to go on growing the clusters."""
        if self._table is None:
            raise RuntimeError("DuplicateClusters.release_resolved() before resolve()")
        self._codes, self._feats, self._seqs = [], [], []
        self._released = True

    def table(self) -> "ClusterTable":
        """The clusters as sorted arrays, for vectorised lookups (after :meth:`resolve`)."""
        if self._table is None:
            raise RuntimeError("DuplicateClusters.table() before resolve()")
        return self._table


def majority_labels(cl: np.ndarray, codes: np.ndarray, ref_codes: np.ndarray, labels: Sequence[Any],
                    weights: np.ndarray | None = None) -> np.ndarray:
    """The majority label code of each of ``k`` clusters, int64 ``(k,)``.

    ``cl`` and ``codes`` (``(m,)``): every row's cluster (0..k-1) and label code (0..K-1), the
    root's own row included; ``ref_codes`` (``(k,)``): the root's code; ``labels``: code ->
    label (a label None is a code like any other); ``weights`` (int ``(m,)``, default 1): how
    many rows each entry stands for. The label most rows carry; among tied
    labels the reference's if it is one, else the smallest as a string. Shared by scan
    (:meth:`DuplicateClusters.resolve`) and the guard's growing clusters.
    """
    k = ref_codes.size
    K = max(len(labels), 1)
    pairs, inv = np.unique(np.asarray(cl, np.int64) * K + codes, return_inverse=True)
    count = np.bincount(inv.ravel(), weights, minlength=pairs.size).astype(np.int64)
    cluster, code = pairs // K, pairs % K
    best = np.zeros(k, np.int64)
    np.maximum.at(best, cluster, count)
    tied = count == best[cluster]
    rank = np.empty(K, np.int64)
    rank[sorted(range(len(labels)), key=lambda c: str(labels[c]))] = np.arange(len(labels))
    prefer = np.where(code == ref_codes[cluster], -1, rank[code])
    cand = np.flatnonzero(tied)
    order = cand[np.lexsort((prefer[cand], cluster[cand]))]
    first = order[np.r_[True, cluster[order][1:] != cluster[order][:-1]]]
    majority = np.full(k, -1, np.int64)
    majority[cluster[first]] = code[first]
    return majority


def flood_flags(cl: np.ndarray, k: int, codes: np.ndarray, none_code: int,
                feats: tuple[np.ndarray, np.ndarray, np.ndarray] | None, flood_size: int,
                flood_agreement: float, seq: np.ndarray | None = None,
                texts: Callable[[np.ndarray], Sequence[str]] | None = None,
                sampled: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Which of ``k`` clusters are floods (see :class:`DuplicateClusters`), bool ``(k,)``, and
    the agreement of the clusters it was measured on (float64 ``(k,)``, NaN elsewhere).

    Rows, all ``(m,)``: ``cl`` their cluster (0..k-1), ``codes`` their label codes
    (``none_code``: unlabelled; codes from -1 up); ``feats``: their ``(length, words,
    h_full)`` (:class:`StatementFeatures`; None: every row is core and distinct); ``seq``:
    their sequence numbers, by which ``texts`` returns the texts of the rows asked for
    (sorted int64), once, for at most :data:`FLOOD_SAMPLE` core rows of each cluster in
    ``seq`` order. ``sampled`` (bool ``(m,)``, default all): the rows ``texts`` can return; a
    cluster with fewer than half of the rows the scan would sample among them is not judged
    yet (no flood, agreement NaN). Shared by scan and the guard's growing clusters.
    """
    cl = np.asarray(cl, np.int64)
    codes = np.asarray(codes, np.int64)
    if feats is not None:
        length, words, text = np.asarray(feats[0], np.int64), np.asarray(feats[1], np.int64), feats[2]
        order = np.lexsort((length, cl))
        starts = np.searchsorted(cl[order], np.arange(k))
        counts = np.bincount(cl, minlength=k)
        med_len = length[order][starts + counts // 2]
        order_w = np.lexsort((words, cl))
        med_words = words[order_w][starts + counts // 2]
        ml, mw = med_len[cl], med_words[cl]
        core = ((np.minimum(length, ml) / np.maximum(np.maximum(length, ml), 1) >= MIN_LENGTH_RATIO)
                & (np.abs(words - mw) <= MAX_WORD_DIFF))
        n_core = np.bincount(cl, weights=core, minlength=k).astype(np.int64)
        distinct_pairs = np.unique(np.stack([cl[core].astype(np.uint64), np.asarray(text)[core]]), axis=1)
        n_distinct = np.bincount(distinct_pairs[0].astype(np.int64), minlength=k)
    else:
        core = np.ones(cl.size, bool)
        n_core = n_distinct = np.bincount(cl, minlength=k)
    K = int(max(codes.max(initial=0), none_code, 0)) + 2  # room for codes -1 .. max
    pairs = np.unique(cl * K + (codes + 1))
    p_cluster, p_code = pairs // K, pairs % K - 1
    labelled = p_code != none_code
    contradiction = np.bincount(p_cluster[labelled], minlength=k) >= 2
    flood = (n_core > flood_size) & (contradiction | (2 * n_distinct >= n_core))
    agreement = np.full(k, np.nan)
    # one label or none: edited variants are a flood only when they are copies of one text
    judge = flood & ~contradiction
    if texts is not None and flood_agreement > 0 and judge.any():
        if seq is None:
            raise ValueError("DuplicateClusters.resolve(texts=...) needs the copies' seqs in record()")
        seq = np.asarray(seq, np.int64)
        pick = core & judge[cl]
        if sampled is not None:
            pick &= np.asarray(sampled, bool)
        rows = np.flatnonzero(pick)
        rows = rows[np.lexsort((seq[rows], cl[rows]))]  # by cluster, then scan order
        first = np.searchsorted(cl[rows], cl[rows], side="left")
        rows = rows[np.arange(rows.size) - first < FLOOD_SAMPLE]
        held = np.bincount(cl[rows], minlength=k)
        rows = rows[(2 * held >= np.minimum(n_core, FLOOD_SAMPLE))[cl[rows]]]
        want = np.unique(seq[rows])
        fetched = np.empty(want.size, dtype=object)
        if want.size:
            fetched[:] = list(texts(want))
        where = np.searchsorted(want, seq[rows])
        if rows.size:
            bounds = np.flatnonzero(np.r_[True, cl[rows][1:] != cl[rows][:-1], True])
            for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
                agreement[cl[rows[a]]] = consensus_agreement(fetched[where[a:b]].tolist())
        with np.errstate(invalid="ignore"):
            flood[judge] &= agreement[judge] >= flood_agreement  # NaN (not judged yet): no flood
    return flood, agreement


@dataclass
class ClusterTable:
    """Duplicate clusters as arrays of shape ``(k,)``, sorted by root sequence number."""

    roots: np.ndarray  # int64
    sizes: np.ndarray  # int64: rows in the cluster, root included
    reference: np.ndarray  # object: the root's label
    majority: np.ndarray  # object: the label most rows of the cluster carry
    flood: np.ndarray  # bool: a flood (see DuplicateClusters)
    agreement: np.ndarray | None = None  # float64: consensus_agreement where measured, else NaN

    def subset(self, keys: np.ndarray) -> "ClusterTable":
        """The clusters among ``keys`` (root sequence numbers), same lookups for those keys."""
        keep = np.isin(self.roots, np.asarray(keys, np.int64))
        return ClusterTable(self.roots[keep], self.sizes[keep], self.reference[keep], self.majority[keep],
                            self.flood[keep], None if self.agreement is None else self.agreement[keep])

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(found, size, reference, majority, flood) for cluster keys (root sequence numbers);
        size 1, labels None and no flood where ``keys`` is no cluster's root (negative keys included)."""
        keys = np.asarray(keys, dtype=np.int64)
        n = keys.size
        size = np.ones(n, np.int64)
        ref = np.full(n, None, dtype=object)
        maj = np.full(n, None, dtype=object)
        found = np.zeros(n, bool)
        flood = np.zeros(n, bool)
        if self.roots.size and n:
            pos = np.minimum(np.searchsorted(self.roots, keys), self.roots.size - 1)
            found = self.roots[pos] == keys
            p = pos[found]
            size[found], ref[found], maj[found] = self.sizes[p], self.reference[p], self.majority[p]
            flood[found] = self.flood[p]
        return found, size, ref, maj, flood


def duplicate_flags(copies: str, is_member: np.ndarray, labels: np.ndarray, in_flood: np.ndarray,
                    reference: np.ndarray, majority: np.ndarray,
                    contradicts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``near_duplicate`` and ``duplicate_flood`` flags, bool arrays of shape ``(n,)``.

    Inputs, all ``(n,)``: ``is_member`` (a later copy of an earlier row), each
    row's own ``labels``, and of the row's cluster (its own when it is a root,
    none when it is in none) whether it is a flood (``in_flood``, see
    :class:`DuplicateClusters`), the ``reference`` label (the first occurrence's)
    and the ``majority`` label; ``contradicts``: whether a row contradicts the label of an
    earlier row that says the same thing (:func:`index_texts`; when None, a copy is judged
    by the label of its first occurrence, ``reference``).

    * duplicate_flood: a row of a flood that carries the cluster's majority label
      (every row when unlabelled).
    * near_duplicate: a copy, when ``copies`` is ``"all"``; when ``"conflicting"``, a
      copy that contradicts (both labelled: an unlabelled row contradicts nothing),
      except a flood's rows outside its majority label; never when ``"none"``.

    So the genuine sentence an attacker copied under another label stays clean
    whether it comes before its flood in scan order or after it.
    """
    labels = np.asarray(labels, dtype=object)
    reference = np.asarray(reference, dtype=object)
    in_flood = np.asarray(in_flood, bool)
    with_majority = np.asarray(labels == majority, bool)
    flood = in_flood & with_majority
    if copies == "all":
        near = np.asarray(is_member, bool).copy()
    elif copies == "conflicting":
        if contradicts is None:
            both_labelled = np.asarray(labels != None, bool) & np.asarray(reference != None, bool)  # noqa: E711
            contradicts = both_labelled & np.asarray(labels != reference, bool)
        near = np.asarray(is_member, bool) & np.asarray(contradicts, bool) & ~(in_flood & ~with_majority)
    else:
        near = np.zeros(labels.size, bool)
    return near, flood


def reasons_column(flags: Mapping[str, np.ndarray], n: int) -> pa.ListArray:
    """Per-row list of reasons, in the order of ``flags``, built without a per-row Python loop."""
    names = list(flags)
    if not names:
        return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string()))
    mat = np.stack([np.asarray(flags[k], dtype=bool) for k in names], axis=1)  # (n, k)
    counts = mat.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    values = np.array(names, dtype=object)[np.nonzero(mat)[1]]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.tolist(), pa.string()))


@dataclass
class DuplicateVerdict:
    """Near-duplicate findings for the rows of one batch, each array of shape ``(n,)``."""

    is_member: np.ndarray  # bool: a later copy flagged near_duplicate (see duplicate_flags)
    score: np.ndarray  # float64: estimated Jaccard to the root for every copy, NaN elsewhere
    duplicate_of: np.ndarray  # object: the root's id for every copy (flagged or not), None elsewhere
    flood: np.ndarray  # bool: flagged duplicate_flood (see duplicate_flags)
    duplicate_of_shard: np.ndarray | None = None  # object: the root's shard, None elsewhere / unknown
    duplicate_of_row: np.ndarray | None = None  # object: the root's row in its shard


def verdict_table(
    batch: pa.RecordBatch | pa.Table,
    valid: np.ndarray,
    duplicates: DuplicateVerdict | None,
    detector_scores: Mapping[str, np.ndarray],
    thresholds: Mapping[str, float],
    columns: list[str],
    allowed: np.ndarray | None = None,
    text_chars: int = 200,
) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Turn one batch's findings into every row's verdict, and the flags by reason.

    ``batch`` has ``id``, ``row``, ``label`` and ``detail`` columns, and ``text``
    where known; ``valid`` is a bool mask of shape ``(n,)``; ``detector_scores``
    holds float64 scores of shape ``(n,)`` (NaN for rows not scored); a row is
    flagged by a detector when its score is above that detector's threshold.
    ``allowed`` (bool ``(n,)``) marks ids a person confirmed clean: a valid flagged
    row among them is ``allowed``, not quarantined. The table has the quarantine
    list's columns (``text`` cut at ``text_chars`` characters) plus ``status``
    (clean, quarantined, invalid or allowed); the flags by reason leave allowed rows out.
    """
    n = batch.num_rows
    flags: dict[str, np.ndarray] = {INVALID: ~valid}
    scores: dict[str, np.ndarray] = {}
    dup_of = np.full(n, None, dtype=object)
    of_shard = np.full(n, None, dtype=object)
    of_row = np.full(n, None, dtype=object)
    if duplicates is not None:
        flags[NEAR_DUPLICATE] = duplicates.is_member & valid
        flags[DUPLICATE_FLOOD] = duplicates.flood & valid
        dup_of = np.where(valid, duplicates.duplicate_of, None)
        if duplicates.duplicate_of_shard is not None:
            of_shard = np.where(valid, duplicates.duplicate_of_shard, None)
            of_row = np.where(valid, duplicates.duplicate_of_row, None)
        scores[f"{NEAR_DUPLICATE}_score"] = duplicates.score
    for name, s in detector_scores.items():
        scores[f"{name}_score"] = s
        with np.errstate(invalid="ignore"):
            flags[name] = valid & (s > thresholds[name])
    flagged = np.zeros(n, bool)
    for f in flags.values():
        flagged |= f
    is_allowed = flagged & valid & (np.zeros(n, bool) if allowed is None else np.asarray(allowed, bool))
    if is_allowed.any():
        flags = {k: f & ~is_allowed for k, f in flags.items()}
    status = np.where(~valid, "invalid", np.where(is_allowed, "allowed", np.where(flagged, "quarantined", "clean")))
    if "text" in batch.column_names and text_chars > 0:
        text = pc.utf8_slice_codeunits(batch.column("text"), 0, text_chars)
    else:
        text = pa.nulls(n, pa.string())
    table = pa.table(
        {
            "id": batch.column("id"),
            "row": batch.column("row"),
            "status": pa.array(status.tolist(), pa.string()),
            "reasons": reasons_column(flags, n),
            "duplicate_of": pa.array(dup_of.tolist(), pa.string()),
            "duplicate_of_shard": pa.array(of_shard.tolist(), pa.string()),
            "duplicate_of_row": pa.array(of_row.tolist(), pa.int64()),
            "label": batch.column("label"),
            "detail": batch.column("detail"),
            "text": text,
            **{c: pa.array(scores.get(c, np.full(n, np.nan)), pa.float64(), from_pandas=True) for c in columns},
        }
    )
    return table, flags
