"""Shard discovery and streaming readers.

``discover_shards`` turns paths and folders into an ordered list of
:class:`Shard`; ``ShardReader`` yields a shard's rows as pyarrow record batches
of at most ``batch_size`` rows, so memory depends on the batch size and never
on the shard's size.

Formats: Parquet (``.parquet``, ``.pq``), Arrow IPC file or stream
(``.arrow``, ``.feather``, ``.ipc``, ``.arrows``), JSON Lines (``.jsonl``,
``.ndjson``, optionally ``.gz``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

FORMATS: dict[str, str] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".arrows": "arrow",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".jsonl.gz": "jsonl",
    ".ndjson.gz": "jsonl",
}

#: Marks, in a batch from the lenient JSON Lines reader, the rows of column C
#: whose value was present but not a string: the column is then ``__sg_nonstring__:C``.
NONSTRING_PREFIX = "__sg_nonstring__:"


class ShardError(Exception):
    """A shard cannot be read: the message names the file (and column/row where known)."""


class UsageError(ValueError):
    """The inputs given cannot make a run (nothing found, colliding output names...)."""


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    for ext in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return None


@dataclass(frozen=True)
class Shard:
    """One input file. ``name`` is its path relative to the root it was found under."""

    path: Path
    root: Path
    name: str
    format: str

    @property
    def output_name(self) -> str:
        """``name`` with its extension replaced by ``.parquet`` (the quarantine list's name)."""
        ext = _suffix(self.path) or self.path.suffix
        return self.name[: len(self.name) - len(ext)] + ".parquet"

    def sha256(self, chunk: int = 1 << 20) -> str:
        h = hashlib.sha256()
        with open(self.path, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
        return h.hexdigest()


def discover_shards(paths: Sequence[str | os.PathLike]) -> list[Shard]:
    """Find shards under ``paths`` (files or folders, searched recursively).

    Shards come in sorted order of (input position, relative path). Raises
    :class:`UsageError` when a path does not exist, nothing is found, or two
    shards would write the same output name.
    """
    shards: list[Shard] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise UsageError(f"input path does not exist: {p}")
        if p.is_file():
            ext = _suffix(p)
            if ext is None:
                raise UsageError(
                    f"{p}: unknown shard format; expected one of {', '.join(sorted(FORMATS))}"
                )
            shards.append(Shard(p, p.parent, p.name, FORMATS[ext]))
            continue
        found = []
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in filenames:
                fp = Path(dirpath) / fn
                ext = _suffix(fp)
                if ext is None or fn.startswith("."):
                    continue
                rel = PurePosixPath(fp.relative_to(p).as_posix())
                found.append(Shard(fp, p, str(rel), FORMATS[ext]))
        shards.extend(sorted(found, key=lambda s: s.name))
    if not shards:
        raise UsageError(
            "no shards found in " + ", ".join(map(str, paths))
            + f" (looked for {', '.join(sorted(FORMATS))})"
        )
    seen: dict[str, Shard] = {}
    for s in shards:
        if ".." in PurePosixPath(s.output_name).parts or PurePosixPath(s.output_name).is_absolute():
            raise UsageError(f"{s.path}: shard name {s.name!r} would escape the output folder")
        other = seen.get(s.output_name)
        if other is not None:
            raise UsageError(
                f"{other.path} and {s.path} would both write quarantine/{s.output_name}; "
                "rename one or scan them in separate runs"
            )
        seen[s.output_name] = s
    return shards


class ShardReader:
    """Streams one shard as record batches holding ``columns`` (all when None)."""

    def __init__(self, shard: Shard, batch_size: int = 8192, columns: Sequence[str] | None = None):
        self.shard = shard
        self.batch_size = batch_size
        self.columns = list(columns) if columns is not None else None

    def schema(self) -> pa.Schema:
        try:
            return getattr(self, f"_schema_{self.shard.format}")()
        except ShardError:
            raise
        except (pa.ArrowException, OSError, ValueError, EOFError) as exc:
            raise ShardError(f"{self.shard.path}: cannot read {self.shard.format} file: {exc}") from exc

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        self._check_columns()
        try:
            yield from getattr(self, f"_iter_{self.shard.format}")()
        except ShardError:
            raise
        except (pa.ArrowException, OSError, ValueError, EOFError) as exc:
            raise ShardError(f"{self.shard.path}: cannot read {self.shard.format} file: {exc}") from exc

    def _check_columns(self) -> None:
        if self.columns is None or self.shard.format == "jsonl":
            return  # JSON Lines has no schema up front; missing columns are checked per batch
        names = self.schema().names
        missing = [c for c in self.columns if c not in names]
        if missing:
            raise ShardError(
                f"{self.shard.path}: missing column(s) {', '.join(map(repr, missing))}; "
                f"the shard has {', '.join(map(repr, names))}"
            )

    # -- Parquet ------------------------------------------------------------
    def _schema_parquet(self) -> pa.Schema:
        return pq.ParquetFile(self.shard.path).schema_arrow

    def _iter_parquet(self) -> Iterator[pa.RecordBatch]:
        # pre_buffer=False: otherwise iter_batches buffers the whole file.
        pf = pq.ParquetFile(self.shard.path, pre_buffer=False)
        yield from pf.iter_batches(batch_size=self.batch_size, columns=self.columns)

    # -- Arrow IPC ------------------------------------------------------------
    def _open_ipc(self, source):
        try:
            return pa.ipc.open_file(source)
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_stream(source)

    def _schema_arrow(self) -> pa.Schema:
        with pa.memory_map(str(self.shard.path)) as src:
            return self._open_ipc(src).schema

    def _iter_arrow(self) -> Iterator[pa.RecordBatch]:
        with pa.memory_map(str(self.shard.path)) as src:
            reader = self._open_ipc(src)
            if isinstance(reader, pa.ipc.RecordBatchFileReader):
                batches: Iterable[pa.RecordBatch] = (
                    reader.get_batch(i) for i in range(reader.num_record_batches)
                )
            else:
                batches = reader
            for batch in batches:
                if self.columns is not None:
                    batch = batch.select(self.columns)
                for start in range(0, batch.num_rows, self.batch_size):
                    yield batch.slice(start, self.batch_size)

    # -- JSON Lines -------------------------------------------------------------
    def _open_bytes(self):
        if self.shard.path.name.lower().endswith(".gz"):
            return gzip.open(self.shard.path, "rb")
        return open(self.shard.path, "rb")

    def _schema_jsonl(self) -> pa.Schema:
        for batch in self._iter_jsonl():
            return batch.schema
        return pa.schema([])

    def _iter_jsonl(self) -> Iterator[pa.RecordBatch]:
        """pyarrow's JSON reader; on a type clash, the lenient line parser.

        pyarrow infers one type per column and fails when a later line holds
        another (a number where text was). Rather than lose the shard, the
        lenient parser reads it again and marks such values per row, so they
        end as ``invalid`` rows naming the row and column.
        """
        emitted = 0
        try:
            for batch in self._iter_jsonl_arrow():
                emitted += batch.num_rows
                yield batch
        except pa.ArrowInvalid as exc:
            log.info("%s: pyarrow JSON reader failed (%s); using the lenient parser", self.shard.path, exc)
            skip = emitted
            for batch in self._iter_jsonl_lenient():
                if skip >= batch.num_rows:
                    skip -= batch.num_rows
                    continue
                if skip:
                    batch = batch.slice(skip)
                    skip = 0
                yield batch

    def _iter_jsonl_arrow(self) -> Iterator[pa.RecordBatch]:
        opts = pajson.ReadOptions(block_size=1 << 22, use_threads=True)
        with self._open_bytes() as fh:
            with pa.PythonFile(fh, mode="r") as src:
                reader = pajson.open_json(src, read_options=opts)
                for batch in reader:
                    batch = self._select(batch)
                    for start in range(0, batch.num_rows, self.batch_size):
                        yield batch.slice(start, self.batch_size)

    def _select(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if self.columns is None:
            return batch
        cols = []
        for c in self.columns:
            idx = batch.schema.get_field_index(c)
            cols.append(batch.column(idx) if idx >= 0 else pa.nulls(batch.num_rows, pa.string()))
        extra = [n for n in batch.schema.names if n.startswith(NONSTRING_PREFIX)]
        names = list(self.columns) + extra
        cols += [batch.column(batch.schema.get_field_index(n)) for n in extra]
        return pa.RecordBatch.from_arrays(cols, names=names)

    def _iter_jsonl_lenient(self) -> Iterator[pa.RecordBatch]:
        with self._open_bytes() as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8", errors="strict")
            rows: list[dict] = []
            lineno = 0
            for line in text:
                lineno += 1
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ShardError(f"{self.shard.path}: line {lineno}: not valid JSON: {exc.msg}") from exc
                if not isinstance(obj, dict):
                    raise ShardError(f"{self.shard.path}: line {lineno}: expected a JSON object")
                rows.append(obj)
                if len(rows) == self.batch_size:
                    yield self._rows_to_batch(rows)
                    rows = []
            if rows:
                yield self._rows_to_batch(rows)

    def _rows_to_batch(self, rows: list[dict]) -> pa.RecordBatch:
        names = self.columns
        if names is None:
            names = list(dict.fromkeys(k for r in rows for k in r))
        arrays, out_names = [], []
        for name in names:
            values = [r.get(name) for r in rows]
            try:
                arr = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                # Mixed types: keep the strings, null the rest, and mark them.
                arr = pa.array([v if isinstance(v, str) else None for v in values], pa.string())
                bad = pa.array([v is not None and not isinstance(v, str) for v in values])
                arrays.append(bad)
                out_names.append(NONSTRING_PREFIX + name)
            arrays.append(arr)
            out_names.append(name)
        return pa.RecordBatch.from_arrays(arrays, names=out_names)
