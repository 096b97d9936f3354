"""Writers: quarantine lists, per-row scores, the manifest and report, atomically.

Every file is written under a temporary name in the same folder and renamed
into place, so a killed run never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

TMP_PREFIX = ".tmp-"


def current_umask() -> int:
    """The process umask, read without changing it (Linux); else set and restored at once."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_path(path: Path) -> Path:
    """A new empty file next to ``path``, with the mode a plain ``open`` would give it (the umask's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600 whatever the umask
    finally:
        os.close(fd)
    return Path(name)


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        tmp.write_bytes(data)
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete temporary files a killed run left under ``folder``; returns how many."""
    n = 0
    for p in Path(folder).rglob(TMP_PREFIX + "*"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def quarantine_schema(score_columns: Sequence[str]) -> pa.Schema:
    """The quarantine list's columns: the output contract plus one float64 per detector."""
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("reasons", pa.list_(pa.string()), nullable=False),
        pa.field("duplicate_of", pa.string()),
        pa.field("duplicate_of_shard", pa.string()),
        pa.field("duplicate_of_row", pa.int64()),
        pa.field("label", pa.string()),
        pa.field("detail", pa.string()),
        # the row's text for review, cut at review.text_chars characters (null for invalid rows)
        pa.field("text", pa.string()),
    ]
    fields += [pa.field(c, pa.float64()) for c in score_columns]
    return pa.schema(fields)


def scores_schema(score_columns: Sequence[str]) -> pa.Schema:
    """Every row's verdict: ``status`` is clean, quarantined, invalid or allowed (flagged, but
    confirmed clean by ``review.allow``)."""
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        # Every copy names its first occurrence here, quarantined or not.
        pa.field("duplicate_of", pa.string()),
        pa.field("duplicate_of_shard", pa.string()),
        pa.field("duplicate_of_row", pa.int64()),
    ]
    fields += [pa.field(c, pa.float64()) for c in score_columns]
    return pa.schema(fields)


class _ParquetStream:
    """A Parquet file written batch by batch under a temporary name."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path = path
        self.schema = schema
        self.tmp = _tmp_path(path)
        self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.writer.write_table(table.select(self.schema.names).cast(self.schema), row_group_size=65536)

    def commit(self) -> None:
        self.writer.close()
        _commit(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)


class QuarantineWriter:
    """Writes one shard's ``OUT/quarantine/<shard>.parquet`` and ``OUT/scores/<shard>.parquet``.

    Used as a context manager: rows are added batch by batch (memory bounded by
    the batch) and both files appear only when the block ends without error;
    the scores file is renamed first, so a quarantine list on disk means the
    shard is complete.
    """

    def __init__(self, out_dir: str | os.PathLike, output_name: str, score_columns: Sequence[str]):
        self.out_dir = Path(out_dir)
        self.output_name = output_name
        self.score_columns = list(score_columns)
        self.quarantine_path = self.out_dir / "quarantine" / output_name
        self.scores_path = self.out_dir / "scores" / output_name
        self._q: _ParquetStream | None = None
        self._s: _ParquetStream | None = None

    def __enter__(self) -> "QuarantineWriter":
        self._q = _ParquetStream(self.quarantine_path, quarantine_schema(self.score_columns))
        self._s = _ParquetStream(self.scores_path, scores_schema(self.score_columns))
        return self

    def add(self, quarantine: pa.Table, scores: pa.Table) -> None:
        assert self._q is not None and self._s is not None, "use QuarantineWriter as a context manager"
        self._q.add(quarantine)
        self._s.add(scores)

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._q is not None and self._s is not None
        if exc_type is None:
            self._s.commit()
            self._q.commit()
        else:
            self._s.abort()
            self._q.abort()
