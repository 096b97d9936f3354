"""SplitMix64's finaliser over uint64 arrays: the one 64-bit mix behind the hashing embedder's
bigram hashes, the reservoir's random keys and the partitions of the near-duplicate reduce."""

from __future__ import annotations

import numpy as np

_U = np.uint64


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (wraps modulo 2**64, as specified)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> _U(30))
        x = x * _U(0xBF58476D1CE4E5B9)
        x = x ^ (x >> _U(27))
        x = x * _U(0x94D049BB133111EB)
        return x ^ (x >> _U(31))
