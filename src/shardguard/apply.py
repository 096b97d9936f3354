"""``shardguard apply``: write each scanned shard again without its quarantined rows.

Same schema and format as the input (Parquet, Arrow IPC file or stream, JSON
Lines with the original lines kept byte for byte), so the fine-tuning job reads
the clean copy exactly as it would have read the original. Inputs are checked
against the sha256 the scan recorded: rows are dropped by row number, which
would be wrong for a file changed since.
"""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shardguard import __version__
from shardguard.io.idlist import file_sha256, read_id_list
from shardguard.io.readers import Shard, ShardError, ShardReader, UsageError
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
    kept_on_review: int = 0  # quarantined rows kept: another reason than --reasons, or an id in --keep

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _quarantined_rows(out_dir: Path, entry: dict[str, Any], reasons: frozenset[str] | None,
                      keep: frozenset[str]) -> tuple[np.ndarray, int]:
    """Rows to remove (sorted), and how many quarantined rows the review keeps."""
    q = pq.read_table(out_dir / entry["output"], columns=["row", "id", "reasons"])
    drop = np.ones(q.num_rows, bool)
    if reasons is not None:
        drop &= np.array([bool(reasons.intersection(r)) for r in q.column("reasons").to_pylist()], bool)
    if keep:
        drop &= ~pc.is_in(q.column("id"), value_set=pa.array(sorted(keep), pa.string())).to_numpy(
            zero_copy_only=False)
    return np.sort(q.column("row").to_numpy()[drop]), int((~drop).sum())


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
            for line in fin:
                if not line.strip():
                    continue  # blank lines hold no row
                if row not in drop_set:
                    fout.write(line if line.endswith(b"\n") else line + b"\n")
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


def apply_quarantine(out_dir: str | Path, clean_dir: str | Path, reasons: Sequence[str] | None = None,
                     keep: str | Path | None = None) -> list[AppliedShard]:
    """Write every ok shard of the scan in ``out_dir`` to ``clean_dir`` without its quarantined rows.

    ``reasons``: remove only rows quarantined for one of these (default: every
    quarantined row); ``keep``: a file of ids confirmed clean (one per line, or a
    Parquet ``id`` column), kept whatever their reasons. Both are recorded in
    ``clean_dir/manifest.json``. Returns one :class:`AppliedShard` per shard of the
    scan; a shard that failed in the scan, or whose input changed since, is
    reported and not written.
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
    selected = None if reasons is None else frozenset(reasons)
    if selected is not None:
        known = set(json.loads((out_dir / "report.json").read_text()).get("thresholds", {})) | {"invalid"}
        unknown = sorted(selected - known)
        if unknown or not selected:
            raise UsageError(f"--reasons: unknown reason(s) {', '.join(unknown) or '(none given)'}; "
                             f"this scan's reasons: {', '.join(sorted(known))}")
    keep_ids = read_id_list(keep) if keep is not None else frozenset()
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
            drop, kept_on_review = _quarantined_rows(out_dir, entry, selected, keep_ids)
            if shard.format == "jsonl":
                rows, kept = _write_jsonl(src, dst, drop)
            else:
                rows, kept = _write_arrow_like(shard, dst, drop)
            if rows != entry["rows"] or kept != entry["clean"] + kept_on_review:
                raise ShardError(f"{src}: read {rows} rows and kept {kept}, but the scan saw "
                                 f"{entry['rows']} rows with {entry['clean']} clean")
            results.append(AppliedShard(name, rows, rows - kept, kept, str(dst), kept_on_review=kept_on_review))
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
        "reasons": "all" if selected is None else sorted(selected),
        "keep": None if keep is None else {"file": str(Path(keep).resolve()), "sha256": file_sha256(keep),
                                           "ids": len(keep_ids)},
        "shards": [r.to_json() for r in results],
    })
    return results
