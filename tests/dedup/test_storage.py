"""Where the index's arrays live: memory maps that grow in place and that tracemalloc sees."""

from __future__ import annotations

import gc
import sys
import tracemalloc

import numpy as np

from shardguard.dedup import NearDuplicateIndex, storage


def test_growable_remaps_in_place_and_copies_when_viewed(monkeypatch):
    monkeypatch.setattr(storage, "_MMAP_MIN_BYTES", 4096)
    rows = np.random.default_rng(0).integers(0, 256, (60_000, 16), dtype=np.uint8)
    g = storage._Growable(16, np.uint8)
    maps = set()
    for i in range(0, 40_000, 1000):
        g.append(rows[i : i + 1000])
        maps.add(id(storage._map_of(g.data)))
    np.testing.assert_array_equal(g.view, rows[:40_000])
    if sys.platform.startswith("linux"):  # mremap: grown in place, one map all along
        assert len(maps - {id(None)}) == 1
    view = g.view  # a live view: the map cannot move, so the rows are copied
    g.append(rows[40_000:])
    np.testing.assert_array_equal(view, rows[:40_000])
    np.testing.assert_array_equal(g.view, rows)
    assert g.data.nbytes >= rows.nbytes


def test_tracemalloc_sees_the_index(sst2):
    """Memory-mapped storage is reported to tracemalloc while alive, and freed."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        idx = NearDuplicateIndex()
        for i in range(0, 6000, 2000):
            idx.add(sst2[i : i + 2000])
        assert any(isinstance(r, np.ndarray) and storage._map_of(r) is not None for r in idx._bands.runs)
        held = tracemalloc.get_traced_memory()[0] - before
        assert held >= 0.95 * idx.nbytes, (held, idx.nbytes)
        del idx
        gc.collect()
        assert tracemalloc.get_traced_memory()[0] - before < 256 * 1024
    finally:
        tracemalloc.stop()
