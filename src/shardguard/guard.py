"""The library object for data-loading code: a fitted :class:`Guard`.

``Guard.fit`` runs the same pass 1 and fit as ``shardguard scan`` (one
implementation, not two) and keeps what scoring needs: the embedder, the fitted
detectors, the near-duplicate index with the ids of the rows it indexed, and
the duplicate clusters' sizes. Scoring a batch then follows pass 2 row for row,
so ``Guard.filter`` drops exactly what ``scan`` quarantines for the same data
and config.

Identity of rows: with ``input.id_column`` configured, a row whose id equals
the id of the fitted row it matches IS that row (not a repeat), so filtering
the training data itself, epoch after epoch, drops only what scan flagged.
Without an id column, a row that is an exact copy (after normalisation) of an
indexed row, with the same label, is taken to be that row; near-copies are repeats.

Streams: every row the guard has not seen before is added to the index, so a
stream filtered through a guard also drops later repeats of what it let
through (which repeats count is ``near_duplicates.copies``, as in scan; the
guard keeps every indexed row's label to tell). Duplicate-flood status uses the
cluster sizes and majority labels known at fit time.

Profiles (``save``/``load``) hold JSON and one ``.npz`` of plain numeric arrays
(loaded with ``allow_pickle=False``; the isolation forest travels as skops
bytes checked against a list of trusted types), with a sha256 of the arrays in
the JSON and a sha256 of the JSON itself (``profile_sha256``, over its
canonical form without that field): loading a profile never runs code, and a
tampered one -- arrays, thresholds or label vocabulary -- is refused, as is an
array of the wrong dtype or shape.
"""

from __future__ import annotations

import dataclasses

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shardguard import __version__
from shardguard.config import Config, config_from_dict
from shardguard.dedup import NearDuplicateIndex, RootFeatures, StatementFeatures, index_texts
from shardguard.detectors import REGISTRY, EmbeddingDetector
from shardguard.embed import make_embedder
from shardguard.io.outputs import json_digest
from shardguard.io.readers import Shard
from shardguard.memo import EmbeddingMemo, text_keys
from shardguard.io.idlist import allowed_ids
from shardguard.io.workfile import cache_dtype, embeddings_from_arrow, embeddings_to_arrow
from shardguard.stages import (
    ClusterTable,
    DuplicateVerdict,
    duplicate_flags,
    text_kwargs,
    verdict_table,
)
from shardguard.validate import RowNormalizer

log = logging.getLogger(__name__)

PROFILE_FORMAT = "shardguard-profile"
#: Said once in each process, other than the guard's own, that filters with the guard.
NOT_SHARED_WARNING = (
    "shardguard Guard used in another process (a DataLoader worker, a datasets.filter(num_proc=N) "
    "worker): rows are checked against the fitted data as usual, but each process keeps its own "
    "near-duplicate index of the new rows it sees, so a repeat of a new row that another process "
    "saw first is not caught. Use one process (num_workers=0, num_proc=1) to catch those too."
)
PROFILE_FORMAT_VERSION = 4  # 4: statements in the near-duplicate index, rootfeat.labels and .seen_words


def _profile_digest(profile: Mapping[str, Any]) -> str:
    """sha256 of the profile's canonical JSON, without its own ``profile_sha256``."""
    return json_digest(profile, "profile_sha256")


#: The guard's own arrays: dtype kinds allowed and number of dimensions.
_ARRAY_KINDS = {
    "roots.seqs": ("i", 1), "roots.id_offsets": ("i", 1), "roots.id_data": ("u", 1), "roots.rows": ("i", 1),
    "roots.shards": ("i", 1), "roots.labels": ("i", 1), "clusters.roots": ("i", 1), "clusters.counts": ("i", 1),
    "clusters.reference": ("i", 1), "clusters.majority": ("i", 1), "rootfeat.seqs": ("i", 1),
    "rootfeat.labels": ("u", 1), "rootfeat.seen_words": ("u", 1),
}


def _check_arrays(arrays: Mapping[str, np.ndarray], profile: Mapping[str, Any], where: Path) -> None:
    """Refuse arrays of another dtype or shape than ``save`` writes, or inconsistent with each other."""
    for key, arr in arrays.items():
        if arr.dtype.kind not in "biuf":
            raise ProfileError(f"{where}: array {key} has dtype {arr.dtype}; profiles hold numeric arrays only")
    for key, (kind, ndim) in _ARRAY_KINDS.items():
        arr = arrays.get(key)
        if arr is None:
            raise ProfileError(f"{where}: array {key} is missing")
        if arr.dtype.kind != kind or arr.ndim != ndim:
            raise ProfileError(f"{where}: array {key} has dtype {arr.dtype} and shape {arr.shape}; "
                               f"expected a {ndim}-D array of kind {kind!r}")
    n = arrays["roots.seqs"].shape[0]
    offsets = arrays["roots.id_offsets"]
    for key in ("roots.rows", "roots.shards", "roots.labels"):
        if arrays[key].shape[0] != n:
            raise ProfileError(f"{where}: array {key} has {arrays[key].shape[0]} entries, roots.seqs {n}")
    if offsets.shape[0] != n + 1 or (n and (offsets[0] != 0 or np.any(np.diff(offsets) < 0)
                                            or offsets[-1] != arrays["roots.id_data"].shape[0])):
        raise ProfileError(f"{where}: array roots.id_offsets does not index roots.id_data")
    if arrays["rootfeat.labels"].shape[0] != arrays["rootfeat.seqs"].shape[0]:
        raise ProfileError(f"{where}: array rootfeat.labels has {arrays['rootfeat.labels'].shape[0]} entries, "
                           f"rootfeat.seqs {arrays['rootfeat.seqs'].shape[0]}")
    m = arrays["clusters.roots"].shape[0]
    for key in ("clusters.counts", "clusters.reference", "clusters.majority"):
        if arrays[key].shape[0] != m:
            raise ProfileError(f"{where}: array {key} has {arrays[key].shape[0]} entries, clusters.roots {m}")
    n_labels = len(profile.get("labels") or [])
    for key in ("roots.labels", "clusters.reference", "clusters.majority"):
        a = arrays[key]
        if a.size and (a.min() < -1 or a.max() >= n_labels):
            raise ProfileError(f"{where}: array {key} names a label outside the profile's vocabulary")
    a = arrays["roots.shards"]
    if a.size and (a.min() < 0 or a.max() >= len(profile.get("shards") or [])):
        raise ProfileError(f"{where}: array roots.shards names a shard outside the profile's list")


class ProfileError(ValueError):
    """A saved profile cannot be loaded: wrong format, version, model, or tampered."""


def _strings_to_arrays(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    arr = arr.cast(pa.large_string())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    return (offsets - offsets[0]).copy(), data[offsets[0]: offsets[-1]].copy()


def _arrays_to_strings(offsets: np.ndarray, data: np.ndarray) -> pa.Array:
    n = len(offsets) - 1
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets.astype(np.int64)), pa.py_buffer(data.astype(np.uint8)))


def _kept(verdicts: pa.Table) -> pa.ChunkedArray:
    """True for the rows a filter lets through: clean, or allowed by a review."""
    return pc.is_in(verdicts.column("status"), value_set=pa.array(["clean", "allowed"]))


class LabelCodes:
    """Labels (str or None) as int32 codes, -1 for None, so that profiles hold plain arrays."""

    def __init__(self, vocabulary: Sequence[str] = ()):
        self.vocabulary = [str(v) for v in vocabulary]
        self._code = {v: i for i, v in enumerate(self.vocabulary)}

    def encode(self, labels: Sequence[Any]) -> np.ndarray:
        """int32 codes of ``labels`` (str or None), growing the vocabulary; one Python step
        per distinct label (Arrow's dictionary encoding does the rows)."""
        enc = pa.array(list(labels), pa.string()).dictionary_encode()
        codes = np.empty(len(enc.dictionary) + 1, np.int32)
        codes[-1] = -1  # index -1 (a null label) -> code -1
        for k, v in enumerate(enc.dictionary.to_pylist()):
            code = self._code.get(v)
            if code is None:
                code = self._code[v] = len(self.vocabulary)
                self.vocabulary.append(v)
            codes[k] = code
        idx = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        return codes[idx]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        table = np.array(self.vocabulary + [None], dtype=object)  # code -1 -> None
        return table[np.asarray(codes, np.int64)]


class Guard:
    """A fitted poisoning filter. Build with :meth:`fit` or :meth:`load`, not directly."""

    def __init__(
        self,
        config: Config,
        detectors: Mapping[str, EmbeddingDetector],
        dup_index: NearDuplicateIndex | None,
        root_seqs: np.ndarray,
        root_ids: pa.Array,
        cluster_roots: np.ndarray,
        cluster_counts: np.ndarray,
        embedder_info: dict[str, Any] | None,
        embedder: Any = None,
        root_rows: np.ndarray | None = None,
        root_shards: np.ndarray | None = None,
        shard_names: Sequence[str] = (),
        root_labels: np.ndarray | None = None,
        cluster_reference: np.ndarray | None = None,
        cluster_majority: np.ndarray | None = None,
        labels: LabelCodes | None = None,
        cluster_flood: np.ndarray | None = None,
        root_features: RootFeatures | None = None,
    ):
        self.config = config
        self.detectors = dict(detectors)
        self.dup_index = dup_index
        self._root_seqs = np.asarray(root_seqs, dtype=np.int64)
        self._root_ids = root_ids.cast(pa.large_string())
        n_roots = self._root_seqs.size
        self._root_rows = np.full(n_roots, -1, np.int64) if root_rows is None else np.asarray(root_rows, np.int64)
        self._root_shards = np.full(n_roots, -1, np.int32) if root_shards is None else np.asarray(root_shards, np.int32)
        self.shard_names = list(shard_names)
        self._cluster_roots = np.asarray(cluster_roots, dtype=np.int64)
        self._cluster_counts = np.asarray(cluster_counts, dtype=np.int64)
        self._labels = labels or LabelCodes()
        n_cl = self._cluster_roots.size
        self._root_labels = np.full(n_roots, -1, np.int32) if root_labels is None else np.asarray(root_labels, np.int32)
        self._cluster_reference = np.full(n_cl, -1, np.int32) if cluster_reference is None else np.asarray(cluster_reference, np.int32)
        self._cluster_majority = np.full(n_cl, -1, np.int32) if cluster_majority is None else np.asarray(cluster_majority, np.int32)
        self._new_labels: list[np.ndarray] = []
        flood_size = config.near_duplicates.flood_size
        self._cluster_flood = (self._cluster_counts + 1 > flood_size) if cluster_flood is None \
            else np.asarray(cluster_flood, bool)
        self._clusters = ClusterTable(self._cluster_roots, self._cluster_counts + 1,
                                      self._labels.decode(self._cluster_reference),
                                      self._labels.decode(self._cluster_majority), self._cluster_flood)
        self._root_features = root_features or RootFeatures()
        self._allow = allowed_ids(config.review.allow)  # review.allow: ids confirmed clean, kept as "allowed"
        self._pid = os.getpid()  # the process that built the guard (see _in_this_process)
        self._memo = self._new_memo()
        self.embedder_info = embedder_info
        self._embedder = embedder
        self._new_seqs: list[np.ndarray] = []
        self._new_ids: list[pa.Array] = []
        self._shard = Shard(Path("<stream>"), Path("."), "<stream>", "arrow")

    # -- building -----------------------------------------------------------------------------
    @classmethod
    def fit(cls, paths: str | Path | Sequence[str | Path], config: Config | None = None,
            work_dir: str | Path | None = None) -> "Guard":
        """Fit on shards (files or folders) exactly as ``scan`` would.

        ``work_dir`` keeps pass 1's work files (the embedding cache) for reuse;
        by default a temporary folder is used and removed.
        """
        from shardguard.pipeline import ScanPipeline

        config = config or Config()
        if isinstance(paths, (str, Path)):
            paths = [paths]
        tmp = None
        if work_dir is None:
            tmp = work_dir = tempfile.mkdtemp(prefix="shardguard-fit-")
        try:
            pipeline = ScanPipeline(config, work_dir)
            state = pipeline.prepare(paths, remember_roots=True)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        failed = [o.status for o in state.outcomes if o.status != "ok"]
        if failed:
            raise ValueError("cannot fit on shards that failed to read:\n" + "\n".join(failed))
        selected = getattr(state.embedder, "selection", None)
        if config.embed.embedder == "auto" and selected:
            # pin what auto chose here: a worker process or a GPU machine must embed the same way
            config = dataclasses.replace(config, embed=dataclasses.replace(config.embed, embedder=selected["embedder"]))
        table = state.clusters.table()
        labels = LabelCodes()
        root_ids = pa.concat_arrays([a.cast(pa.large_string()) for a in state.root_ids]) if state.root_ids \
            else pa.array([], pa.large_string())
        root_seqs = np.concatenate(state.root_seqs) if state.root_seqs else np.zeros(0, np.int64)
        root_rows = np.concatenate(state.root_rows) if state.root_rows else np.zeros(0, np.int64)
        root_shards = np.concatenate(state.root_shards) if state.root_shards else np.zeros(0, np.int32)
        root_labels = labels.encode(np.concatenate(state.root_labels).tolist() if state.root_labels else [])
        names = [o.shard.name for o in state.outcomes if o.status == "ok"]
        return cls(config, state.detectors, state.dup_index, root_seqs, root_ids, table.roots, table.sizes - 1,
                   state.embedder_info, state.embedder, root_rows, root_shards, names, root_labels,
                   labels.encode(table.reference.tolist()), labels.encode(table.majority.tolist()), labels,
                   table.flood, state.root_features)

    @property
    def embedder(self):
        """The embedder, loaded on first use in each process (never pickled with the guard)."""
        self._in_this_process()
        if self._embedder is None:
            self._embedder = make_embedder(self.config.embed, self.config.random_state)
        return self._embedder

    def _new_memo(self) -> EmbeddingMemo | None:
        if self.config.guard.cache_rows <= 0 or self.config.embed.embedder == "precomputed":
            return None  # precomputed features are a column of the row, not a function of its text
        return EmbeddingMemo(self.config.guard.cache_rows, cache_dtype(self.config.embed.embedder))

    # -- processes -------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        """What travels to a DataLoader worker or a ``datasets`` process: everything but the
        embedder (a model holds locks and threads; each process loads its own on first use)
        and the embedding memo; the near-duplicate index as its plain-array state."""
        state = dict(self.__dict__)
        state["_embedder"] = None
        state["_memo"] = None
        if self.dup_index is not None:
            state["dup_index"] = self.dup_index.get_state()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("dup_index") is not None:
            state["dup_index"] = NearDuplicateIndex.from_state(*state["dup_index"])
        self.__dict__.update(state)
        self._memo = self._new_memo()

    def _in_this_process(self, warn: bool = True) -> None:
        """Once per process other than the one that built the guard: the model is used with one
        thread (torch's thread pool does not survive ``fork``: a forked ``datasets`` worker
        would hang in it, as DataLoader workers avoid by the same setting), and a warning that
        the near-duplicate state of rows first seen here is not shared with other processes."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)
        if warn and self.dup_index is not None:
            warnings.warn(NOT_SHARED_WARNING, RuntimeWarning, stacklevel=3)

    @property
    def score_columns(self) -> list[str]:
        from shardguard.pipeline import score_columns

        return score_columns(self.config, list(self.detectors))

    # -- scoring ----------------------------------------------------------------------------------
    def score(self, batch: pa.RecordBatch | pa.Table) -> pa.Table:
        """Every row's verdict: ``id``, ``row`` (0-based in ``batch``), ``status``, ``reasons``,
        ``duplicate_of``, ``label``, ``detail`` and one ``<detector>_score`` column per detector.

        The batch carries the configured columns (text or template fields, and id,
        label, embedding columns where configured). Rows not seen before join the
        near-duplicate index.
        """
        self._in_this_process()
        if isinstance(batch, pa.Table):
            batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else pa.RecordBatch.from_pylist([], batch.schema)
        normalizer = RowNormalizer(self._shard, self.config.input)
        nb = normalizer(batch)
        n = batch.num_rows
        # Put the valid and invalid rows back in input order.
        detail = np.full(n, None, dtype=object)
        inv_rows = nb.invalid.column("row").to_numpy()
        detail[inv_rows] = nb.invalid.column("detail").to_pylist()
        valid = np.ones(n, bool)
        valid[inv_rows] = False
        vidx = np.flatnonzero(valid)
        ids = np.empty(n, dtype=object)
        ids[vidx] = nb.valid.column("id").to_pylist()
        ids[inv_rows] = nb.invalid.column("id").to_pylist()
        labels = np.full(n, None, dtype=object)
        labels[vidx] = nb.valid.column("label").to_pylist()
        texts = np.full(n, None, dtype=object)
        texts[vidx] = nb.valid.column("text").to_pylist()
        rows_tbl = pa.table({"id": pa.array(ids.tolist(), pa.string()), "row": pa.array(np.arange(n)),
                             "label": pa.array(labels.tolist(), pa.string()),
                             "detail": pa.array(detail.tolist(), pa.string()),
                             "text": pa.array(texts.tolist(), pa.string())})
        dups = self._duplicates(nb.valid, vidx, n) if self.dup_index is not None else None
        det_scores = {name: np.full(n, np.nan) for name in self.detectors}
        if self.detectors and vidx.size:
            X = self._embed(nb.valid)
            y = nb.valid.column("label").to_numpy(zero_copy_only=False)
            texts = nb.valid.column("text").to_numpy(zero_copy_only=False)
            responses = (nb.valid.column("response").to_numpy(zero_copy_only=False)
                         if "response" in nb.valid.schema.names else None)
            for name, det in self.detectors.items():
                det_scores[name][vidx] = det.score_samples(X, y, **text_kwargs(det, texts, responses))
        thresholds = {name: det.threshold_ for name, det in self.detectors.items()}
        allowed = None
        if self._allow is not None:
            allowed = pc.is_in(rows_tbl.column("id"), value_set=self._allow).to_numpy(zero_copy_only=False)
        table, _ = verdict_table(rows_tbl, valid, dups, det_scores, thresholds, self.score_columns, allowed,
                                 self.config.review.text_chars)
        return table

    def _embed(self, valid_batch: pa.RecordBatch) -> np.ndarray:
        """Embeddings of the valid rows, rounded as scan's cache rounds them (so scores match it
        exactly); texts already in the memo cost no model call."""
        dtype = cache_dtype(self.config.embed.embedder)
        if self._memo is None:
            X = self.embedder.embed_batch(valid_batch)
            return embeddings_from_arrow(embeddings_to_arrow(X, dtype), X.shape[1])
        keys = text_keys(valid_batch.column("text").to_pylist())
        known, X_known = self._memo.lookup(keys)
        if X_known is not None and known.all():
            return X_known
        miss = np.flatnonzero(~known)
        X_new = self.embedder.embed_batch(valid_batch.take(pa.array(miss)))
        X_new = embeddings_from_arrow(embeddings_to_arrow(X_new, dtype), X_new.shape[1])
        self._memo.add(keys[miss], X_new)
        X = np.empty((keys.size, X_new.shape[1]), np.float32)
        X[miss] = X_new
        if X_known is not None:
            X[known] = X_known
        return X

    def _duplicates(self, valid_batch: pa.RecordBatch, vidx: np.ndarray, n: int) -> DuplicateVerdict:
        ids = valid_batch.column("id")
        labels = valid_batch.column("label").to_numpy(zero_copy_only=False)
        nd = self.config.near_duplicates
        first = self.dup_index.n_docs
        judged = labels if nd.copies == "conflicting" else None  # as scan judges
        added, contradicts, _ = index_texts(self.dup_index, self._root_features, valid_batch.column("text"), judged)
        root, sim = added.root, np.asarray(added.sim, dtype=np.float64)
        # Rows new to the index are remembered with their ids and labels.
        is_root = added.new_root
        self._new_seqs.append(first + np.flatnonzero(is_root))
        self._new_ids.append(pc.filter(ids, pa.array(is_root)).cast(pa.large_string()))
        self._new_labels.append(self._labels.encode(labels[is_root].tolist()))
        member = root >= 0
        root_id = np.full(root.size, None, dtype=object)
        root_shard = np.full(root.size, None, dtype=object)
        root_row = np.full(root.size, None, dtype=object)
        root_label = np.full(root.size, None, dtype=object)
        found = self._roots_of(root[member])
        for i, hit in zip(np.flatnonzero(member).tolist(), found):
            if hit is not None:
                root_id[i], root_shard[i], root_row[i], root_label[i] = hit
        if self.config.input.id_column:
            is_self = member & (root_id == ids.to_numpy(zero_copy_only=False))
        else:
            is_self = member & (sim >= 1.0) & np.asarray(labels == root_label, bool)
        is_copy_v = member & ~is_self
        own = np.where(is_self, root, first + np.arange(root.size))  # the row's own cluster key if it is a root
        _, _, _, majority, in_flood = self._clusters.lookup(np.where(is_copy_v, root, own))
        # A copy is judged against the label of the earliest earlier row that says what it says.
        is_member_v, flood_v = duplicate_flags(nd.copies, is_copy_v, labels, in_flood, root_label, majority,
                                               contradicts)

        is_member = np.zeros(n, bool)
        is_member[vidx] = is_member_v
        score = np.full(n, np.nan)
        score[vidx] = np.where(is_copy_v, sim, np.nan)
        dup_of = np.full(n, None, dtype=object)
        dup_of[vidx[is_copy_v]] = root_id[is_copy_v]
        of_shard = np.full(n, None, dtype=object)
        of_shard[vidx[is_copy_v]] = root_shard[is_copy_v]
        of_row = np.full(n, None, dtype=object)
        of_row[vidx[is_copy_v]] = root_row[is_copy_v]
        flood = np.zeros(n, bool)
        flood[vidx] = flood_v
        return DuplicateVerdict(is_member, score, dup_of, flood, of_shard, of_row)

    def _roots_of(self, seqs: np.ndarray) -> list[tuple[str, str | None, int | None, Any] | None]:
        """(id, shard, row, label) of indexed rows by sequence number: fitted ones, then the stream's."""
        if sum(a.size for a in self._new_seqs) > 4096:
            self._fold_new()
        out: list[tuple[str, str | None, int | None, Any] | None] = [None] * seqs.size
        for table_seqs, table_ids, rows, shards, label_codes in (
            (self._root_seqs, self._root_ids, self._root_rows, self._root_shards, self._root_labels),
            *self._pending(),
        ):
            if table_seqs.size == 0:
                continue
            pos = np.minimum(np.searchsorted(table_seqs, seqs), table_seqs.size - 1)
            hit = table_seqs[pos] == seqs
            if hit.any():
                p = pos[hit]
                vals = table_ids.take(pa.array(p)).to_pylist()
                labs = self._labels.decode(label_codes[p]).tolist()
                for i, v, r, sh, lab in zip(np.flatnonzero(hit).tolist(), vals, rows[p].tolist(), shards[p].tolist(), labs):
                    out[i] = (v, self.shard_names[sh] if sh >= 0 else None, r if sh >= 0 else None, lab)
        return out

    def _pending(self) -> list[tuple[np.ndarray, pa.Array, np.ndarray, np.ndarray, np.ndarray]]:
        if not self._new_seqs:
            return []
        seqs = np.concatenate(self._new_seqs)
        return [(seqs, pa.concat_arrays(self._new_ids), np.full(seqs.size, -1, np.int64),
                 np.full(seqs.size, -1, np.int32), np.concatenate(self._new_labels))]

    def _fold_new(self) -> None:
        """Append the rows remembered from the stream to the root table (sequence numbers only grow)."""
        if not self._new_seqs:
            return
        (seqs, ids, rows, shards, labels), = self._pending()
        self._root_seqs = np.concatenate([self._root_seqs, seqs])
        self._root_ids = pa.concat_arrays([self._root_ids, ids])
        self._root_rows = np.concatenate([self._root_rows, rows])
        self._root_shards = np.concatenate([self._root_shards, shards])
        self._root_labels = np.concatenate([self._root_labels, labels])
        self._new_seqs, self._new_ids, self._new_labels = [], [], []

    def filter(self, batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
        """The rows of ``batch`` that are clean (or allowed by ``review.allow``), with all their
        columns (same type out as in)."""
        return batch.filter(_kept(self.score(batch)))

    def iter_clean(self, batches: Iterable[pa.RecordBatch | pa.Table]) -> Iterator[pa.RecordBatch | pa.Table]:
        """Filter a stream of Arrow batches; empty results are skipped."""
        for batch in batches:
            out = self.filter(batch)
            if out.num_rows:
                yield out

    def keep_mask(self, columns: Mapping[str, Sequence[Any]]) -> list[bool]:
        """True for each clean row of a column-oriented batch (dict of lists)."""
        needed = RowNormalizer(self._shard, self.config.input).source_columns()
        missing = [c for c in needed if c not in columns]
        if missing:
            raise KeyError(f"samples lack the configured column(s) {', '.join(map(repr, missing))}")
        verdicts = self.score(pa.RecordBatch.from_pydict({k: list(columns[k]) for k in needed}))
        return _kept(verdicts).to_pylist()

    def hf_filter(self) -> Callable[[Mapping[str, Sequence[Any]]], list[bool]]:
        """A function for ``datasets.Dataset.filter(guard.hf_filter(), batched=True)``."""
        return self.keep_mask

    def wrap(self, dataset: Iterable[Mapping[str, Any]], batch_size: int = 256, split_workers: bool = True):
        """A torch ``IterableDataset`` yielding only the clean samples of ``dataset``.

        ``dataset`` yields dict samples holding the configured columns (any
        iterable works, a torch IterableDataset included); samples are scored in
        batches of ``batch_size`` and yielded unchanged, in order. In a DataLoader
        with workers (fork, spawn or forkserver) each worker takes every
        ``num_workers``-th sample (``torch.utils.data.get_worker_info``), so no sample
        is lost or repeated; pass ``split_workers=False`` when ``dataset`` already
        splits itself across workers. Each worker loads the model itself and keeps
        its own near-duplicate index of new rows (a warning says so when there are
        several).
        """
        from shardguard.torch_data import GuardedIterableDataset

        return GuardedIterableDataset(self, dataset, batch_size, split_workers)

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the profile folder: ``profile.json`` and ``arrays.npz``; no pickle."""
        self._fold_new()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        det_meta = {}
        for name, det in self.detectors.items():
            meta, arrs = det.get_state()
            det_meta[name] = {"class": type(det).__name__, "params": det.get_params(), "meta": meta}
            for k, v in arrs.items():
                arrays[f"detector.{name}.{k}"] = np.asarray(v)
        nd_meta = None
        if self.dup_index is not None:
            nd_meta, arrs = self.dup_index.get_state()
            for k, v in arrs.items():
                arrays[f"near_duplicates.{k}"] = np.asarray(v)
        offsets, data = _strings_to_arrays(self._root_ids)
        arrays["roots.seqs"] = self._root_seqs
        arrays["roots.id_offsets"] = offsets
        arrays["roots.id_data"] = data
        arrays["roots.rows"] = self._root_rows
        arrays["roots.shards"] = self._root_shards
        arrays["roots.labels"] = self._root_labels
        arrays["clusters.roots"] = self._cluster_roots
        arrays["clusters.counts"] = self._cluster_counts
        arrays["clusters.reference"] = self._cluster_reference
        arrays["clusters.majority"] = self._cluster_majority
        arrays["clusters.flood"] = self._cluster_flood
        arrays["rootfeat.seqs"] = self._root_features.seqs
        arrays["rootfeat.labels"] = self._root_features.labels
        arrays["rootfeat.seen_words"] = self._root_features.seen.hashes
        arrays.update(self._root_features.features.arrays("rootfeat."))
        for k, v in arrays.items():
            if v.dtype == object:
                raise TypeError(f"profile array {k} has dtype object; only numeric arrays are saved")
        npz = path / "arrays.npz"
        np.savez_compressed(npz, **arrays)
        profile = {
            "format": PROFILE_FORMAT,
            "format_version": PROFILE_FORMAT_VERSION,
            "shardguard_version": __version__,
            "config": self.config.to_dict(),
            "embedder": self.embedder_info,
            "detectors": det_meta,
            "near_duplicates": nd_meta,
            "shards": self.shard_names,
            "labels": self._labels.vocabulary,
            "arrays_sha256": hashlib.sha256(npz.read_bytes()).hexdigest(),
        }
        profile["profile_sha256"] = _profile_digest(profile)
        (path / "profile.json").write_text(json.dumps(profile, indent=2, default=str) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, check_model: bool = True) -> "Guard":
        """Load a profile written by :meth:`save`; refuses anything it cannot trust.

        With ``check_model`` (default) the configured embedder is built and its
        identity (model name and weights sha256) must equal the profile's.
        """
        path = Path(path)
        try:
            profile = json.loads((path / "profile.json").read_text())
        except (OSError, ValueError) as exc:
            raise ProfileError(f"{path}: no readable profile.json ({exc})") from exc
        if not isinstance(profile, dict) or profile.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"{path}: not a shardguard profile")
        if profile.get("format_version") != PROFILE_FORMAT_VERSION:
            raise ProfileError(f"{path}: profile format {profile.get('format_version')} is not supported "
                               f"(this shardguard reads format {PROFILE_FORMAT_VERSION})")
        if profile.get("profile_sha256") != _profile_digest(profile):
            raise ProfileError(f"{path / 'profile.json'}: sha256 does not match its contents: the profile was altered")
        saved = str(profile.get("shardguard_version", ""))
        if saved.split(".")[:2] != __version__.split(".")[:2]:
            raise ProfileError(f"{path}: profile written by shardguard {saved}; this is {__version__}: fit it again")
        npz = path / "arrays.npz"
        try:
            blob = npz.read_bytes()
        except OSError as exc:
            raise ProfileError(f"{path}: arrays.npz missing ({exc})") from exc
        if hashlib.sha256(blob).hexdigest() != profile.get("arrays_sha256"):
            raise ProfileError(f"{npz}: sha256 does not match profile.json: the profile was altered")
        try:
            with np.load(npz, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except ValueError as exc:
            raise ProfileError(f"{npz}: refused ({exc}); profiles hold plain arrays only") from exc
        _check_arrays(arrays, profile, npz)
        try:
            config = config_from_dict(profile["config"])
            detectors = {}
            for name, d in profile.get("detectors", {}).items():
                if name not in REGISTRY or REGISTRY[name].__name__ != d.get("class"):
                    raise ProfileError(f"{path}: unknown detector {name!r} ({d.get('class')})")
                prefix = f"detector.{name}."
                arrs = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
                detectors[name] = REGISTRY[name].from_state(d["params"], d["meta"], arrs)
            dup_index = None
            if profile.get("near_duplicates") is not None:
                arrs = {k[len("near_duplicates."):]: v for k, v in arrays.items() if k.startswith("near_duplicates.")}
                dup_index = NearDuplicateIndex.from_state(profile["near_duplicates"], arrs)
        except ProfileError:
            raise
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ProfileError(f"{path}: refused: {type(exc).__name__}: {exc}") from exc
        root_ids = _arrays_to_strings(arrays["roots.id_offsets"], arrays["roots.id_data"])
        embedder = None
        if check_model and detectors:
            saved_kind = (profile.get("embedder") or {}).get("kind")
            if config.embed.embedder == "auto" and saved_kind:
                # auto may pick another embedder on this machine than where the guard was fitted
                config.embed = dataclasses.replace(config.embed, embedder=saved_kind)
            embedder = make_embedder(config.embed, config.random_state)
            current = embedder.describe()
            saved_e = profile.get("embedder") or {}
            for key in ("kind", "model", "weights_sha256", "dim"):
                if key in saved_e and key in current and saved_e[key] != current[key] and saved_e[key] is not None:
                    raise ProfileError(
                        f"{path}: fitted with embedder {key}={saved_e[key]!r}, but this machine's configured "
                        f"embedder has {key}={current[key]!r}; use the same model or fit again"
                    )
        return cls(config, detectors, dup_index, arrays["roots.seqs"], root_ids, arrays["clusters.roots"],
                   arrays["clusters.counts"], profile.get("embedder"), embedder, arrays["roots.rows"],
                   arrays["roots.shards"], profile.get("shards", []), arrays["roots.labels"],
                   arrays["clusters.reference"], arrays["clusters.majority"], LabelCodes(profile.get("labels", [])),
                   arrays["clusters.flood"],
                   RootFeatures(arrays["rootfeat.seqs"], StatementFeatures.from_arrays(arrays, "rootfeat."),
                                arrays["rootfeat.labels"], arrays["rootfeat.seen_words"]))
