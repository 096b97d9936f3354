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
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shardguard import __version__
from shardguard.io.readers import Shard, ShardError, ShardReader, UsageError, iter_json_values
from shardguard.io.idlist import read_id_list
from shardguard.io.outputs import OutputLock, check_apply_target, file_sha256, read_scan_manifest
from shardguard.io.writers import TMP_PREFIX, _commit, _tmp_path, atomic_write_json, current_umask

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


def _scan_inputs(out_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """The scan's input roots (older manifests: every shard's folder)."""
    roots = manifest.get("inputs")
    if roots:
        return list(roots)
    return sorted({str(Path(e["input"]).parent) for e in manifest.get("shards", []) if e.get("input")})


def _apply_shard(out_dir: Path, entry: dict[str, Any], dst: Path, reasons: frozenset[str] | None = None,
                 keep: frozenset[str] = frozenset()) -> AppliedShard:
    """One shard's clean copy at ``dst``, or why it was not written."""
    name = entry["name"]
    if entry["status"] != "ok":
        return AppliedShard(name, entry.get("rows", 0), 0, 0, str(dst), f"not written: scan failed: {entry['status']}")
    src = Path(entry["input"])
    shard = Shard(src, src.parent, name, entry["format"])
    try:
        if not src.exists():
            raise ShardError(f"{src}: input no longer exists")
        if shard.sha256() != entry["sha256"]:
            raise ShardError(f"{src}: changed since the scan (sha256 differs); scan it again")
        drop, kept_on_review = _quarantined_rows(out_dir, entry, reasons, keep)
        if shard.format == "jsonl":
            rows, kept = _write_jsonl(src, dst, drop)
        else:
            rows, kept = _write_arrow_like(shard, dst, drop)
        if rows != entry["rows"] or kept != entry["clean"] + kept_on_review:
            raise ShardError(f"{src}: read {rows} rows and kept {kept}, but the scan saw "
                             f"{entry['rows']} rows with {entry['clean']} clean")
        return AppliedShard(name, rows, rows - kept, kept, str(dst), kept_on_review=kept_on_review)
    except (ShardError, OSError, pa.ArrowException) as exc:
        dst.unlink(missing_ok=True)
        log.error("%s", exc)
        return AppliedShard(name, entry.get("rows", 0), 0, 0, str(dst), str(exc))


def _is_apply_output(folder: Path) -> bool:
    try:
        return json.loads((folder / "manifest.json").read_text()).get("command") == "apply"
    except (OSError, ValueError, AttributeError):
        return False


def apply_quarantine(out_dir: str | Path, clean_dir: str | Path, reasons: Sequence[str] | None = None,
                     keep: str | Path | None = None) -> list[AppliedShard]:
    """Write every ok shard of the scan in ``out_dir`` to ``clean_dir`` without its quarantined rows.

    ``reasons``: remove only rows quarantined for one of these (default: every
    quarantined row); ``keep``: a file of ids confirmed clean (one per line, or a
    Parquet ``id`` column), kept whatever their reasons. Both are recorded in
    ``clean_dir/manifest.json``. Returns one :class:`AppliedShard` per shard of the
    scan; a shard that failed in the scan, or whose input changed since, is
    reported and not written.

    ``clean_dir`` may not be, contain or lie inside an input root or ``out_dir``,
    and an existing ``clean_dir`` must be empty or an earlier ``apply``'s output.
    Everything is written into a temporary folder next to it, which replaces it
    only when complete: an interrupted apply leaves ``clean_dir`` as it was.
    """
    out_dir, clean_dir = Path(out_dir), Path(clean_dir)
    manifest = read_scan_manifest(out_dir)
    check_apply_target(clean_dir, out_dir, _scan_inputs(out_dir, manifest))
    if clean_dir.is_dir() and any(clean_dir.iterdir()) and not _is_apply_output(clean_dir):
        raise UsageError(f"--to {clean_dir}: exists, is not empty and is not an earlier apply's output; "
                         "choose a new folder")
    for entry in manifest["shards"]:
        name = entry["name"]
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise UsageError(f"manifest names a shard outside the output folder: {name!r}")
    selected = None if reasons is None else frozenset(reasons)
    if selected is not None:
        known = set(json.loads((out_dir / "report.json").read_text()).get("thresholds", {})) | {"invalid"}
        unknown = sorted(selected - known)
        if unknown or not selected:
            raise UsageError(f"--reasons: unknown reason(s) {', '.join(unknown) or '(none given)'}; "
                             f"this scan's reasons: {', '.join(sorted(known))}")
    keep_ids = read_id_list(keep) if keep is not None else frozenset()
    with OutputLock(out_dir, "apply"):
        clean_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{clean_dir.name}.", dir=clean_dir.parent))
        try:
            os.chmod(staging, 0o777 & ~current_umask())
            results = [_apply_shard(out_dir, entry, staging / entry["name"], selected, keep_ids)
                       for entry in manifest["shards"]]
            for r in results:  # the paths the caller will find them at
                r.output = str(clean_dir / r.name)
            atomic_write_json(staging / "manifest.json", {
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
            _swap_in(staging, clean_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return results


def _swap_in(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an earlier output there is replaced as a whole."""
    if not target.exists():
        os.replace(staging, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{target.name}.old.", dir=target.parent))
    os.replace(target, old / "x")
    try:
        os.replace(staging, target)
    except OSError:
        os.replace(old / "x", target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
