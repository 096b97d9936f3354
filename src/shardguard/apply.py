"""``shardguard apply``: write each scanned shard again without its quarantined rows.

Same schema and format as the input (Parquet, Arrow IPC file or stream, JSON
Lines with every kept JSON value copied exactly as written, one per line), so
the fine-tuning job reads the clean copy exactly as it would have read the
original. Rows are read through the scan's own readers (one row model: a JSON
Lines row is a JSON value, however it is laid out on lines) and dropped by row
number, so inputs are checked against the sha256 the scan recorded first.
"""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shardguard import __version__
from shardguard.io.readers import Shard, ShardError, ShardReader, UsageError, iter_json_values
from shardguard.io.writers import _commit, _tmp_path, atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class AppliedShard:
    name: str
    rows_in: int
    removed: int
    rows_out: int
    output: str
    status: str = "ok"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _quarantined_rows(out_dir: Path, entry: dict[str, Any]) -> np.ndarray:
    q = pq.read_table(out_dir / entry["output"], columns=["row"])
    return np.sort(q.column("row").to_numpy())


def _keep_mask(rows: np.ndarray, drop: np.ndarray) -> np.ndarray:
    return ~np.isin(rows, drop, assume_unique=False)


def _write_jsonl(src: Path, dst: Path, drop: np.ndarray) -> tuple[int, int]:
    gz = src.name.lower().endswith(".gz")
    opener = gzip.open if gz else open
    tmp = _tmp_path(dst)
    row = kept = 0
    drop_set = set(drop.tolist())
    try:
        with opener(src, "rb") as fin, (gzip.GzipFile(tmp, "wb", mtime=0) if gz else open(tmp, "wb")) as fout:
            for _value, raw in iter_json_values(fin, str(src)):
                if row not in drop_set:
                    fout.write(raw.encode("utf-8") + b"\n")
                    kept += 1
                row += 1
        _commit(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return row, kept


def _write_arrow_like(shard: Shard, dst: Path, drop: np.ndarray) -> tuple[int, int]:
    reader = ShardReader(shard, batch_size=65536)
    schema = reader.schema()
    tmp = _tmp_path(dst)
    rows = kept = 0
    try:
        if shard.format == "parquet":
            writer = pq.ParquetWriter(tmp, schema, compression="zstd")
            write = lambda t: writer.write_table(t, row_group_size=65536)  # noqa: E731
        else:
            sink = pa.OSFile(str(tmp), "wb")
            is_stream = shard.path.name.lower().endswith(".arrows")
            writer = pa.ipc.new_stream(sink, schema) if is_stream else pa.ipc.new_file(sink, schema)
            write = writer.write_table
        for batch in reader:
            idx = np.arange(rows, rows + batch.num_rows)
            keep = _keep_mask(idx, drop)
            rows += batch.num_rows
            out = pa.Table.from_batches([batch]).filter(pa.array(keep))
            kept += out.num_rows
            if out.num_rows:
                write(out)
        writer.close()
        if shard.format != "parquet":
            sink.close()
        _commit(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return rows, kept


def apply_quarantine(out_dir: str | Path, clean_dir: str | Path) -> list[AppliedShard]:
    """Write every ok shard of the scan in ``out_dir`` to ``clean_dir`` without its quarantined rows.

    Returns one :class:`AppliedShard` per shard of the scan; a shard that failed
    in the scan, or whose input changed since, is reported and not written.
    """
    out_dir, clean_dir = Path(out_dir), Path(clean_dir)
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{out_dir}: no readable manifest.json; run shardguard scan first ({exc})") from exc
    if not manifest.get("complete"):
        raise UsageError(f"{out_dir}: the scan did not finish; rerun shardguard scan into it to complete it")
    if clean_dir.resolve() == out_dir.resolve():
        raise UsageError("--to must be another folder than the scan's output")
    results = []
    for entry in manifest["shards"]:
        name = entry["name"]
        dst = clean_dir / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise UsageError(f"manifest names a shard outside the output folder: {name!r}")
        if entry["status"] != "ok":
            results.append(AppliedShard(name, entry.get("rows", 0), 0, 0, str(dst), f"not written: scan failed: {entry['status']}"))
            continue
        src = Path(entry["input"])
        shard = Shard(src, src.parent, name, entry["format"])
        try:
            if not src.exists():
                raise ShardError(f"{src}: input no longer exists")
            if shard.sha256() != entry["sha256"]:
                raise ShardError(f"{src}: changed since the scan (sha256 differs); scan it again")
            drop = _quarantined_rows(out_dir, entry)
            if shard.format == "jsonl":
                rows, kept = _write_jsonl(src, dst, drop)
            else:
                rows, kept = _write_arrow_like(shard, dst, drop)
            if rows != entry["rows"] or kept != entry["clean"]:
                raise ShardError(f"{src}: read {rows} rows and kept {kept}, but the scan saw "
                                 f"{entry['rows']} rows with {entry['clean']} clean")
            results.append(AppliedShard(name, rows, rows - kept, kept, str(dst)))
        except (ShardError, OSError, pa.ArrowException) as exc:
            dst.unlink(missing_ok=True)
            results.append(AppliedShard(name, entry.get("rows", 0), 0, 0, str(dst), str(exc)))
            log.error("%s", exc)
    atomic_write_json(clean_dir / "manifest.json", {
        "tool": "shardguard",
        "version": __version__,
        "command": "apply",
        "scan": str(out_dir),
        "scan_run_key": manifest.get("run_key"),
        "shards": [r.to_json() for r in results],
    })
    return results
