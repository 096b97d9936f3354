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
guard keeps every indexed row's label to tell). The duplicate clusters keep
growing too: a copy the guard scores joins its cluster's size and majority label
(unless the cluster already holds its text under its label: filtering the same
rows again does not grow them), so a flood that first appears in the stream is
dropped from the batch in which its cluster passes ``flood_size`` on (see
:class:`~shardguard.scoring.GrowingClusters`). Scoring shares the scan's
:class:`~shardguard.scoring.BatchScorer`; every table grows by amortised O(1)
work a row.

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
from shardguard.scoring import BatchScorer, GrowingClusters, LabelCodes, RootTable
from shardguard.mixing import id_hashes
from shardguard.stages import DuplicateVerdict
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
#: 4: statements in the near-duplicate index, rootfeat.labels and .seen_words;
#: 5: the clusters' copies (clusters.copy_*, their ids as hashes) and clusters.judged, so that a
#: guard keeps growing them.
PROFILE_FORMAT_VERSION = 5


def _profile_digest(profile: Mapping[str, Any]) -> str:
    """sha256 of the profile's canonical JSON, without its own ``profile_sha256``."""
    return json_digest(profile, "profile_sha256")


#: The guard's own arrays: dtype kinds allowed and number of dimensions.
_ARRAY_KINDS = {
    "roots.seqs": ("i", 1), "roots.id_offsets": ("i", 1), "roots.id_data": ("u", 1), "roots.rows": ("i", 1),
    "roots.shards": ("i", 1), "roots.labels": ("i", 1), "clusters.roots": ("i", 1), "clusters.counts": ("i", 1),
    "clusters.reference": ("i", 1), "clusters.majority": ("i", 1), "rootfeat.seqs": ("i", 1),
    "rootfeat.labels": ("u", 1), "rootfeat.seen_words": ("u", 1), "clusters.flood": ("b", 1),
    "clusters.judged": ("i", 1), "clusters.copy_roots": ("i", 1), "clusters.copy_labels": ("i", 1),
    "clusters.copy_length": ("i", 1), "clusters.copy_words": ("i", 1), "clusters.copy_h_full": ("u", 1),
    "clusters.copy_seqs": ("i", 1), "clusters.copy_ids": ("u", 1),
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
    for key in ("clusters.counts", "clusters.reference", "clusters.majority", "clusters.flood", "clusters.judged"):
        if arrays[key].shape[0] != m:
            raise ProfileError(f"{where}: array {key} has {arrays[key].shape[0]} entries, clusters.roots {m}")
    c = arrays["clusters.copy_roots"].shape[0]
    for key in (k for k in _ARRAY_KINDS if k.startswith("clusters.copy_")):
        if arrays[key].shape[0] != c:
            raise ProfileError(f"{where}: array {key} has {arrays[key].shape[0]} entries, clusters.copy_roots {c}")
    n_labels = len(profile.get("labels") or [])
    for key in ("roots.labels", "clusters.reference", "clusters.majority", "clusters.copy_labels"):
        a = arrays[key]
        if a.size and (a.min() < -1 or a.max() >= n_labels):
            raise ProfileError(f"{where}: array {key} names a label outside the profile's vocabulary")
    a = arrays["roots.shards"]  # -1: a root first seen in a filtered stream, no fitted shard's
    if a.size and (a.min() < -1 or a.max() >= len(profile.get("shards") or [])):
        raise ProfileError(f"{where}: array roots.shards names a shard outside the profile's list")


class ProfileError(ValueError):
    """A saved profile cannot be loaded: wrong format, version, model, or tampered."""


def _kept(verdicts: pa.Table) -> pa.ChunkedArray:
    """True for the rows a filter lets through: clean, or allowed by a review."""
    return pc.is_in(verdicts.column("status"), value_set=pa.array(["clean", "allowed"]))


def _copy_ids(pipeline: Any, state: Any) -> np.ndarray:
    """xxh3 hashes of the ids of the copies the scan recorded (uint64, in
    ``DuplicateClusters.copies`` order), read from pass 1's work files as the scan reads its
    roots' ids (``shardguard.passes.index.root_table``)."""
    from shardguard.passes.index import root_table

    seqs = state.clusters.copies()[3]
    if seqs is None or not seqs.size:
        return np.zeros(0 if seqs is None else seqs.size, np.uint64)
    ok = [o for o in state.outcomes if o.status == "ok"]
    rows = root_table(np.unique(seqs), ok, state.seq_start, state.work_dir)
    found, pos = rows.positions(seqs)
    if not found.all():
        raise RuntimeError(f"{int((~found).sum())} recorded copies are missing from the work files")
    return id_hashes(rows.ids(pos))


class Guard:
    """A fitted poisoning filter. Build with :meth:`fit` or :meth:`load`, not directly."""

    def __init__(
        self,
        config: Config,
        detectors: Mapping[str, EmbeddingDetector],
        dup_index: NearDuplicateIndex | None,
        roots: RootTable,
        clusters: GrowingClusters,
        labels: LabelCodes,
        embedder_info: dict[str, Any] | None,
        embedder: Any = None,
    ):
        """Built by :meth:`fit` and :meth:`load`: ``roots`` and ``clusters`` share ``labels``
        (and ``clusters`` the index's root features)."""
        self.config = config
        self.detectors = dict(detectors)
        self.dup_index = dup_index
        self._roots = roots
        self._clusters = clusters
        self._labels = labels
        self._root_features = clusters.root_features
        self._allow = allowed_ids(config.review.allow)  # review.allow: ids confirmed clean, kept as "allowed"
        self._pid = os.getpid()  # the process that built the guard (see _in_this_process)
        self._memo = self._new_memo()
        self.embedder_info = embedder_info
        self._embedder = embedder
        self._shard = Shard(Path("<stream>"), Path("."), "<stream>", "arrow")

    @property
    def shard_names(self) -> list[str]:
        """The fitted shards, in scan order."""
        return self._roots.shard_names

    @property
    def _scorer(self) -> BatchScorer:
        # built on use: the detectors and tables are the guard's own, shared, not copied
        return BatchScorer(self.detectors, self.config.near_duplicates.copies, self._clusters, self._roots,
                           self.score_columns, self._allow, self.config.review.text_chars)

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
            copy_ids = _copy_ids(pipeline, state) if config.input.id_column else None
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
        names = [o.shard.name for o in state.outcomes if o.status == "ok"]
        labels = LabelCodes()
        roots = RootTable(labels, names)
        if state.root_seqs:
            roots.append(np.concatenate(state.root_seqs),
                         pa.concat_arrays([a.cast(pa.large_string()) for a in state.root_ids]),
                         labels.encode(np.concatenate(state.root_labels).tolist()),
                         np.concatenate(state.root_rows), np.concatenate(state.root_shards))
        nd = config.near_duplicates
        c_roots, c_labels, c_feats, c_seqs = state.clusters.copies()
        copies = {"roots": c_roots, "labels": labels.encode(c_labels.tolist()),
                  "length": c_feats.length, "words": c_feats.words, "h_full": c_feats.h_full, "seqs": c_seqs,
                  "ids": np.zeros(c_roots.size, np.uint64) if copy_ids is None else copy_ids}
        clusters = GrowingClusters(nd.flood_size, nd.flood_agreement, labels, state.root_features, table.roots,
                                   table.sizes, labels.encode(table.reference.tolist()),
                                   labels.encode(table.majority.tolist()), table.flood, copies=copies)
        return cls(config, state.detectors, state.dup_index, roots, clusters, labels, state.embedder_info,
                   state.embedder)

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
        near-duplicate index, and copies their clusters (sizes, majority labels, floods).
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
        scorer = self._scorer
        dups = self._duplicates(scorer, nb.valid, vidx, n) if self.dup_index is not None else None
        X = y = texts = responses = None
        if self.detectors and vidx.size:
            X = self._embed(nb.valid)
            y = nb.valid.column("label").to_numpy(zero_copy_only=False)
            texts = nb.valid.column("text").to_numpy(zero_copy_only=False)
            responses = (nb.valid.column("response").to_numpy(zero_copy_only=False)
                         if "response" in nb.valid.schema.names else None)
        table, _ = scorer(rows_tbl, valid, dups, X, y, texts, responses)
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

    def _duplicates(self, scorer: BatchScorer, valid_batch: pa.RecordBatch, vidx: np.ndarray, n: int
                    ) -> DuplicateVerdict:
        """Index the valid rows (``valid_batch``, at ``vidx`` of the ``n`` rows), grow the
        clusters by the copies among them, and judge all ``n`` rows as scan does."""
        ids = valid_batch.column("id")
        labels = valid_batch.column("label").to_numpy(zero_copy_only=False)
        nd = self.config.near_duplicates
        first = self.dup_index.n_docs
        judged = labels if nd.copies == "conflicting" else None  # as scan judges
        texts = valid_batch.column("text")
        added, contradicts, feats = index_texts(self.dup_index, self._root_features, texts, judged)
        root, sim = added.root, np.asarray(added.sim, dtype=np.float64)
        codes = self._labels.encode(labels.tolist())
        # rows new to the index as roots are remembered with their ids and labels
        is_root = added.new_root
        self._roots.append(first + np.flatnonzero(is_root), pc.filter(ids, pa.array(is_root)), codes[is_root])
        member = np.flatnonzero(root >= 0)
        found, pos = self._roots.positions(root[member])
        root_id = np.full(member.size, None, dtype=object)
        root_id[found] = self._roots.ids(pos)
        root_code = np.full(member.size, -2, np.int32)  # -2: no label known (never equal to a row's)
        root_code[found] = self._roots.label_codes(pos)
        # a fitted (or earlier) row scored again is that row, not a copy of it
        if self.config.input.id_column:
            is_self = root_id == ids.to_numpy(zero_copy_only=False)[member]
        else:
            is_self = (sim[member] >= 1.0) & (codes[member] == root_code)
        copy = member[~is_self]
        copy_ids = None  # without ids, a copy is told from a row its cluster holds by text and label
        if self.config.input.id_column:
            copy_ids = id_hashes(ids.take(pa.array(copy, pa.int64())).to_pylist())
        self._clusters.grow(root[copy], np.maximum(root_code[~is_self], -1), codes[copy], feats.take(copy),
                            first + copy, texts.take(pa.array(copy, pa.int64())).to_pylist(), copy_ids)
        # all n rows: the root each copies, its own cluster key, similarity, contradictions, labels
        copy_of = np.full(n, -1, np.int64)
        copy_of[vidx[copy]] = root[copy]
        own = np.full(n, -1, np.int64)
        own[vidx] = first + np.arange(vidx.size)
        own[vidx[member[is_self]]] = root[member[is_self]]
        sim_n = np.full(n, np.nan)
        sim_n[vidx] = sim
        judged_n = np.zeros(n, bool)
        judged_n[vidx] = contradicts
        labels_n = np.full(n, None, dtype=object)
        labels_n[vidx] = labels
        return scorer.duplicates(labels_n, copy_of, sim_n, own, judged_n)

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
        """Write the profile folder: ``profile.json`` and ``arrays.npz``; no pickle. The clusters
        and roots grown by the rows scored so far are saved with the fitted ones."""
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
        arrays.update(self._roots.arrays("roots."))
        arrays.update(self._clusters.arrays("clusters."))
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
                               f"(this shardguard reads format {PROFILE_FORMAT_VERSION}): fit the guard again "
                               f"(Guard.fit) and save it")
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
        labels = LabelCodes(profile.get("labels", []))
        roots = RootTable.from_arrays(arrays, "roots.", labels, profile.get("shards", []))
        root_features = RootFeatures(arrays["rootfeat.seqs"], StatementFeatures.from_arrays(arrays, "rootfeat."),
                                     arrays["rootfeat.labels"], arrays["rootfeat.seen_words"])
        nd = config.near_duplicates
        clusters = GrowingClusters.from_arrays(arrays, "clusters.", nd.flood_size, nd.flood_agreement, labels,
                                               root_features)
        return cls(config, detectors, dup_index, roots, clusters, labels, profile.get("embedder"), embedder)
