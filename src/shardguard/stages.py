"""Small pipeline stages shared by ``scan`` (pipeline.py) and the library ``Guard``.

Each class has one job: keep a seeded reservoir sample, track near-duplicate
clusters, turn scores into verdicts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import xxhash

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


@dataclass
class DuplicateClusters:
    """Near-duplicate bookkeeping over a run, in scan order.

    ``roots`` are global sequence numbers (over valid rows, in scan order) of
    first occurrences that something duplicates; members point at them.
    Memory grows with the number of duplicates, not with the data.

    After pass 1b, :meth:`resolve` is given the roots' labels and fixes each
    cluster's reference label (its first occurrence's) and majority label (the
    label most of its rows carry; ties go to the reference), which
    :func:`duplicate_flags` turns into verdicts.
    """

    flood_size: int
    members: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    member_labels: dict[int, Counter] = field(default_factory=dict)
    reference: dict[int, Any] = field(default_factory=dict)
    majority: dict[int, Any] = field(default_factory=dict)

    def record(self, shard: str, rows: np.ndarray, root: np.ndarray, sim: np.ndarray,
               labels: np.ndarray | None = None) -> None:
        """Keep the duplicates among ``rows`` (root >= 0) of one shard, with their labels."""
        dup = root >= 0
        if not dup.any():
            return
        lab = np.full(int(dup.sum()), None, dtype=object) if labels is None else np.asarray(labels, dtype=object)[dup]
        r, ro, s = rows[dup], root[dup], sim[dup]
        if shard in self.members:
            a, b, c, d = self.members[shard]
            r, ro, s, lab_all = np.concatenate([a, r]), np.concatenate([b, ro]), np.concatenate([c, s]), np.concatenate([d, lab])
        else:
            lab_all = lab
        self.members[shard] = (r, ro, s, lab_all)
        # One Python step per distinct (root, label) pair, not per copy.
        for (u, label), c in Counter(zip(root[dup].tolist(), lab.tolist())).items():
            self.counts[u] = self.counts.get(u, 0) + c
            self.member_labels.setdefault(u, Counter())[label] += c

    def resolve(self, root_labels: Mapping[int, Any]) -> None:
        """Fix every cluster's reference and majority label from its root's label."""
        for root, tally in self.member_labels.items():
            ref = root_labels.get(root)
            counts = Counter(tally)
            counts[ref] += 1
            best = max(counts.values())
            self.reference[root] = ref
            self.majority[root] = ref if counts[ref] == best else min(
                (k for k, v in counts.items() if v == best), key=str)

    def flood_roots(self) -> np.ndarray:
        """Roots of clusters with more than ``flood_size`` members in all (root included)."""
        return np.array(sorted(k for k, c in self.counts.items() if c + 1 > self.flood_size), dtype=np.int64)

    def all_roots(self) -> np.ndarray:
        return np.array(sorted(self.counts), dtype=np.int64)

    def cluster_size(self, root: int) -> int:
        return self.counts.get(root, 0) + 1

    def table(self) -> "ClusterTable":
        """The clusters as sorted arrays, for vectorised lookups (after :meth:`resolve`)."""
        roots = self.all_roots()
        return ClusterTable(
            roots,
            np.array([self.counts[r] + 1 for r in roots.tolist()], dtype=np.int64),
            np.array([self.reference.get(r) for r in roots.tolist()] + [None], dtype=object)[:-1],
            np.array([self.majority.get(r) for r in roots.tolist()] + [None], dtype=object)[:-1],
        )


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
