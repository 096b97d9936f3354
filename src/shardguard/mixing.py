"""64-bit hashes that light modules share (the read path imports nothing heavier): SplitMix64's
finaliser over uint64 arrays, the one mix behind the hashing embedder's bigram hashes, the
reservoir's random keys and the partitions of the near-duplicate reduce; and the row ids'
xxh3 hashes."""

from __future__ import annotations

import numpy as np
import xxhash

_U = np.uint64


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (wraps modulo 2**64, as specified)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> _U(30))
        x = x * _U(0xBF58476D1CE4E5B9)
        x = x ^ (x >> _U(27))
        x = x * _U(0x94D049BB133111EB)
        return x ^ (x >> _U(31))


def id_hashes(ids: list[str]) -> np.ndarray:
    """64-bit xxh3 hashes of row ids, ``(n,)`` uint64: ids kept at 8 bytes each instead of as strings."""
    return np.fromiter((xxhash.xxh3_64_intdigest(i.encode()) for i in ids), dtype=np.uint64, count=len(ids))
