"""Scoring one batch: shared by ``scan``'s pass 2 and the library ``Guard``.

:class:`BatchScorer` turns a batch's near-duplicate findings, embeddings, texts,
responses, labels and ids into every row's verdict with the fitted detectors,
thresholds and cluster state; pass 2 and ``Guard.score`` differ only in where the
findings come from (pass 1's records or the guard's live index) and in which
cluster and root tables they look up. The guard's own tables grow with the rows it
scores, each append amortised O(1):

* :class:`LabelCodes`: labels as int32 codes, so that tables and profiles hold plain arrays;
* :class:`RootTable`: the rows the near-duplicate index keeps as roots, by sequence
  number -- id, shard, row, label -- for naming what a copy duplicates;
* :class:`GrowingClusters`: duplicate clusters (size, reference and majority label,
  flood) fitted by the scan, grown by the copies the guard scores.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shardguard.dedup.consensus import FLOOD_CHARS
from shardguard.dedup.statements import RootFeatures, StatementFeatures
from shardguard.dedup.storage import _Growable
from shardguard.stages import (
    FLOOD_SAMPLE,
    DuplicateVerdict,
    duplicate_flags,
    flood_flags,
    majority_labels,
    text_kwargs,
    verdict_table,
)


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
        """Labels (object ``(n,)``, None for code -1) of int codes ``(n,)``."""
        table = np.array(self.vocabulary + [None], dtype=object)  # code -1 -> None
        return table[np.asarray(codes, np.int64)]


class RootLookup(Protocol):
    def lookup(self, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(id, shard, row, label), object arrays ``(k,)``, of the roots with these sequence
        numbers; None where unknown."""


class ClusterLookup(Protocol):
    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(found, size, reference, majority, flood) of the clusters with these root sequence
        numbers, as :meth:`~shardguard.stages.ClusterTable.lookup` gives them."""


def strings_to_arrays(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (int64 ``(n+1,)``, from 0) and UTF-8 bytes (uint8) of a string array without nulls."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], pa.large_string())
    arr = arr.cast(pa.large_string())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    return (offsets - offsets[0]).copy(), data[offsets[0]: offsets[-1]].copy()


def arrays_to_strings(offsets: np.ndarray, data: np.ndarray) -> pa.Array:
    """The string array :func:`strings_to_arrays` took apart (no copy of ``data``)."""
    n = len(offsets) - 1
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(np.ascontiguousarray(offsets, np.int64)),
                                            pa.py_buffer(np.ascontiguousarray(data, np.uint8)))


class RootTable:
    """The rows the near-duplicate index keeps as roots, by sequence number: id, shard and row
    (-1: a row of a stream, not of a fitted shard), label code.

    Roots arrive in increasing sequence order, so every column is an append-only array
    with geometric growth (amortised O(1) a root, no copy of the table per batch) and a
    lookup is a binary search. 32 bytes a root (sequence number, id offset, row: 8 each;
    shard, label: 4 each) plus its id's bytes, and up to a quarter more of growth room.
    """

    COLUMNS = ("seqs", "id_offsets", "id_data", "rows", "shards", "labels")

    def __init__(self, labels: LabelCodes, shard_names: Sequence[str] = ()) -> None:
        self.labels = labels  # decodes the label codes (shared with the guard's other tables)
        self.shard_names = list(shard_names)
        self._seqs = _Growable(None, np.int64)
        self._id_offsets = _Growable(None, np.int64)
        self._id_offsets.append(np.zeros(1, np.int64))
        self._id_data = _Growable(None, np.uint8)
        self._rows = _Growable(None, np.int64)
        self._shards = _Growable(None, np.int32)
        self._labels = _Growable(None, np.int32)

    def __len__(self) -> int:
        return self._seqs.n

    def append(self, seqs: np.ndarray, ids: pa.Array | pa.ChunkedArray, labels: np.ndarray,
               rows: np.ndarray | None = None, shards: np.ndarray | None = None) -> None:
        """Remember roots ``seqs`` (int64 ``(m,)``, increasing, after every root so far), their
        ids (strings), label codes (int32) and, for fitted rows, row and shard index."""
        m = len(seqs)
        if not m:
            return
        offsets, data = strings_to_arrays(ids)
        self._id_offsets.append(offsets[1:] + self._id_data.n)
        self._id_data.append(data)
        self._seqs.append(np.asarray(seqs, np.int64))
        self._labels.append(np.asarray(labels, np.int32))
        self._rows.append(np.full(m, -1, np.int64) if rows is None else np.asarray(rows, np.int64))
        self._shards.append(np.full(m, -1, np.int32) if shards is None else np.asarray(shards, np.int32))

    def positions(self, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found bool ``(k,)``, position of each found root ``(found.sum(),)``)."""
        keys = self._seqs.view
        seqs = np.asarray(seqs, np.int64)
        if not keys.size:
            return np.zeros(seqs.size, bool), np.zeros(0, np.int64)
        pos = np.minimum(np.searchsorted(keys, seqs), keys.size - 1)
        found = keys[pos] == seqs
        return found, pos[found]

    def subset(self, seqs: np.ndarray) -> "RootTable":
        """The roots among ``seqs`` (sorted int64) as a table of their own, same lookups for them."""
        found, pos = self.positions(seqs)
        t = RootTable(self.labels, self.shard_names)
        if pos.size:
            ids = arrays_to_strings(self._id_offsets.view, self._id_data.view).take(pa.array(pos, pa.int64()))
            t.append(self._seqs.view[pos], ids, self._labels.view[pos], self._rows.view[pos], self._shards.view[pos])
        return t

    def ids(self, pos: np.ndarray) -> list[str]:
        return arrays_to_strings(self._id_offsets.view, self._id_data.view).take(pa.array(pos, pa.int64())).to_pylist()

    def label_codes(self, pos: np.ndarray) -> np.ndarray:
        return self._labels.view[pos]

    def label_of(self, seqs: np.ndarray) -> np.ndarray:
        """Labels (object ``(k,)``, None where unknown or unlabelled) of the roots ``seqs``,
        without building their ids (the cluster fit needs only these)."""
        out = np.full(len(seqs), None, dtype=object)
        found, pos = self.positions(seqs)
        out[found] = self.labels.decode(self._labels.view[pos])
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of the table's arrays, their unused growth room included."""
        return sum(g.data.nbytes for g in (self._seqs, self._id_offsets, self._id_data, self._rows,
                                           self._shards, self._labels))

    def lookup(self, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(id, shard, row, label) of the roots ``seqs``, object arrays ``(k,)``, None where unknown."""
        k = len(seqs)
        out = [np.full(k, None, dtype=object) for _ in range(4)]
        found, pos = self.positions(seqs)
        if pos.size:
            out[0][found] = self.ids(pos)
            shards = self._shards.view[pos]
            fitted = shards >= 0
            names = np.array(self.shard_names + [None], dtype=object)
            out[1][found] = names[np.where(fitted, shards, len(self.shard_names))]
            rows = np.full(pos.size, None, dtype=object)
            rows[fitted] = self._rows.view[pos][fitted].tolist()
            out[2][found] = rows
            out[3][found] = self.labels.decode(self._labels.view[pos])
        return out[0], out[1], out[2], out[3]

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The table as plain arrays for a profile, named ``<prefix><column>``."""
        cols = (self._seqs, self._id_offsets, self._id_data, self._rows, self._shards, self._labels)
        return {prefix + c: g.view.copy() for c, g in zip(self.COLUMNS, cols)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str, labels: LabelCodes,
                    shard_names: Sequence[str]) -> "RootTable":
        t = cls(labels, shard_names)
        ids = arrays_to_strings(arrays[prefix + "id_offsets"], arrays[prefix + "id_data"])
        t.append(arrays[prefix + "seqs"], ids, arrays[prefix + "labels"], arrays[prefix + "rows"],
                 arrays[prefix + "shards"])
        return t

    def __getstate__(self) -> dict[str, Any]:
        return {"labels": self.labels, "shard_names": self.shard_names, "arrays": self.arrays("")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(RootTable.from_arrays(state["arrays"], "", state["labels"],
                                                   state["shard_names"]).__dict__)


_MIX = np.uint64(0x9E3779B97F4A7C15)


def _held_keys(roots: np.ndarray, h_full: np.ndarray, codes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """64-bit keys, ``(m,)`` uint64, of (cluster root, id hash) where the row has an id hash
    (not 0), else of (cluster root, normalised text hash, label code)."""
    ids = np.asarray(ids, np.uint64)
    with np.errstate(over="ignore"):
        r = np.asarray(roots, np.int64).astype(np.uint64) * _MIX
        by_text = np.asarray(h_full, np.uint64) ^ ((np.asarray(codes, np.int64) + 2).astype(np.uint64)
                                                   * (_MIX >> np.uint64(7)))
        return r ^ np.where(ids != 0, ids, by_text)


class GrowingClusters:
    """Duplicate clusters as the scan fitted them, grown by the copies a guard scores.

    Each cluster (key: its root's sequence number) keeps its size, reference label (its
    root's), majority label and whether it is a flood; its copies keep their root, label
    code, length, word count, text hash, sequence number and id hash in append-only arrays,
    linked per cluster (52 bytes a copy, plus its key in a Python set of held rows, about 70
    more), so that adding a copy is amortised O(1).

    A copy joins its cluster unless the cluster already holds it: with ids, a row of its id;
    without, a row with its normalised text and label (its root or a copy). So the same rows
    filtered epoch after epoch do not grow their clusters, and the fitted rows are held
    already. A cluster that is no flood is judged by the scan's rule
    (:func:`~shardguard.stages.flood_flags`) when it passes ``flood_size`` rows and again each
    time it has grown by a quarter since (geometric, so the work stays O(1) a row). The
    agreement of a cluster under one label or none is measured on the texts of the copies
    the guard scored (up to ``2 * FLOOD_SAMPLE`` a cluster, cut to ``2 * FLOOD_CHARS``
    characters): the fitted rows' texts are not kept, so a cluster is judged only once at
    least half of the rows the scan would sample are such copies.
    """

    def __init__(self, flood_size: int, flood_agreement: float, labels: LabelCodes,
                 root_features: RootFeatures, roots: np.ndarray, sizes: np.ndarray,
                 reference: np.ndarray, majority: np.ndarray, flood: np.ndarray,
                 judged: np.ndarray | None = None, copies: Mapping[str, np.ndarray] | None = None) -> None:
        self.flood_size = flood_size
        self.flood_agreement = flood_agreement
        self.labels = labels
        self.root_features = root_features
        order = np.argsort(np.asarray(roots, np.int64), kind="stable")
        roots = np.asarray(roots, np.int64)[order]
        k = roots.size
        self._fitted_roots = roots  # sorted: clusters 0..k-1; later ones via _new_slot
        self._new_slot: dict[int, int] = {}
        self._root = _Growable(None, np.int64)
        self._size = _Growable(None, np.int64)
        self._ref = _Growable(None, np.int32)
        self._maj = _Growable(None, np.int32)
        self._flood = _Growable(None, np.bool_)
        self._judged = _Growable(None, np.int64)  # size at the last judgement, 0: never judged
        self._head = _Growable(None, np.int64)  # first and last copy of each cluster, -1: none
        self._tail = _Growable(None, np.int64)
        self._root.append(roots)
        self._size.append(np.asarray(sizes, np.int64)[order])
        self._ref.append(np.asarray(reference, np.int32)[order])
        self._maj.append(np.asarray(majority, np.int32)[order])
        self._flood.append(np.asarray(flood, bool)[order])
        sizes = self._size.view
        self._judged.append(np.where(sizes > flood_size, sizes, 0) if judged is None
                            else np.asarray(judged, np.int64)[order])
        self._head.append(np.full(k, -1, np.int64))
        self._tail.append(np.full(k, -1, np.int64))
        # the copies: a flat store, each linked to the next copy of its cluster
        self._c = {f: _Growable(None, dt) for f, dt in self.COPY_FIELDS.items()}
        self._next = _Growable(None, np.int64)
        self._held: set[int] = set()
        self._counts: dict[int, Counter] = {}  # label codes per cluster, built when it first grows
        self._texts: dict[int, str] = {}  # copy seq -> text, for judging agreement
        self._n_texts: dict[int, int] = {}  # slot -> texts kept
        c = copies or {}
        if c and len(c["roots"]):
            self._add_copies(self._slots(c["roots"]), {f: c[f] for f in self.COPY_FIELDS})

    #: Per copy: cluster root, label code, length, words, normalised text hash, sequence number,
    #: id hash (:func:`~shardguard.mixing.id_hashes`; 0 without an id column).
    COPY_FIELDS = {"roots": np.int64, "labels": np.int32, "length": np.int32, "words": np.int32,
                   "h_full": np.uint64, "seqs": np.int64, "ids": np.uint64}

    def __len__(self) -> int:
        return self._root.n

    # -- slots ------------------------------------------------------------------------------------
    def _find(self, keys: np.ndarray) -> np.ndarray:
        """Slot of each cluster root in ``keys`` (int64), -1 where none."""
        keys = np.asarray(keys, np.int64)
        slot = np.full(keys.size, -1, np.int64)
        fr = self._fitted_roots
        if fr.size and keys.size:
            pos = np.minimum(np.searchsorted(fr, keys), fr.size - 1)
            hit = fr[pos] == keys
            slot[hit] = pos[hit]
        if self._new_slot:  # clusters first seen in the stream: one dict probe per other key
            miss = np.flatnonzero(slot < 0)
            get = self._new_slot.get
            slot[miss] = np.fromiter((get(k, -1) for k in keys[miss].tolist()), np.int64, miss.size)
        return slot

    def _slots(self, keys: np.ndarray, ref_codes: np.ndarray | None = None) -> np.ndarray:
        """Slots of ``keys``, a new cluster (size 1: its root) for each root that has none."""
        slot = self._find(keys)
        missing = np.flatnonzero(slot < 0)
        for i in missing.tolist():
            key = int(keys[i])
            s = self._new_slot.get(key)
            if s is None:
                s = self._new_slot[key] = self._root.n
                ref = -1 if ref_codes is None else int(ref_codes[i])
                self._root.append(np.array([key], np.int64))
                for g, v in ((self._size, 1), (self._ref, ref), (self._maj, ref), (self._flood, False),
                             (self._judged, 0), (self._head, -1), (self._tail, -1)):
                    g.append(np.array([v], g.data.dtype))
            slot[i] = s
        return slot

    # -- copies -----------------------------------------------------------------------------------
    def _add_copies(self, slots: np.ndarray, cols: Mapping[str, np.ndarray]) -> None:
        """Append copies (their ``cols``, ``(m,)`` each) to clusters ``slots`` and link them."""
        m = slots.size
        first = self._next.n
        for f, g in self._c.items():
            g.append(np.asarray(cols[f], g.data.dtype))
        self._next.append(np.full(m, -1, np.int64))
        self._held.update(_held_keys(cols["roots"], cols["h_full"], cols["labels"], cols["ids"]).tolist())
        nxt, head, tail = self._next.data, self._head.data, self._tail.data
        for i, s in enumerate(slots.tolist()):
            j = first + i
            if tail[s] < 0:
                head[s] = j
            else:
                nxt[tail[s]] = j
            tail[s] = j

    def _copies_of(self, slot: int) -> list[int]:
        out = []
        j = int(self._head.data[slot])
        nxt = self._next.data
        while j >= 0:
            out.append(j)
            j = int(nxt[j])
        return out

    def _label_counts(self, slot: int) -> Counter:
        counts = self._counts.get(slot)
        if counts is None:
            codes = self._c["labels"].data
            counts = Counter(codes[self._copies_of(slot)].tolist())
            counts[int(self._ref.data[slot])] += 1  # the root's own row
            self._counts[slot] = counts
        return counts

    def grow(self, roots: np.ndarray, ref_codes: np.ndarray, codes: np.ndarray, feats: StatementFeatures,
             seqs: np.ndarray, texts: Sequence[str], ids: np.ndarray | None = None) -> int:
        """Add copies the guard scored: all ``(m,)`` -- their cluster root, the root's label
        code, their own label code, :class:`StatementFeatures`, sequence numbers, texts and
        (with an id column) id hashes.
        Fixes the grown clusters' sizes and majority labels and judges those due (see the
        class docstring). Returns how many copies joined."""
        roots = np.asarray(roots, np.int64)
        codes = np.asarray(codes, np.int32)
        if not roots.size:
            return 0
        ids = np.zeros(roots.size, np.uint64) if ids is None else np.asarray(ids, np.uint64)
        # a row its cluster holds already: a copy's id, or without ids, the text and label of its
        # root or of a copy (a root scored again under its own id is that row, never a copy)
        rf = self.root_features.lookup(roots)
        keys = _held_keys(roots, feats.h_full, codes, ids).tolist()
        same_as_root = (ids == 0) & (rf.h_full == feats.h_full) & (np.asarray(ref_codes) == codes)
        join = np.zeros(roots.size, bool)
        seen: set[int] = set()
        for i, key in enumerate(keys):
            if not same_as_root[i] and key not in self._held and key not in seen:
                join[i] = True
                seen.add(key)
        idx = np.flatnonzero(join)
        if not idx.size:
            return 0
        slots = self._slots(roots[idx], np.asarray(ref_codes)[idx])
        self._add_copies(slots, {"roots": roots[idx], "labels": codes[idx], "length": feats.length[idx],
                                 "words": feats.words[idx], "h_full": feats.h_full[idx],
                                 "seqs": np.asarray(seqs, np.int64)[idx], "ids": ids[idx]})
        touched = np.unique(slots)
        np.add.at(self._size.data, slots, 1)
        flood = self._flood.data
        for i, s in zip(idx.tolist(), slots.tolist()):
            self._label_counts(s)[int(codes[i])] += 1
            if not flood[s] and self._n_texts.get(s, 0) < 2 * FLOOD_SAMPLE:
                self._texts[int(seqs[i])] = texts[i][: 2 * FLOOD_CHARS]
                self._n_texts[s] = self._n_texts.get(s, 0) + 1
        self._fix_majority(touched)
        self._judge(touched)
        return int(idx.size)

    def _fix_majority(self, slots: np.ndarray) -> None:
        cl, codes, weights = [], [], []
        for i, s in enumerate(slots.tolist()):
            for code, count in self._label_counts(s).items():
                cl.append(i)
                codes.append(code + 1)  # majority_labels wants codes from 0: -1 (None) -> 0
                weights.append(count)
        labels = [None] + self.labels.vocabulary
        ref = self._ref.data[slots].astype(np.int64) + 1
        maj = majority_labels(np.array(cl), np.array(codes), ref, labels, np.array(weights))
        self._maj.data[slots] = maj - 1

    def _judge(self, slots: np.ndarray) -> None:
        size, judged = self._size.data[slots], self._judged.data[slots]
        due = slots[~self._flood.data[slots] & (size > self.flood_size) & (4 * size >= 5 * judged)]
        if not due.size:
            return
        members = [self._copies_of(s) for s in due.tolist()]
        rows = np.array([j for m in members for j in m], np.int64)
        cl = np.concatenate([np.repeat(np.arange(due.size), [len(m) for m in members]), np.arange(due.size)])
        roots = self._root.data[due]
        rf = self.root_features.lookup(roots)
        c = {f: g.data[rows] for f, g in self._c.items()}
        seq = np.concatenate([c["seqs"], roots])
        feats = (np.concatenate([c["length"], rf.length]), np.concatenate([c["words"], rf.words]),
                 np.concatenate([c["h_full"], rf.h_full]))
        codes = np.concatenate([c["labels"], self._ref.data[due]])
        sampled = np.fromiter((s in self._texts for s in seq.tolist()), bool, seq.size)
        flood, _ = flood_flags(cl, due.size, codes, -1, feats, self.flood_size, self.flood_agreement, seq,
                               lambda want: [self._texts[s] for s in want.tolist()], sampled)
        self._flood.data[due] = flood
        self._judged.data[due] = self._size.data[due]
        for s in due[flood].tolist():  # a flood stays one: its texts are no longer needed
            for j in self._copies_of(s):
                self._texts.pop(int(self._c["seqs"].data[j]), None)
            self._n_texts.pop(s, None)

    # -- lookups ----------------------------------------------------------------------------------
    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(found, size, reference, majority, flood) for cluster keys (root sequence numbers), as
        :meth:`~shardguard.stages.ClusterTable.lookup` gives them."""
        slot = self._find(keys)
        found = slot >= 0
        s = slot[found]
        n = slot.size
        size = np.ones(n, np.int64)
        ref = np.full(n, None, dtype=object)
        maj = np.full(n, None, dtype=object)
        flood = np.zeros(n, bool)
        size[found] = self._size.data[s]
        ref[found] = self.labels.decode(self._ref.data[s])
        maj[found] = self.labels.decode(self._maj.data[s])
        flood[found] = self._flood.data[s]
        return found, size, ref, maj, flood

    # -- profiles ---------------------------------------------------------------------------------
    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Plain arrays for a profile, named ``<prefix><name>``: per cluster ``roots``,
        ``counts`` (copies), ``reference``, ``majority``, ``flood``, ``judged``; per copy
        ``copy_<field>`` (:attr:`COPY_FIELDS`). The texts kept for judging are not saved."""
        out = {"roots": self._root.view, "counts": self._size.view - 1, "reference": self._ref.view,
               "majority": self._maj.view, "flood": self._flood.view, "judged": self._judged.view}
        out.update({f"copy_{f}": g.view for f, g in self._c.items()})
        return {prefix + k: np.array(v) for k, v in out.items()}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str, flood_size: int, flood_agreement: float,
                    labels: LabelCodes, root_features: RootFeatures) -> "GrowingClusters":
        a = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        copies = {f: a[f"copy_{f}"] for f in cls.COPY_FIELDS}
        return cls(flood_size, flood_agreement, labels, root_features, a["roots"], a["counts"] + 1,
                   a["reference"], a["majority"], a["flood"], a["judged"], copies)

    def __getstate__(self) -> dict[str, Any]:
        """Plain arrays (a DataLoader worker or ``datasets`` process gets a copy)."""
        return {"arrays": self.arrays(""), "flood_size": self.flood_size, "flood_agreement": self.flood_agreement,
                "labels": self.labels, "root_features": self.root_features}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(GrowingClusters.from_arrays(
            state["arrays"], "", state["flood_size"], state["flood_agreement"], state["labels"],
            state["root_features"]).__dict__)


class BatchScorer:
    """Every row's verdict for one batch, from its near-duplicate findings and embeddings.

    One job, shared by scan's pass 2 and ``Guard.score``: judge copies and floods
    (:func:`~shardguard.stages.duplicate_flags` on the cluster state), name what each copy
    duplicates (the root table), score the valid rows with the fitted detectors, mark rows
    a review allowed, and build the verdict table (:func:`~shardguard.stages.verdict_table`).
    """

    def __init__(self, detectors: Mapping[str, Any], copies: str, clusters: ClusterLookup | None,
                 roots: RootLookup | None, columns: list[str], allow: pa.Array | None = None,
                 text_chars: int = 200) -> None:
        self.detectors = detectors
        self.thresholds = {name: det.threshold_ for name, det in detectors.items()}
        self.copies = copies
        self.clusters = clusters
        self.roots = roots
        self.columns = columns
        self.allow = allow
        self.text_chars = text_chars

    def duplicates(self, labels: np.ndarray, copy_of: np.ndarray, sim: np.ndarray, own: np.ndarray,
                   contradicts: np.ndarray | None = None) -> DuplicateVerdict:
        """The near-duplicate verdict of ``n`` rows, from arrays ``(n,)``: their labels, the
        root each copies (-1: not a copy), the estimated Jaccard similarity to it, their own
        cluster key (their sequence number as a root; -1: invalid) and whether each
        contradicts what it repeats (None: judged by the root's label)."""
        copy_of = np.asarray(copy_of, np.int64)
        n = copy_of.size
        is_copy = copy_of >= 0
        _, _, ref, maj, in_flood = self.clusters.lookup(np.where(is_copy, copy_of, own))
        where = np.flatnonzero(is_copy)
        named = [np.full(n, None, dtype=object) for _ in range(4)]
        for col, v in zip(named, self.roots.lookup(copy_of[where])):
            col[where] = v
        dup_of, of_shard, of_row, root_label = named
        ref = np.where(is_copy, root_label, ref)  # a copy is judged by the label of what it copies
        near, flood = duplicate_flags(self.copies, is_copy, labels, in_flood, ref, maj, contradicts)
        score = np.where(is_copy, np.asarray(sim, np.float64), np.nan)
        return DuplicateVerdict(near, score, dup_of, flood, of_shard, of_row)

    def detector_scores(self, n: int, vidx: np.ndarray, X: np.ndarray | None, y: np.ndarray | None,
                        texts: np.ndarray | None, responses: np.ndarray | None) -> dict[str, np.ndarray]:
        """float64 ``(n,)`` per detector: its scores of the valid rows ``vidx`` (``X``: their
        embeddings ``(len(vidx), dim)``, ``y``, ``texts``, ``responses``), NaN elsewhere."""
        scores = {name: np.full(n, np.nan) for name in self.detectors}
        if X is not None and vidx.size:
            for name, det in self.detectors.items():
                scores[name][vidx] = det.score_samples(X, y, **text_kwargs(det, texts, responses))
        return scores

    def __call__(self, batch: pa.RecordBatch | pa.Table, valid: np.ndarray, duplicates: DuplicateVerdict | None,
                 X: np.ndarray | None = None, y: np.ndarray | None = None, texts: np.ndarray | None = None,
                 responses: np.ndarray | None = None) -> tuple[pa.Table, dict[str, np.ndarray]]:
        """``(verdicts, flags by reason)`` of ``batch`` (``id``, ``row``, ``label``, ``detail``
        and ``text`` columns; ``valid`` bool ``(n,)``); ``X`` etc. of its valid rows."""
        n = batch.num_rows
        det_scores = self.detector_scores(n, np.flatnonzero(valid), X, y, texts, responses)
        allowed = None
        if self.allow is not None:
            allowed = pc.is_in(batch.column("id"), value_set=self.allow).to_numpy(zero_copy_only=False)
        return verdict_table(batch, valid, duplicates, det_scores, self.thresholds, self.columns, allowed,
                             self.text_chars)
