"""Small pipeline stages shared by ``scan`` (pipeline.py) and the library ``Guard``.

Each class has one job: keep a seeded reservoir sample, track near-duplicate
clusters, turn scores into verdicts.
"""

from __future__ import annotations

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
    """

    flood_size: int
    members: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)

    def record(self, shard: str, rows: np.ndarray, root: np.ndarray, sim: np.ndarray) -> None:
        """Keep the duplicates among ``rows`` (root >= 0) of one shard."""
        dup = root >= 0
        if not dup.any():
            return
        r, ro, s = rows[dup], root[dup], sim[dup]
        if shard in self.members:
            a, b, c = self.members[shard]
            r, ro, s = np.concatenate([a, r]), np.concatenate([b, ro]), np.concatenate([c, s])
        self.members[shard] = (r, ro, s)
        uniq, cnt = np.unique(root[dup], return_counts=True)
        for u, c in zip(uniq.tolist(), cnt.tolist()):
            self.counts[u] = self.counts.get(u, 0) + c

    def flood_roots(self) -> np.ndarray:
        """Roots of clusters with more than ``flood_size`` members in all (root included)."""
        return np.array(sorted(k for k, c in self.counts.items() if c + 1 > self.flood_size), dtype=np.int64)

    def all_roots(self) -> np.ndarray:
        return np.array(sorted(self.counts), dtype=np.int64)

    def cluster_size(self, root: int) -> int:
        return self.counts.get(root, 0) + 1


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

    is_member: np.ndarray  # bool: a later copy of an earlier row
    score: np.ndarray  # float64: estimated Jaccard to the root, NaN elsewhere
    duplicate_of: np.ndarray  # object: the root's id where is_member, None elsewhere
    flood: np.ndarray  # bool: member or root of a cluster larger than the flood size
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
        dup_of = np.where(flags[NEAR_DUPLICATE], duplicates.duplicate_of, None)
        if duplicates.duplicate_of_shard is not None:
            of_shard = np.where(flags[NEAR_DUPLICATE], duplicates.duplicate_of_shard, None)
            of_row = np.where(flags[NEAR_DUPLICATE], duplicates.duplicate_of_row, None)
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
