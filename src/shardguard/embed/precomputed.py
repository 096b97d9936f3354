"""Use an embedding column already present in the shard.

This is the path for a model's own features (say, the penultimate layer of
the classifier being fine-tuned): spectral signatures were designed for the
victim model's representation, where a backdoor trigger is a feature of its
own, and they work far better there than on a generic sentence encoder.

The vectors are used AS GIVEN, cast to float32 and NOT L2-normalised: the
spectral method relies on the geometry of the raw features (norms included),
and normalising would change the top singular direction. (This is the one
exception to the "unit rows" rule of :mod:`shardguard.embed.base`.)

The column (``embedding`` in the normalised batch) may be a ``list``,
``large_list`` or ``fixed_size_list`` of any integer or floating type. Every
row must hold the same number of finite values; a null vector, a null
element, a wrong length or a NaN / infinity raises :class:`ValueError` naming
the row's index in the batch (and its ``id`` / ``row`` when present).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

COLUMN = "embedding"


def _where(batch: pa.RecordBatch, i: int) -> str:
    parts = [f"batch row {i}"]
    names = batch.schema.names
    if "id" in names:
        parts.append(f"id {batch.column('id')[i].as_py()!r}")
    if "row" in names:
        parts.append(f"shard row {batch.column('row')[i].as_py()}")
    return ", ".join(parts)


class PrecomputedEmbedder:
    """Reads the ``embedding`` column (vectorised; no per-row Python).

    Parameters
    ----------
    dim : int or None, default None
        Expected vector length; None -> taken from the first non-empty batch
        and required of every later one.
    """

    kind = "precomputed"
    #: its width is the first vectors' unless given: an engine that embeds in several
    #: processes learns it first, in scan order, so that every process checks against it
    learns_width = True

    def __init__(self, dim: int | None = None, column: str = COLUMN) -> None:
        if dim is not None and int(dim) < 1:
            raise ValueError(f"dim must be >= 1 or None, got {dim!r}")
        self._dim = None if dim is None else int(dim)
        self.column = column

    @property
    def dim(self) -> int | None:
        """The vector length: the ``dim`` given, else the first non-empty batch's;
        None until then."""
        return self._dim

    def embed_batch(self, batch: pa.RecordBatch) -> np.ndarray:
        if self.column not in batch.schema.names:
            raise ValueError(
                f"the batch has no {self.column!r} column (set input.embedding_column to the "
                "shard's embedding column)"
            )
        arr = batch.column(self.column)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        t = arr.type
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
            raise ValueError(
                f"embedding column {self.column!r} must be a list or fixed_size_list of numbers, got {t}"
            )
        vt = t.value_type
        if not (pa.types.is_floating(vt) or pa.types.is_integer(vt)):
            raise ValueError(
                f"embedding column {self.column!r} must hold numbers, got list of {vt}"
            )
        n = len(arr)
        if arr.null_count:
            i = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
            raise ValueError(f"embedding column {self.column!r}: null vector at {_where(batch, i)}")
        if n == 0:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        if pa.types.is_fixed_size_list(t):
            lengths = np.full(n, t.list_size, dtype=np.int64)
        else:
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
        expected = self._dim if self._dim is not None else int(lengths[0])
        bad = np.flatnonzero(lengths != expected)
        if bad.size or expected < 1:
            i = int(bad[0]) if bad.size else 0
            raise ValueError(
                f"embedding column {self.column!r}: vector of length {int(lengths[i])} at "
                f"{_where(batch, i)}; expected {expected}"
                + (" (the first row's length)" if self._dim is None else "")
            )
        values = arr.flatten()  # respects slicing offsets
        if values.null_count:
            k = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
            raise ValueError(
                f"embedding column {self.column!r}: null element at {_where(batch, k // expected)}"
            )
        with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf, reported below
            E = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, expected)
        finite = np.isfinite(E)
        if not finite.all():
            i = int(np.flatnonzero(~finite.all(axis=1))[0])
            raise ValueError(
                f"embedding column {self.column!r}: NaN or infinity (or a value beyond float32) "
                f"at {_where(batch, i)}"
            )
        if self._dim is None:
            self._dim = expected
        if not E.flags.writeable or not E.flags.c_contiguous:
            E = np.array(E, dtype=np.float32, order="C")
        return E

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": f"precomputed column {self.column!r}",
            "weights_sha256": None,
            "device": "cpu",
            "dim": self._dim,
            "normalized": False,
        }

    def __repr__(self) -> str:
        return f"PrecomputedEmbedder(dim={self._dim})"
