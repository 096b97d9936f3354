"""The embedder contract.

An embedder turns a normalised record batch (columns ``id``, ``text``,
``label``, ``row`` and, for the precomputed path, ``embedding``) into a float32
matrix of shape ``(batch.num_rows, dim)``, one unit-norm row per input row, in
input order. ``describe()`` returns what the manifest records: the embedder
kind, the model's name and a sha256 of its weights, the device, the dimension.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa


@runtime_checkable
class Embedder(Protocol):
    dim: int

    def embed_batch(self, batch: pa.RecordBatch) -> np.ndarray:
        """(batch.num_rows, dim) float32, L2-normalised rows."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able identity: kind, model, weights_sha256, device, dim."""
        ...


class TextEmbedder:
    """Base of the embedders that read the batch's ``text`` column: ``embed_batch`` hands the
    texts to ``embed_texts(list[str]) -> (n, dim) float32``."""

    def embed_texts(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed_batch(self, batch: pa.RecordBatch) -> np.ndarray:
        if "text" not in batch.schema.names:
            raise ValueError("the batch has no 'text' column")
        return self.embed_texts(batch.column("text").to_pylist())
