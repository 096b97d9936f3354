"""The near-duplicate reduce, in global scan order, and reading rows back by sequence number.

The index is sequential: only roots are indexed, a copy is judged against the earliest
earlier row that says the same thing, and a word's "seen earlier" is global. The local
engine replays the work files one shard after another, in scan order, in one process
(:func:`index_shard`); the Ray engine splits the same replay by connected component
(:mod:`shardguard.dedup.components`). Either way the result does not depend on how the maps
were split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shardguard.io import workfile
from shardguard.passes.read_embed import ShardOutcome, embedding_dim, work_path
from shardguard.dedup import index_texts
from shardguard.scoring import LabelCodes, RootTable

if TYPE_CHECKING:
    from shardguard.pipeline import ScanState

log = logging.getLogger(__name__)


def index_shard(o: ShardOutcome, position: int, state: "ScanState", copies: str) -> None:
    """Add one shard's valid rows to the near-duplicate index and the clusters of ``state``.

    ``position``: the shard's index among the ok shards (scan order); ``copies``:
    ``near_duplicates.copies`` (rows are judged by what they say only where that decides a
    verdict). With ``state.root_ids`` set, also keeps the ids of the indexed roots (Guard).
    """
    dup_index = state.dup_index
    with workfile.WorkFileReader(work_path(state.work_dir, o.shard)) as reader:
        for batch in reader:
            vb = batch.filter(batch.column("detail").is_null())
            if not vb.num_rows:
                continue
            y = vb.column("label").to_numpy(zero_copy_only=False)
            first = dup_index.n_docs
            judged = y if copies == "conflicting" else None
            added, contradicts, feats = index_texts(dup_index, state.root_features, vb.column("text"), judged)
            rows = vb.column("row").to_numpy()
            state.clusters.record(o.shard.name, rows, added.root, added.sim, y, contradicts, feats,
                                  first + np.arange(vb.num_rows, dtype=np.int64))
            if state.root_ids is not None:
                is_root = added.new_root  # indexed as a root: later rows may name it
                state.root_seqs.append(first + np.flatnonzero(is_root))
                state.root_ids.append(pc.filter(vb.column("id"), pa.array(is_root)))
                state.root_rows.append(rows[is_root])
                state.root_labels.append(y[is_root])
                state.root_shards.append(np.full(int(is_root.sum()), position, np.int32))


def fetch_rows(ok: Sequence[ShardOutcome], seq_start: dict[str, int], work_dir: Path,
               seqs: np.ndarray, embeddings: bool = True) -> tuple[np.ndarray, list[Any], list[str]]:
    """Embeddings (float32; an empty ``(0, 0)`` array without ``embeddings``), labels and
    texts of the valid rows with global sequence numbers ``seqs`` (sorted), read batch by
    batch from the work files."""
    seqs = np.asarray(seqs, dtype=np.int64)
    xs: list[np.ndarray] = []
    labels: list[Any] = []
    texts: list[str] = []
    for o in ok:
        lo = seq_start[o.shard.name]
        a, b = np.searchsorted(seqs, [lo, lo + o.rows])  # o.rows >= its valid rows
        if a == b:
            continue
        with workfile.WorkFileReader(work_path(work_dir, o.shard)) as reader:
            dim = embedding_dim(reader.schema)
            seen = lo
            for batch in reader:
                vb = batch.filter(batch.column("detail").is_null())
                hi = seen + vb.num_rows
                i, j = np.searchsorted(seqs, [seen, hi])
                if j > i:
                    take = pa.array(seqs[i:j] - seen)
                    if embeddings:
                        xs.append(workfile.embeddings_from_arrow(vb.column("embedding").take(take), dim))
                    labels.extend(vb.column("label").take(take).to_pylist())
                    texts.extend(vb.column("text").take(take).to_pylist())
                seen = hi
    X = np.vstack(xs) if xs else np.zeros((0, 0), np.float32)
    if len(texts) != seqs.size:
        raise RuntimeError(f"fetched {len(texts)} of {seqs.size} rows from the work files")
    return X, labels, texts


def root_table(seqs: np.ndarray, ok: Sequence[ShardOutcome], seq_start: dict[str, int],
               work_dir: Path, labels: LabelCodes | None = None) -> RootTable:
    """The rows with global sequence numbers ``seqs`` (sorted, unique int64 ``(k,)``; the
    cluster roots, or the Guard's copies) as a :class:`~shardguard.scoring.RootTable`: id,
    shard, row and label, read from pass 1's work files one shard at a time.

    Columnar (about 25 bytes a row plus its id's bytes), not a dict of tuples (~245 B a row),
    since it holds one entry per duplicate cluster for the whole scan and goes to every pass-2
    worker on Ray."""
    names = [o.shard.name for o in ok]
    table = RootTable(labels if labels is not None else LabelCodes(), names)
    seqs = np.asarray(seqs, np.int64)
    if seqs.size == 0:
        return table
    starts = np.array([seq_start[n] for n in names], dtype=np.int64)
    which = np.searchsorted(starts, seqs, side="right") - 1
    # seqs ascend and the shards' ranges follow scan order, so the table is appended in order
    for k in np.unique(which).tolist():
        o = ok[k]
        with workfile.WorkFileReader(work_path(work_dir, o.shard)) as r:
            t = r.read_columns(["id", "row", "label", "detail"])
        t = t.filter(t.column("detail").is_null())
        mine = seqs[which == k]
        local = pa.array(mine - starts[k])
        table.append(mine, t.column("id").take(local), table.labels.encode(t.column("label").take(local).to_pylist()),
                     t.column("row").take(local).to_numpy(), np.full(mine.size, k, np.int32))
    return table
