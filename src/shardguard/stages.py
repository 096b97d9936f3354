"""Small pipeline stages shared by ``scan`` (pipeline.py) and the library ``Guard``.

Each class has one job: keep a seeded reservoir sample, track near-duplicate
clusters, turn scores into verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import xxhash

from shardguard.detectors.base import as_labels, label_groups

#: Reasons written by the near-duplicate stage and the validator.
INVALID = "invalid"
NEAR_DUPLICATE = "near_duplicate"
DUPLICATE_FLOOD = "duplicate_flood"


def id_hashes(ids: list[str]) -> np.ndarray:
    """64-bit xxh3 hashes of row ids, ``(n,)`` uint64: ids kept at 8 bytes each instead of as strings."""
    return np.fromiter((xxhash.xxh3_64_intdigest(i.encode()) for i in ids), dtype=np.uint64, count=len(ids))


class ReservoirSample:
    """Uniform fixed-size sample of a stream (Vitter's algorithm R), seeded, vectorised per batch.

    Holds at most ``size`` rows of embeddings (float32, ``(size, dim)``), labels
    and, with ``keep_text``, texts (for detectors that read the text).
    """

    def __init__(self, size: int, random_state: int = 0, keep_text: bool = False):
        self.size = size
        self.rng = np.random.default_rng(random_state)
        self.seen = 0
        self.X: np.ndarray | None = None
        self.y = np.full(size, None, dtype=object)
        self.texts = np.full(size, None, dtype=object) if keep_text else None

    def add(self, X: np.ndarray, y: np.ndarray, texts: np.ndarray | None = None) -> None:
        n = X.shape[0]
        if n == 0:
            return
        if self.X is None:
            self.X = np.zeros((self.size, X.shape[1]), dtype=np.float32)
        pos = self.seen + np.arange(n)
        fill = pos < self.size
        self.X[pos[fill]] = X[fill]
        self.y[pos[fill]] = y[fill]
        if self.texts is not None:
            self.texts[pos[fill]] = texts[fill]
        rest = np.flatnonzero(~fill)
        if rest.size:
            j = self.rng.integers(0, pos[rest] + 1)  # one draw per row, as in algorithm R
            keep = j < self.size
            # Later rows overwrite earlier ones at the same slot, as sequential R would.
            self.X[j[keep]] = X[rest[keep]]
            self.y[j[keep]] = y[rest[keep]]
            if self.texts is not None:
                self.texts[j[keep]] = texts[rest[keep]]
        self.seen += n

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(X, y, texts) of the rows kept so far; texts is None unless ``keep_text``."""
        k = min(self.seen, self.size)
        if self.X is None:
            return np.zeros((0, 0), np.float32), np.zeros(0, dtype=object), None
        return self.X[:k], self.y[:k], None if self.texts is None else self.texts[:k]


def text_kwargs(detector: Any, texts: np.ndarray | None) -> dict[str, Any]:
    """``{"texts": texts}`` for detectors that declare ``needs_text = True``, else nothing."""
    return {"texts": texts} if getattr(detector, "needs_text", False) else {}


class DuplicateClusters:
    """Near-duplicate bookkeeping over a run, in scan order.

    ``roots`` are global sequence numbers (over valid rows, in scan order) of
    first occurrences that something duplicates; members point at them.
    Memory grows with the number of copies, not with the data: 24 bytes a copy,
    in numpy arrays (no Python object per copy or per cluster while a scan
    streams; label strings are kept once each, as small integer codes).

    After pass 1b, :meth:`resolve` is given the roots' labels and fixes each
    cluster's reference label (its first occurrence's) and majority label (the
    label most of its rows carry; ties go to the reference, then to the
    smallest label as a string), which :func:`duplicate_flags` turns into verdicts
    through :meth:`table`.
    """

    def __init__(self, flood_size: int) -> None:
        self.flood_size = flood_size
        self._shard_chunks: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self._roots: list[np.ndarray] = []  # root of every copy, a chunk per batch
        self._codes: list[np.ndarray] = []  # label code of every copy
        self._code_of: dict[Any, int] = {}  # label -> code
        self._table: ClusterTable | None = None

    def _encode(self, labels: list[Any]) -> np.ndarray:
        return np.array([self._code_of.setdefault(lab, len(self._code_of)) for lab in labels], dtype=np.int32)

    def record(self, shard: str, rows: np.ndarray, root: np.ndarray, sim: np.ndarray,
               labels: np.ndarray | None = None) -> None:
        """Keep the copies among ``rows`` (root >= 0) of one shard, with their labels.

        All arrays ``(n,)``: ``rows`` (row numbers in the shard), ``root`` (sequence
        number of the first occurrence, -1 for none), ``sim``, ``labels`` (object).
        """
        dup = np.flatnonzero(np.asarray(root) >= 0)
        if not dup.size:
            return
        self._table = None
        ro = np.asarray(root, dtype=np.int64)[dup]
        self._shard_chunks.setdefault(shard, []).append(
            (np.asarray(rows, dtype=np.int64)[dup], ro, np.asarray(sim, dtype=np.float32)[dup])
        )
        self._roots.append(ro)
        if labels is None:
            self._codes.append(np.full(dup.size, self._encode([None])[0], dtype=np.int32))
        else:
            codes, keys = label_groups(as_labels(np.asarray(labels, dtype=object)[dup], dup.size))
            self._codes.append(self._encode(keys)[codes])

    def members(self, shard: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rows, root, sim)`` of one shard's copies, sorted by row."""
        chunks = self._shard_chunks.get(shard)
        if not chunks:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        rows, root, sim = (np.concatenate(c) for c in zip(*chunks))
        order = np.argsort(rows, kind="stable")
        return rows[order], root[order], sim[order]

    def all_roots(self) -> np.ndarray:
        """Sorted roots of every cluster so far (int64)."""
        return np.unique(np.concatenate(self._roots)) if self._roots else np.zeros(0, np.int64)

    def resolve(self, root_labels: Mapping[int, Any]) -> None:
        """Fix every cluster's size, reference and majority label from its root's label."""
        if not self._roots:
            self._table = ClusterTable(np.zeros(0, np.int64), np.zeros(0, np.int64),
                                       np.zeros(0, dtype=object), np.zeros(0, dtype=object))
            return
        roots, inv = np.unique(np.concatenate(self._roots), return_inverse=True)
        k = roots.size
        ref_codes = self._encode([root_labels.get(r) for r in roots.tolist()])
        labels = list(self._code_of)  # code -> label
        K = len(labels)
        # rows per (cluster, label) pair, the root's own row included
        key = np.concatenate([inv.ravel() * K + np.concatenate(self._codes), np.arange(k) * K + ref_codes])
        pairs, count = np.unique(key, return_counts=True)
        cluster, code = pairs // K, pairs % K
        best = np.zeros(k, np.int64)
        np.maximum.at(best, cluster, count)
        tied = count == best[cluster]
        # among tied labels: the reference's if it is one, else the smallest as a string
        rank = np.empty(K, np.int64)
        rank[sorted(range(K), key=lambda c: str(labels[c]))] = np.arange(K)
        prefer = np.where(code == ref_codes[cluster], -1, rank[code])
        cand = np.flatnonzero(tied)
        order = cand[np.lexsort((prefer[cand], cluster[cand]))]
        first = order[np.r_[True, cluster[order][1:] != cluster[order][:-1]]]
        majority_codes = np.empty(k, np.int64)
        majority_codes[cluster[first]] = code[first]
        label_arr = np.array(labels + [None], dtype=object)[:-1]
        self._table = ClusterTable(roots, np.bincount(inv.ravel(), minlength=k) + 1,
                                   label_arr[ref_codes], label_arr[majority_codes])

    def table(self) -> "ClusterTable":
        """The clusters as sorted arrays, for vectorised lookups (after :meth:`resolve`)."""
        if self._table is None:
            raise RuntimeError("DuplicateClusters.table() before resolve()")
        return self._table


@dataclass
class ClusterTable:
    """Duplicate clusters as arrays of shape ``(k,)``, sorted by root sequence number."""

    roots: np.ndarray  # int64
    sizes: np.ndarray  # int64: rows in the cluster, root included
    reference: np.ndarray  # object: the root's label
    majority: np.ndarray  # object: the label most rows of the cluster carry

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(found, size, reference, majority) for cluster keys (root sequence numbers); size 1
        and labels None where ``keys`` is no cluster's root (negative keys included)."""
        keys = np.asarray(keys, dtype=np.int64)
        n = keys.size
        size = np.ones(n, np.int64)
        ref = np.full(n, None, dtype=object)
        maj = np.full(n, None, dtype=object)
        found = np.zeros(n, bool)
        if self.roots.size and n:
            pos = np.minimum(np.searchsorted(self.roots, keys), self.roots.size - 1)
            found = self.roots[pos] == keys
            p = pos[found]
            size[found], ref[found], maj[found] = self.sizes[p], self.reference[p], self.majority[p]
        return found, size, ref, maj


def duplicate_flags(copies: str, flood_size: int, is_member: np.ndarray, labels: np.ndarray,
                    size: np.ndarray, reference: np.ndarray, majority: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``near_duplicate`` and ``duplicate_flood`` flags, bool arrays of shape ``(n,)``.

    Inputs, all ``(n,)``: ``is_member`` (a later copy of an earlier row), each
    row's own ``labels``, and of the row's cluster (its own when it is a root,
    size 1 when it is in none) the ``size``, the ``reference`` label (the first
    occurrence's) and the ``majority`` label.

    * duplicate_flood: a row of a cluster larger than ``flood_size`` that carries
      the cluster's majority label (every row when unlabelled).
    * near_duplicate: a copy, when ``copies`` is ``"all"``; a copy whose label
      differs from the reference when ``"conflicting"``, except a flood's rows
      outside its majority label; never when ``"none"``.

    So the genuine sentence an attacker copied under another label stays clean
    whether it comes before its flood in scan order or after it.
    """
    labels = np.asarray(labels, dtype=object)
    in_flood = size > flood_size
    with_majority = np.asarray(labels == majority, bool)
    flood = in_flood & with_majority
    if copies == "all":
        near = np.asarray(is_member, bool).copy()
    elif copies == "conflicting":
        near = np.asarray(is_member, bool) & np.asarray(labels != reference, bool) & ~(in_flood & ~with_majority)
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
) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Turn one batch's findings into every row's verdict, and the flags by reason.

    ``batch`` has ``id``, ``row``, ``label`` and ``detail`` columns; ``valid``
    is a bool mask of shape ``(n,)``; ``detector_scores`` holds float64 scores
    of shape ``(n,)`` (NaN for rows not scored); a row is flagged by a detector
    when its score is above that detector's threshold. The table has the
    quarantine list's columns plus ``status`` (clean, quarantined or invalid).
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
    status = np.where(~valid, "invalid", np.where(flagged, "quarantined", "clean"))
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
            **{c: pa.array(scores.get(c, np.full(n, np.nan)), pa.float64(), from_pandas=True) for c in columns},
        }
    )
    return table, flags
