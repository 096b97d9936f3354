"""What the near-duplicate index keeps: memory-mapped arrays, sorted band runs, growable arrays.

Where it lives: every array the index keeps from 64 KiB up is a private
anonymous memory map of its own (:func:`_alloc`), not a C-heap block. The
index keeps replacing large arrays (merged runs, grown sketches), and glibc
answers each free of a large block by raising its mmap threshold, so that
later blocks of up to that size come from the heap, which keeps what it once
held. Measured on the texts of ``benchmarks/bench_embed.py``, an index alone
in a fresh process, 50k -> 200k texts: ``nbytes`` +52 MiB; resident memory
+73 MiB (peak +73) on the heap, +43-50 MiB (peak +51-54) in maps. A map goes
back to the OS when its array is freed, spare capacity is never touched so
costs no resident memory, and a growing sketch array is remapped (``mremap``)
instead of copied. The maps are reported to ``tracemalloc`` like numpy's own
buffers, and ``nbytes`` counts them whole.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import weakref
from typing import Any

import numpy as np


# ---------------------------------------------------------------------------
# storage: what the index keeps lives outside the C heap
# ---------------------------------------------------------------------------
#: Arrays the index keeps (band runs, sketches, root ids, exact table, filter)
#: of at least this many bytes get an anonymous memory map of their own.
_MMAP_MIN_BYTES = 1 << 16
_MMAP_FLAGS = {"flags": mmap.MAP_PRIVATE} if hasattr(mmap, "MAP_PRIVATE") else {}
#: The maps are reported to tracemalloc (as numpy reports its buffers, in its
#: domain) so that tracing still sees what the index holds.
_TRACE_DOMAIN = 389047  # NPY_TRACE_DOMAIN
try:
    _track = ctypes.pythonapi.PyTraceMalloc_Track
    _track.argtypes, _track.restype = [ctypes.c_uint, ctypes.c_size_t, ctypes.c_size_t], ctypes.c_int
    _untrack = ctypes.pythonapi.PyTraceMalloc_Untrack
    _untrack.argtypes, _untrack.restype = [ctypes.c_uint, ctypes.c_size_t], ctypes.c_int
except (AttributeError, OSError):  # not CPython
    _track = _untrack = None
_traced: "weakref.WeakKeyDictionary[mmap.mmap, weakref.finalize]" = weakref.WeakKeyDictionary()


def _trace(m: mmap.mmap, a: np.ndarray) -> None:
    """Report map ``m``, viewed whole by ``a``, to tracemalloc until it is freed
    (a no-op unless tracing); replaces an earlier report of ``m``."""
    if _track is None:
        return
    old = _traced.pop(m, None)
    if old is not None:
        old()  # untrack the map's previous address
    addr = a.__array_interface__["data"][0]
    _track(_TRACE_DOMAIN, addr, a.nbytes)
    fin = weakref.finalize(m, _untrack, _TRACE_DOMAIN, addr)
    fin.atexit = False
    _traced[m] = fin


def _alloc(shape: int | tuple[int, ...], dtype: Any) -> np.ndarray:
    """A zero-filled array for the index to keep; a large one in its own memory map.

    Why not ``np.zeros``: glibc serves a large block with ``mmap`` but raises
    its mmap threshold (up to 32 MiB) whenever such a block is freed, after
    which blocks of up to that size come from the heap. The index frees large
    blocks all the time (merged runs, grown arrays), and the heap then keeps
    what it once held (see the module docstring). A private anonymous map is
    returned to the OS the moment
    its array is freed, leaves malloc's threshold alone, and costs resident
    memory only for the pages written (a growable's spare capacity costs
    none). ``nbytes`` still counts the whole array.
    """
    dtype = np.dtype(dtype)
    count = shape if isinstance(shape, int) else math.prod(shape)
    size = count * dtype.itemsize
    if size < _MMAP_MIN_BYTES:
        return np.zeros(shape, dtype=dtype)
    m = mmap.mmap(-1, size, **_MMAP_FLAGS)
    a = np.frombuffer(m, dtype=dtype, count=count).reshape(shape)
    _trace(m, a)
    return a

#: Band-table runs with at least this many entries per band keep each band in
#: an array of its own (see :class:`_BandTable`).
_SPLIT = _MMAP_MIN_BYTES // 8

#: A band-table run: one ``(bands, m)`` array, or one array per band.
_Run = "np.ndarray | list[np.ndarray]"


def _run_nbytes(run: _Run) -> int:
    return run.nbytes if isinstance(run, np.ndarray) else sum(e.nbytes for e in run)


def _map_of(a: np.ndarray | None) -> mmap.mmap | None:
    """The memory map an :func:`_alloc` array is a view of, else None."""
    base = None if a is None else a.base
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap):
        return base.obj
    return None


# ---------------------------------------------------------------------------
# sorted runs (LSM): one sorted run per call, runs of similar size merged
# ---------------------------------------------------------------------------
def _needs_merge(sizes: list[int]) -> bool:
    """Binary-counter schedule: merge the two newest runs while the older one is
    at most twice the newer; O(log n) runs, each entry re-merged O(log n) times."""
    return len(sizes) >= 2 and sizes[-2] <= 2 * sizes[-1]


class _ExactTable:
    """64-bit text hash -> (root, similarity, statement); keys unique; sorted runs, oldest first.

    ``statement``: the sequence number of the statement a text says (see
    :meth:`NearDuplicateIndex.add_judged`): its own for a text that is a statement,
    the earlier one it repeats, or -1 for a text that was not judged.
    """

    COLUMNS = 4  # keys, root, sim, statement
    ROW_BYTES = 28

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, ...]] = []

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for run in self.runs for c in run)

    @classmethod
    def _sorted(cls, parts: list[list[np.ndarray]]) -> tuple[np.ndarray, ...]:
        """The runs ``parts`` (each ``[keys, root, sim, statement]``) as one run sorted
        by key, column by column: each input column is let go once copied, so a merge
        holds its inputs plus ~2 columns, not inputs and output in full."""
        if sum(p[0].size for p in parts) * cls.ROW_BYTES < _MMAP_MIN_BYTES:  # small: the plain way
            cols = [np.concatenate(c) if len(parts) > 1 else c[0] for c in zip(*parts)]
            o = np.argsort(cols[0], kind="stable")
            return tuple(c[o] for c in cols)
        out = []
        o = None
        for c in range(cls.COLUMNS):
            col = np.concatenate([p[c] for p in parts]) if len(parts) > 1 else parts[0][c]
            for p in parts:
                p[c] = None
            if o is None:
                o = np.argsort(col, kind="stable")  # timsort: linear on concatenated runs
            out.append(np.take(col, o, out=_alloc(o.size, col.dtype), mode="clip"))
            del col
        return tuple(out)

    def add(self, keys: np.ndarray, root: np.ndarray, sim: np.ndarray, stmt: np.ndarray) -> None:
        if keys.size == 0:
            return
        self.runs.append(self._sorted([[keys.astype(np.uint64), root.astype(np.int64), sim.astype(np.float32),
                                        stmt.astype(np.int64)]]))
        while _needs_merge([r[0].size for r in self.runs]):
            b, a = self.runs.pop(), self.runs.pop()
            self.runs.append(self._sorted([list(a), list(b)]))

    def merged(self) -> tuple[np.ndarray, ...]:
        if not self.runs:
            return np.empty(0, np.uint64), np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, np.int64)
        if len(self.runs) == 1:
            return self.runs[0]
        return self._sorted([list(r) for r in self.runs])

    def set(self, keys: np.ndarray, root: np.ndarray, sim: np.ndarray, stmt: np.ndarray) -> None:
        self.runs = []
        self.add(keys, root, sim, stmt)

    def lookup(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(found, root, sim, statement) for query hashes ``q``."""
        found = np.zeros(q.size, dtype=bool)
        root = np.zeros(q.size, dtype=np.int64)
        sim = np.zeros(q.size, dtype=np.float32)
        stmt = np.full(q.size, -1, dtype=np.int64)
        for k, r, s, st in self.runs:
            pos = np.minimum(np.searchsorted(k, q), k.size - 1)
            hit = (k[pos] == q) & ~found
            if hit.any():
                found |= hit
                root[hit] = r[pos[hit]]
                sim[hit] = s[pos[hit]]
                stmt[hit] = st[pos[hit]]
        return found, root, sim, stmt


class _BandTable:
    """One multimap per LSH band: 32-bit band key -> root ordinals.

    An entry is ``key << 32 | ordinal`` in a ``uint64``; a run holds ``m``
    entries per band, each band sorted, so a bucket is a contiguous range
    ordered by ordinal, i.e. by age, and runs are oldest first. A run is one
    ``(bands, m)`` array while small, and a list of one array per band (each in
    its own memory map, see :func:`_alloc`) from ``_SPLIT`` entries per band
    on: ``run[t]`` is band ``t`` either way. Large runs merge band by band and
    let each input band go once it is merged, so a merge needs one band's
    worth of memory beyond the two runs instead of a second copy of both.

    A one-bit-per-slot filter per band over the top bits of the key (4 to 16
    bits per entry, rebuilt as the table grows) answers most misses without a
    binary search; it is derived data, rebuilt on load.
    """

    def __init__(self, bands: int) -> None:
        self.bands = bands
        self.runs: list[_Run] = []
        self.n = 0
        self._fbits = 0
        self._filter = np.zeros((bands, 0), dtype=np.uint8)

    @property
    def nbytes(self) -> int:
        return sum(_run_nbytes(r) for r in self.runs) + self._filter.nbytes

    # -- presence filter ------------------------------------------------------
    def _filter_set(self, keys: np.ndarray) -> None:
        """Set the filter bits of ``keys`` ``(bands, m)`` (band keys, uint64 < 2**32)."""
        slot = (keys >> np.uint64(32 - self._fbits)).astype(np.int64)
        slot += (np.arange(self.bands, dtype=np.int64) << self._fbits)[:, None]
        flat = self._filter.reshape(-1)
        np.bitwise_or.at(flat, slot >> 3, np.left_shift(1, slot & 7).astype(np.uint8))

    def _filter_set_band(self, t: int, keys: np.ndarray) -> None:
        """Set the filter bits of band ``t``'s ``keys`` (uint64 < 2**32)."""
        slot = (keys >> np.uint64(32 - self._fbits)).astype(np.int64)
        np.bitwise_or.at(self._filter[t], slot >> 3, np.left_shift(1, slot & 7).astype(np.uint8))

    def _filter_grow(self) -> None:
        if self.n and (1 << self._fbits) >= 4 * self.n:
            return
        self._fbits = min(32, max(16, int(np.ceil(np.log2(8 * max(self.n, 1))))))
        self._filter = None  # the old filter goes before the new one is made
        self._filter = _alloc((self.bands, (1 << self._fbits) // 8), np.uint8)
        for run in self.runs:
            if isinstance(run, np.ndarray):
                self._filter_set(run >> np.uint64(32))
            else:
                for t, e in enumerate(run):
                    self._filter_set_band(t, e >> np.uint64(32))

    def _filter_test(self, keys: np.ndarray) -> np.ndarray:
        """Boolean ``(bands, n)``: False where band key ``keys[t, i]`` is surely absent."""
        slot = (keys >> np.uint64(32 - self._fbits)).astype(np.int64)
        slot += (np.arange(self.bands, dtype=np.int64) << self._fbits)[:, None]
        byte = self._filter.reshape(-1)[slot >> 3]
        return (byte >> (slot & 7).astype(np.uint8)) & np.uint8(1) != 0

    # -- runs -------------------------------------------------------------------
    def add(self, keys_t: np.ndarray, ords: np.ndarray) -> None:
        """``keys_t`` ``(bands, m)`` uint32 band keys of ``m`` roots with ordinals ``ords``."""
        m = keys_t.shape[1]
        if m == 0:
            return
        keys64 = keys_t.astype(np.uint64)
        low = ords.astype(np.uint64)
        if m < _SPLIT:
            run = _alloc((self.bands, m), np.uint64)
            np.left_shift(keys64, np.uint64(32), out=run)
            run |= low
            run.sort(axis=1)
        else:
            run = []
            for t in range(self.bands):
                e = _alloc(m, np.uint64)
                np.left_shift(keys64[t], np.uint64(32), out=e)
                e |= low
                e.sort()
                run.append(e)
        self.runs.append(run)
        self.n += m
        fbits = self._fbits
        self._filter_grow()
        if fbits == self._fbits:  # not rebuilt: add the new keys
            self._filter_set(keys64)
        del keys64
        while _needs_merge([len(r[0]) for r in self.runs]):
            b, a = self.runs.pop(), self.runs.pop()
            self.runs.append(self._merge(a, b))

    def _merge(self, a: _Run, b: _Run) -> _Run:
        """Runs ``a`` (older) and ``b`` as one; empties them where they are lists."""
        size = a[0].size + b[0].size
        if size < _SPLIT:  # both are small (bands, m) arrays
            run = _alloc((self.bands, size), np.uint64)
            np.concatenate([a, b], axis=1, out=run)
            run.sort(axis=1, kind="stable")  # timsort: linear merge of the two runs
            return run
        out = []
        for t in range(self.bands):
            e = _alloc(size, np.uint64)
            np.concatenate([a[t], b[t]], out=e)
            for r in (a, b):
                if isinstance(r, list):
                    r[t] = None  # the input band goes as soon as it is merged
            e.sort(kind="stable")  # timsort: linear merge of the two runs
            out.append(e)
        return out

    def merged(self) -> np.ndarray:
        """All entries as a new ``(bands, n)`` array, each row sorted."""
        out = np.empty((self.bands, self.n), np.uint64)
        if self.runs:
            for t in range(self.bands):
                np.concatenate([r[t] for r in self.runs], out=out[t])
                if len(self.runs) > 1:
                    out[t].sort(kind="stable")
        return out

    def set(self, entries: np.ndarray) -> None:
        entries = np.asarray(entries)
        m = entries.shape[1]
        self.runs = []
        if m and m < _SPLIT:
            run = _alloc((self.bands, m), np.uint64)
            run[...] = entries
            run.sort(axis=1)
            self.runs = [run]
        elif m:
            run = []
            for t in range(self.bands):
                e = _alloc(m, np.uint64)
                e[...] = entries[t]
                e.sort()
                run.append(e)
            self.runs = [run]
        self.n = m
        self._fbits = 0
        self._filter_grow()

    def lookup(self, qsorted: np.ndarray, qorder: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
        """Pairs (query index, ordinal) of the ``cap`` earliest roots in each
        query's bucket of each band. ``qsorted`` ``(bands, n)`` uint64: each band's
        query keys, shifted left by 32 and sorted; ``qorder``: their query index."""
        qs: list[np.ndarray] = []
        os_: list[np.ndarray] = []
        n = qsorted.shape[1]
        if n == 0 or not self.runs:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        low = np.uint64(0xFFFFFFFF)
        present = self._filter_test(qsorted >> np.uint64(32))
        for t in range(self.bands):
            maybe = np.flatnonzero(present[t])
            if maybe.size == 0:
                continue
            qt = qsorted[t][maybe]  # still sorted: searchsorted walks each run once
            left = None
            for run in self.runs:
                e = run[t]
                lo = np.searchsorted(e, qt, side="left")
                hit = np.flatnonzero((e[np.minimum(lo, e.size - 1)] ^ qt) <= low)  # same high 32 bits
                hit = hit[lo[hit] < e.size]
                if hit.size == 0:
                    continue
                lo_h = lo[hit]
                cnt = np.searchsorted(e, qt[hit] | low, side="right") - lo_h
                if left is None:
                    left = np.full(maybe.size, cap, dtype=np.int64)
                cnt = np.minimum(cnt, left[hit])
                tot = int(cnt.sum())
                if tot == 0:
                    continue
                left[hit] -= cnt
                owner, pos = _expand(lo_h, cnt, tot)
                qs.append(qorder[t][maybe[hit[owner]]])
                os_.append((e[pos] & low).astype(np.int64))
        if not qs:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(qs), np.concatenate(os_)


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a plain sort: faster than np.unique's hashing here)."""
    a = np.sort(a)
    if a.size > 1:
        keep = np.empty(a.size, dtype=bool)
        keep[0] = True
        np.not_equal(a[1:], a[:-1], out=keep[1:])
        a = a[keep]
    return a


def _group_starts(a: np.ndarray) -> np.ndarray:
    """Indices where a sorted array's value changes (the first of each group)."""
    if a.size == 0:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(np.concatenate([[True], a[1:] != a[:-1]]))


def _expand(lo: np.ndarray, cnt: np.ndarray, tot: int) -> tuple[np.ndarray, np.ndarray]:
    """Ranges [lo_i, lo_i + cnt_i): (owner i, position) for every element."""
    owner = np.repeat(np.arange(lo.size, dtype=np.int64), cnt)
    first = np.cumsum(cnt) - cnt
    pos = np.arange(tot, dtype=np.int64) - np.repeat(first - lo, cnt)
    return owner, pos


class _Growable:
    """Row-appendable array with geometric (x1.25) capacity growth.

    Storage comes from :func:`_alloc`. Growing a memory-mapped one remaps it
    (``mremap`` on Linux: no copy, and no second buffer alive during one);
    where that is not possible (another view of it is alive, no ``mremap``),
    the rows are copied into a new array as usual.
    """

    def __init__(self, width: int | None, dtype: Any):
        self.width = width
        self.data = np.empty(self._shape(0), dtype=dtype)
        self.n = 0

    def _shape(self, rows: int) -> tuple[int, ...]:
        return (rows,) if self.width is None else (rows, self.width)

    def _reserve(self, cap: int) -> None:
        dtype = self.data.dtype
        shape = self._shape(cap)
        size = math.prod(shape) * dtype.itemsize
        old_map = _map_of(self.data)
        if old_map is not None:
            old_shape = self.data.shape
            self.data = None  # our view of the map must go before it can be remapped
            try:
                old_map.resize(size)
            except (BufferError, OSError, SystemError, ValueError):
                self.data = np.frombuffer(old_map, dtype=dtype).reshape(old_shape)  # copy below
            else:
                self.data = np.frombuffer(old_map, dtype=dtype).reshape(shape)
                _trace(old_map, self.data)
                return
        new = _alloc(shape, dtype)
        new[: self.n] = self.data[: self.n]
        self.data = new

    def append(self, rows: np.ndarray) -> None:
        need = self.n + rows.shape[0]
        if need > self.data.shape[0]:
            self._reserve(max(need, int(self.data.shape[0] * 1.25) + 1024))
        self.data[self.n : need] = rows
        self.n = need

    @property
    def view(self) -> np.ndarray:
        return self.data[: self.n]

    def set(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        data = _alloc(rows.shape, self.data.dtype)
        data[...] = rows
        self.data = data
        self.n = data.shape[0]

