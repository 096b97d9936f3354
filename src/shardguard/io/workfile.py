"""The per-shard work file: pass 1's output, read by the index replay and pass 2.

``OUT/.work/<shard>.arrow`` (Arrow IPC, LZ4) holds every row of the shard in
order: ``row``, ``id``, ``text`` (null for invalid rows), ``label``,
``detail`` (why a row is invalid, null otherwise) and, when an embedder ran,
``embedding`` (the embedding cache: embedding is the expensive step and happens
once) as float16 for model embeddings (unit vectors lose nothing that matters)
and float32 for precomputed features, whose range float16 cannot hold. A JSON sidecar records the key it was made under (tool
version, shard sha256, input and embedding config); a later run with the same
key reuses the file instead of reading and embedding the shard again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shardguard.io.writers import _commit, _tmp_path, atomic_write_json


def cache_dtype(embedder_kind: str | None) -> np.dtype:
    """float16 for unit-norm model embeddings, float32 for a user's precomputed features."""
    return np.dtype(np.float32) if embedder_kind == "precomputed" else np.dtype(np.float16)


def work_schema(dim: int | None, dtype: np.dtype = np.dtype(np.float16), response: bool = False) -> pa.Schema:
    fields = [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("label", pa.string()),
        pa.field("detail", pa.string()),
    ]
    if response:  # input.response_column: the response part of an instruction row
        fields.append(pa.field("response", pa.string()))
    if dim is not None:
        fields.append(pa.field("embedding", pa.list_(pa.from_numpy_dtype(np.dtype(dtype)), dim)))
    return pa.schema(fields)


def embeddings_to_arrow(x: np.ndarray, dtype: np.dtype = np.dtype(np.float16)) -> pa.FixedSizeListArray:
    """(n, dim) -> fixed_size_list<dtype>[dim] without a per-row loop."""
    xc = np.ascontiguousarray(x, dtype=dtype)
    return pa.FixedSizeListArray.from_arrays(pa.array(xc.reshape(-1)), xc.shape[1])


def embeddings_from_arrow(col: pa.Array | pa.ChunkedArray, dim: int) -> np.ndarray:
    """fixed_size_list<float16|float32> (valid rows only) -> (n, dim) float32."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, dim).astype(np.float32)


class WorkFileWriter:
    """Streams one shard's rows into its work file; the file appears on ``commit``."""

    def __init__(self, path: Path, dim: int | None, dtype: np.dtype = np.dtype(np.float16),
                 response: bool = False):
        self.path = path
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.response = response
        self.schema = work_schema(dim, self.dtype, response)
        self.tmp = _tmp_path(path)
        self._sink = pa.OSFile(str(self.tmp), "wb")
        opts = pa.ipc.IpcWriteOptions(compression="lz4")
        self._writer = pa.ipc.new_file(self._sink, self.schema, options=opts)
        self.rows = 0
        self.valid = 0
        self._closed = False

    def write(self, valid: pa.RecordBatch, embeddings: np.ndarray | None, invalid: pa.Table) -> None:
        """Add one batch: the valid rows (with their embeddings) and the invalid ones, in row order."""
        n_valid = valid.num_rows
        cols: dict[str, Any] = {
            "row": pa.concat_arrays([valid.column("row"), invalid.column("row").combine_chunks()]),
            "id": pa.concat_arrays([valid.column("id"), invalid.column("id").combine_chunks()]),
            "text": pa.concat_arrays([valid.column("text"), pa.nulls(invalid.num_rows, pa.string())]),
            "label": pa.concat_arrays([valid.column("label"), pa.nulls(invalid.num_rows, pa.string())]),
            "detail": pa.concat_arrays(
                [pa.nulls(n_valid, pa.string()), invalid.column("detail").combine_chunks()]
            ),
        }
        if self.response:
            cols["response"] = pa.concat_arrays([valid.column("response"), pa.nulls(invalid.num_rows, pa.string())])
        if self.dim is not None:
            if embeddings is None or embeddings.shape != (n_valid, self.dim):
                got = None if embeddings is None else embeddings.shape
                raise ValueError(f"expected embeddings of shape ({n_valid}, {self.dim}), got {got}")
            emb = embeddings_to_arrow(embeddings, self.dtype)
            empty = pa.nulls(invalid.num_rows, emb.type)
            cols["embedding"] = pa.concat_arrays([emb, empty])
        table = pa.table(cols, schema=self.schema)
        order = np.argsort(table.column("row").to_numpy(), kind="stable")
        table = table.take(pa.array(order))
        for batch in table.to_batches():
            self._writer.write_batch(batch)
        self.rows += table.num_rows
        self.valid += n_valid

    def conform(self, part: pa.RecordBatch) -> pa.RecordBatch:
        """Rows already in work-file form (a part of the shard written by :meth:`write`
        elsewhere: the Ray engine embeds a shard's batches in several actors) in this file's
        schema. A part written before the dimension was known (no valid row yet, from
        precomputed features) gets null embeddings; one of another dimension is an error."""
        if self.dim is not None:
            field = self.schema.field("embedding")
            if "embedding" not in part.schema.names:
                part = part.append_column(field, pa.nulls(part.num_rows, field.type))
            elif part.schema.field("embedding").type != field.type:
                raise ValueError(f"rows from {part.column('row')[0]} on have embeddings of type "
                                 f"{part.schema.field('embedding').type}, earlier rows {field.type}")
        return part.select(self.schema.names)

    def append(self, part: pa.RecordBatch) -> None:
        """Add rows in work-file form (see :meth:`conform`), in row order."""
        part = self.conform(part)
        self._writer.write_batch(part)
        self.rows += part.num_rows
        self.valid += part.column("detail").null_count  # a valid row has no detail

    def close(self) -> None:
        """Finish the file under its temporary name (idempotent); ``commit`` renames it."""
        if not self._closed:
            self._closed = True
            self._writer.close()
            self._sink.close()

    def id_of_row(self, row: int) -> str:
        """The id of ``row``, read back from the (closed) temporary file: for error messages."""
        self.close()
        with WorkFileReader(self.tmp) as r:
            t = r.read_columns(["row", "id"])
        return t.column("id")[pc.index(t.column("row"), row).as_py()].as_py()

    def commit(self, meta: dict[str, Any] | None) -> None:
        """Rename the finished file to its path, with the JSON sidecar that marks a complete
        work file (``meta`` None: a part, which has none)."""
        self.close()
        _commit(self.tmp, self.path)
        if meta is not None:
            atomic_write_json(meta_path(self.path), {**meta, "rows": self.rows, "valid": self.valid, "dim": self.dim})

    def abort(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - the file is discarded anyway
            pass
        self.tmp.unlink(missing_ok=True)


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_meta(path: Path) -> dict[str, Any] | None:
    """The sidecar of a complete work file, or None when there is none."""
    mp = meta_path(path)
    if not path.exists() or not mp.exists():
        return None
    try:
        return json.loads(mp.read_text())
    except (OSError, ValueError):
        return None


class WorkFileReader:
    """Reads a work file batch by batch (memory-mapped)."""

    def __init__(self, path: Path):
        self.path = path
        self._source = pa.memory_map(str(path))
        self._reader = pa.ipc.open_file(self._source)

    @property
    def schema(self) -> pa.Schema:
        return self._reader.schema

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for i in range(self._reader.num_record_batches):
            yield self._reader.get_batch(i)

    def read_columns(self, columns: list[str]) -> pa.Table:
        """Only ``columns``, batch by batch: the embeddings are never all in memory at once."""
        batches = [b.select(columns) for b in self]
        if not batches:
            return self.schema.empty_table().select(columns)
        return pa.Table.from_batches(batches)

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> "WorkFileReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove(path: Path) -> None:
    for p in (path, meta_path(path)):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
