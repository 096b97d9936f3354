"""An in-process memo of embeddings keyed by a hash of the embedded text.

``Guard.score`` embeds a row's text once per process: a text seen before (the same
training data, epoch after epoch) is looked up instead of run through the model. The
vectors are kept rounded as scan's work files keep them (float16 for model embeddings),
so a memoised row scores exactly as a freshly embedded one.
"""

from __future__ import annotations

import numpy as np
import xxhash

__all__ = ["EmbeddingMemo", "text_keys"]


def text_keys(texts: list[str]) -> np.ndarray:
    """64-bit xxh3 of each text's UTF-8 bytes, ``(n,)`` uint64."""
    h = xxhash.xxh3_64_intdigest
    return np.fromiter((h(t.encode("utf-8", "surrogatepass")) for t in texts), np.uint64, len(texts))


class EmbeddingMemo:
    """At most ``max_rows`` vectors by text key; when full, new texts are not remembered.

    ``lookup`` returns which keys are known and their vectors (float32); ``add`` stores
    vectors in ``dtype``. Memory: ``max_rows x dim x dtype.itemsize`` bytes at most
    (100,000 rows of 384 float16 dimensions: 77 MB), plus a dict entry per row.
    """

    def __init__(self, max_rows: int, dtype: np.dtype = np.dtype(np.float16)) -> None:
        self.max_rows = int(max_rows)
        self.dtype = np.dtype(dtype)
        self._slot: dict[int, int] = {}
        self._X: np.ndarray | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._slot)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(known, X)``: bool ``(n,)`` and the known rows' vectors ``(known.sum(), dim)`` float32."""
        slots = np.fromiter((self._slot.get(k, -1) for k in keys.tolist()), np.int64, keys.size)
        known = slots >= 0
        self.hits += int(known.sum())
        self.misses += int((~known).sum())
        if self._X is None or not known.any():
            return known, None
        return known, self._X[slots[known]].astype(np.float32)

    def add(self, keys: np.ndarray, X: np.ndarray) -> None:
        """Remember the vectors ``X`` ``(n, dim)`` of ``keys`` while there is room."""
        room = self.max_rows - len(self._slot)
        if room <= 0 or not keys.size:
            return
        if self._X is None:
            self._X = np.zeros((min(self.max_rows, max(1024, 2 * keys.size)), X.shape[1]), self.dtype)
        for k, row in zip(keys.tolist(), range(keys.size)):
            if room <= 0:
                break
            if k in self._slot:
                continue
            n = len(self._slot)
            if n >= self._X.shape[0]:
                grown = np.zeros((min(self.max_rows, 2 * self._X.shape[0]), self._X.shape[1]), self.dtype)
                grown[:n] = self._X[:n]
                self._X = grown
            self._X[n] = X[row]
            self._slot[k] = n
            room -= 1
