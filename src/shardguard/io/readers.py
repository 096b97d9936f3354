"""Shard discovery and streaming readers.

``discover_shards`` turns paths and folders into an ordered list of
:class:`Shard`; ``ShardReader`` yields a shard's rows as pyarrow record batches
of at most ``batch_size`` rows, so memory depends on the batch size and never
on the shard's size.

Formats: Parquet (``.parquet``, ``.pq``), Arrow IPC file or stream
(``.arrow``, ``.feather``, ``.ipc``, ``.arrows``), JSON Lines (``.jsonl``,
``.ndjson``, optionally ``.gz``).

Inputs are hostile. Discovery never follows a path blindly: a dangling or
looping symlink, a FIFO or device named like a shard, an unreadable file or
folder becomes a :class:`Shard` carrying an ``error`` (a failed row of the
manifest) instead of a crash or a hang. JSON Lines are read as a stream of
JSON *values* (:func:`iter_json_values`), however they are laid out on lines:
one row per top-level value, the same rows for ``scan``, ``apply`` and
``Guard``; a value nested too deeply fails its shard, never the process.
"""

from __future__ import annotations

import codecs
import errno
import gzip
import hashlib
import json
import logging
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Sequence

import pyarrow as pa
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

#: Marks, in a batch from the JSON Lines reader, the rows of column C whose value
#: was present but not a string: column ``__sg_nonstring__:C`` holds the JSON type
#: name ("number", "boolean", "object", "array") of such a value, null elsewhere.
#: Column C itself then holds every scalar as text (see :func:`json_scalar_text`).
NONSTRING_PREFIX = "__sg_nonstring__:"
#: Column of a JSON Lines batch naming, per row, why the row's value is not a
#: row at all (a JSON value that is not an object); null for object rows.
ROW_ERROR_COLUMN = "__sg_row_error__"
#: JSON values nested deeper than this fail their shard (pyarrow's reader crashes on them).
MAX_JSON_DEPTH = 512
#: A JSON value longer than this (in characters) fails its shard instead of filling memory.
MAX_JSON_VALUE_CHARS = 1 << 28


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
    """One input file. ``name`` is its path relative to the root it was found under.

    ``error`` is set when the path cannot be a shard (dangling or looping
    symlink, not a regular file, unreadable file or folder): the run records
    it as a failed shard and never opens it.
    """

    path: Path
    root: Path
    name: str
    format: str
    error: str | None = None

    @property
    def output_name(self) -> str:
        """``name`` with its extension replaced by ``.parquet`` (the quarantine list's name)."""
        ext = _suffix(self.path) or self.path.suffix
        return self.name[: len(self.name) - len(ext)] + ".parquet"

    @property
    def display_path(self) -> str:
        """The absolute path, symlinks resolved where that is possible."""
        try:
            return str(self.path.resolve(strict=True))
        except (OSError, RuntimeError):  # dangling, looping: the link itself
            return os.path.abspath(self.path)

    def sha256(self, chunk: int = 1 << 20) -> str:
        """sha256 of the file; :class:`ShardError` when it is not a readable regular file."""
        h = hashlib.sha256()
        try:
            # O_NONBLOCK: a FIFO swapped in after discovery must not block the open.
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            raise ShardError(f"{self.path}: {path_problem(self.path) or exc.strerror}") from exc
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ShardError(f"{self.path}: {path_problem(self.path) or 'not a regular file'}")
            try:
                while block := fh.read(chunk):
                    h.update(block)
            except OSError as exc:
                raise ShardError(f"{self.path}: cannot read: {exc.strerror or exc}") from exc
        return h.hexdigest()


_FILE_KINDS = [(stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")]


def path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a shard (one line), or None when it is a readable regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "dangling symlink (its target does not exist)" if os.path.islink(path) else "file vanished"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        return f"cannot stat: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        kind = next((what for test, what in _FILE_KINDS if test(st.st_mode)), "not a regular file")
        return f"not a regular file ({kind}); refused"
    if not os.access(path, os.R_OK):
        return "not readable (permission denied)"
    return None


def discover_shards(paths: Sequence[str | os.PathLike]) -> list[Shard]:
    """Find shards under ``paths`` (files or folders, searched recursively).

    Shards come in sorted order of (input position, relative path). Raises
    :class:`UsageError` when a path does not exist, nothing is found, or two
    shards would write the same output name.
    """
    shards: list[Shard] = []
    for raw in paths:
        p = Path(raw)
        if not os.path.lexists(p):
            raise UsageError(f"input path does not exist: {p}")
        if not p.is_dir():
            ext = _suffix(p)
            if ext is None:
                raise UsageError(
                    f"{p}: unknown shard format; expected one of {', '.join(sorted(FORMATS))}"
                )
            shards.append(Shard(p, p.parent, p.name, FORMATS[ext], path_problem(p)))
            continue
        found = []

        def unlistable(exc: OSError, root: Path = p, found: list = found) -> None:
            # An unreadable sub-folder is a failed row, never a silent gap.
            where = Path(exc.filename) if exc.filename else root
            rel = where.relative_to(root).as_posix() if where != root else where.name
            found.append(Shard(where, root, rel, "folder", f"cannot list folder: {exc.strerror or exc}"))

        for dirpath, dirnames, filenames in os.walk(p, onerror=unlistable):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for d in dirnames:
                if os.path.islink(os.path.join(dirpath, d)):
                    log.warning("%s: symlinked folder not followed", os.path.join(dirpath, d))
            for fn in filenames:
                fp = Path(dirpath) / fn
                ext = _suffix(fp)
                if ext is None or fn.startswith("."):
                    continue
                rel = PurePosixPath(fp.relative_to(p).as_posix())
                found.append(Shard(fp, p, str(rel), FORMATS[ext], path_problem(fp)))
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
        """One row per top-level JSON value (see :func:`iter_json_values`), ``batch_size`` at a time."""
        with self._open_bytes() as fh:
            rows: list[Any] = []
            for value, _raw in iter_json_values(fh, str(self.shard.path)):
                rows.append(value)
                if len(rows) == self.batch_size:
                    yield self._rows_to_batch(rows)
                    rows = []
            if rows:
                yield self._rows_to_batch(rows)

    def _rows_to_batch(self, values: list[Any]) -> pa.RecordBatch:
        """JSON values -> a record batch; a non-object value is a row with ``ROW_ERROR_COLUMN`` set."""
        rows = [v if isinstance(v, dict) else {} for v in values]
        errors = [None if isinstance(v, dict) else f"row is a JSON {json_type(v)}, not an object" for v in values]
        names = self.columns
        if names is None:
            names = list(dict.fromkeys(k for r in rows for k in r))
        arrays, out_names = [], []
        for name in names:
            col = [r.get(name) for r in rows]
            try:
                arr = pa.array(col)
                if pa.types.is_null(arr.type) or pa.types.is_struct(arr.type) or pa.types.is_list(arr.type) \
                        or arr.type in (pa.string(), pa.bool_(), pa.int64(), pa.float64()):
                    arrays.append(arr)
                    out_names.append(name)
                    continue
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                pass
            # Mixed types: every scalar as text, and the JSON type of each non-string marked.
            arrays.append(pa.array([None if isinstance(v, str) or v is None else json_type(v) for v in col], pa.string()))
            out_names.append(NONSTRING_PREFIX + name)
            arrays.append(pa.array([json_scalar_text(v) for v in col], pa.string()))
            out_names.append(name)
        if any(e is not None for e in errors):
            arrays.append(pa.array(errors, pa.string()))
            out_names.append(ROW_ERROR_COLUMN)
        if not arrays:  # keep the row count
            arrays, out_names = [pa.array(errors, pa.string())], [ROW_ERROR_COLUMN]
        return pa.RecordBatch.from_arrays(arrays, names=out_names)


def json_type(value: Any) -> str:
    """The JSON type name of a parsed value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def json_scalar_text(value: Any) -> str | None:
    """The documented text form of a JSON scalar: labels and ids are compared as this text.

    Strings are themselves; integers and whole floats their decimal digits
    (``1``, ``1.0`` and ``"1"`` are one label); other numbers Python's shortest
    repr; booleans ``true``/``false``; null stays null. Objects and arrays have
    no text form (None); the reader marks them by type.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    return None


_WS = re.compile(r"[ \t\n\r]*")
_SURROGATE = re.compile("[\udc80-\udcff]")
_DECODER = json.JSONDecoder()


def _depth_exceeds(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit`` (a cheap upper bound first)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def iter_json_values(fh, name: str, chunk: int = 1 << 20) -> Iterator[tuple[Any, str]]:
    """Yield ``(value, raw_text)`` for every top-level JSON value of a binary stream.

    Values may be separated by any JSON whitespace: two objects on one line are
    two rows, one object over two lines is one row; blank lines hold none. The
    raw text is the value exactly as written (``apply`` copies it). Raises
    :class:`ShardError` naming the line and row on invalid UTF-8, invalid JSON or
    a value nested deeper than :data:`MAX_JSON_DEPTH`.
    """
    # surrogateescape keeps a bad byte in place as a lone surrogate, so it is found in
    # the value it belongs to and reported with that value's line and row.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    buf = ""
    pos = 0
    line_base = 1  # line number of buf[0]
    row = 0
    eof = False
    want = chunk
    first = True

    def line_of(i: int) -> int:
        return line_base + buf.count("\n", 0, i)

    def fail(i: int, what: str) -> ShardError:
        return ShardError(f"{name}: line {line_of(i)} (row {row}): {what}")

    def more() -> None:
        nonlocal buf, pos, line_base, eof, want, first
        block = fh.read(want)
        want = max(chunk, min(2 * want, 1 << 28))  # a value longer than a chunk: double, amortised
        text = decoder.decode(block, final=not block)
        if first:
            text = text.removeprefix("\ufeff")
            first = False
        line_base += buf.count("\n", 0, pos)
        buf = buf[pos:] + text
        pos = 0
        eof = not block

    while True:
        pos = _WS.match(buf, pos).end()
        if pos == len(buf):
            if eof:
                return
            more()
            continue
        try:
            value, end = _DECODER.raw_decode(buf, pos)
        except json.JSONDecodeError as exc:
            if not eof and len(buf) - pos <= MAX_JSON_VALUE_CHARS:
                more()
                continue
            raise fail(exc.pos, f"not valid JSON: {exc.msg}") from None
        except RecursionError:
            raise fail(pos, f"JSON nested deeper than {MAX_JSON_DEPTH} levels; refused") from None
        if end == len(buf) and not eof:
            more()  # a number may go on in the next block
            continue
        raw = buf[pos:end]
        bad = _SURROGATE.search(raw)
        if bad is not None:
            raise fail(pos + bad.start(), f"invalid UTF-8 (byte 0x{ord(bad.group()) - 0xDC00:02x})")
        if isinstance(value, (dict, list)) and _depth_exceeds(raw, MAX_JSON_DEPTH):
            raise fail(pos, f"JSON nested deeper than {MAX_JSON_DEPTH} levels; refused")
        row += 1
        yield value, raw
        pos = end
