"""``shardguard diff``: a new delivery against a trusted earlier scan.

Rows are matched by the baseline's id column across the whole delivery. The
baseline's rows come from its work files (``OLD_OUT/.work``: id, normalised
text and label of every row); the new delivery is read through the same
readers and :class:`~shardguard.validate.RowNormalizer` with the baseline's
config, so both sides are compared in the same normalised form:

* **new**: an id the baseline did not have;
* **changed**: an id the baseline had, with another text or label;
* **removed**: a baseline id the delivery no longer has;
* unchanged: everything else (not scanned again).

With a trusted profile (``Guard.save`` of the baseline's data), only the new
and changed rows are scored, through :meth:`~shardguard.guard.Guard.score`:
their verdicts (clean, quarantined with reasons, invalid) are the diff's
verdicts. The baseline's manifest must be complete and unaltered (its own
sha256 is checked first).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from shardguard.config import config_from_dict
from shardguard.io import workfile
from shardguard.io.outputs import check_scan_output, read_scan_manifest
from shardguard.io.readers import ShardError, ShardReader, UsageError, discover_shards
from shardguard.io.writers import atomic_write_bytes, atomic_write_json
from shardguard.validate import RowNormalizer

log = logging.getLogger(__name__)

NEW, CHANGED, REMOVED = "new", "changed", "removed"

ROWS_SCHEMA = pa.schema([
    ("change", pa.string()), ("shard", pa.string()), ("row", pa.int64()), ("id", pa.string()),
    ("status", pa.string()), ("reasons", pa.list_(pa.string())), ("detail", pa.string()),
])


@dataclass
class DeliveryDiff:
    """Counts, verdicts and failed shards of one diff; ``rows`` lists every new, changed and removed row."""

    baseline: str
    counts: Counter = field(default_factory=Counter)  # new / changed / removed / unchanged
    statuses: Counter = field(default_factory=Counter)  # verdicts of the new and changed rows
    reasons: Counter = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)
    scored: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def flagged(self) -> int:
        return self.statuses["quarantined"] + self.statuses["invalid"]

    def to_json(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "rows": {k: self.counts[k] for k in (NEW, CHANGED, REMOVED, "unchanged")},
            "scored_against_profile": self.scored,
            "verdicts": dict(sorted(self.statuses.items())),
            "reasons": dict(sorted(self.reasons.items())),
            "failed": self.failed,
        }


def _key(texts: list, labels: list) -> list[int]:
    return [xxhash.xxh3_64_intdigest(f"{t}\x00{lab}".encode("utf-8", "surrogatepass")) if t is not None else 0
            for t, lab in zip(texts, labels)]


def _baseline_rows(old_out: Path, manifest: dict[str, Any]) -> dict[str, int]:
    """Baseline id -> key of (normalised text, label), from the work files."""
    rows: dict[str, int] = {}
    for entry in manifest["shards"]:
        if entry.get("status") != "ok":
            continue
        work = old_out / ".work" / (entry["output"][len("quarantine/"):-len(".parquet")] + ".arrow")
        if not work.exists():
            raise UsageError(f"{old_out}: the work file of {entry['name']} is gone ({work}); the baseline's "
                             ".work folder is needed to compare rows")
        with workfile.WorkFileReader(work) as reader:
            t = reader.read_columns(["id", "text", "label"])
        ids = t.column("id").to_pylist()
        rows.update(zip(ids, _key(t.column("text").to_pylist(), t.column("label").to_pylist())))
    return rows


def diff_delivery(old_out: str | Path, paths: Sequence[str | Path], profile: str | Path | None = None) -> DeliveryDiff:
    """Compare the delivery at ``paths`` with the scan in ``old_out``; see the module docstring."""
    old_out = Path(old_out)
    manifest = read_scan_manifest(old_out, trusted=True)
    config = config_from_dict(manifest["config"])
    if not config.input.id_column:
        raise UsageError(f"{old_out}: the baseline was scanned without an id column; rows can only be "
                         "matched by id (scan with --id-column)")
    guard = None
    if profile is not None:
        from shardguard.guard import Guard

        guard = Guard.load(profile)
    old = _baseline_rows(old_out, manifest)
    result = DeliveryDiff(str(old_out), scored=guard is not None)
    seen: set[str] = set()
    for shard in discover_shards(paths):
        if shard.error is not None:
            result.failed.append(f"{shard.path}: {shard.error}")
            continue
        normalizer = RowNormalizer(shard, config.input)
        try:
            for batch in ShardReader(shard, config.input.batch_size, normalizer.source_columns()):
                _diff_batch(result, shard.name, batch, normalizer(batch), old, seen, guard)
        except ShardError as exc:
            result.failed.append(str(exc))
    removed = sorted(set(old) - seen)
    result.counts[REMOVED] = len(removed)
    result.rows += [{"change": REMOVED, "shard": None, "row": None, "id": i, "status": None, "reasons": None,
                     "detail": None} for i in removed]
    return result


def _diff_batch(result: DeliveryDiff, shard: str, batch: pa.RecordBatch, nb, old: dict[str, int],
                seen: set[str], guard) -> None:
    """Classify one batch's rows and score its new and changed rows."""
    n = batch.num_rows
    ids = np.empty(n, dtype=object)
    keys = np.zeros(n, dtype=np.uint64)
    vr, ir = nb.valid.column("row").to_numpy(), nb.invalid.column("row").to_numpy()
    first = int(min(vr.min() if vr.size else np.inf, ir.min() if ir.size else np.inf)) if n else 0
    vrows = nb.valid.column("row").to_numpy() - first
    ids[vrows] = nb.valid.column("id").to_pylist()
    keys[vrows] = _key(nb.valid.column("text").to_pylist(), nb.valid.column("label").to_pylist())
    irows = nb.invalid.column("row").to_numpy() - first
    ids[irows] = nb.invalid.column("id").to_pylist()
    change = np.array([NEW if i not in old else (CHANGED if old[i] != int(k) else "") for i, k in zip(ids, keys)],
                      dtype=object)
    seen.update(ids.tolist())
    result.counts[NEW] += int((change == NEW).sum())
    result.counts[CHANGED] += int((change == CHANGED).sum())
    result.counts["unchanged"] += int((change == "").sum())
    pick = np.flatnonzero(change != "")
    if not pick.size:
        return
    statuses: list = [None] * pick.size
    reasons: list = [None] * pick.size
    details: list = [None] * pick.size
    if guard is not None:
        verdicts = guard.score(batch.take(pa.array(pick)))
        statuses = verdicts.column("status").to_pylist()
        reasons = verdicts.column("reasons").to_pylist()
        details = verdicts.column("detail").to_pylist()
        result.statuses.update(statuses)
        for r in reasons:
            result.reasons.update(r or [])
    for k, i in enumerate(pick.tolist()):
        result.rows.append({"change": change[i], "shard": shard, "row": first + i, "id": ids[i],
                            "status": statuses[k], "reasons": reasons[k], "detail": details[k]})


def write_diff(result: DeliveryDiff, out_dir: str | Path, paths: Sequence[str | Path]) -> None:
    """``out_dir/report.json`` (counts and verdicts) and ``out_dir/rows.parquet`` (every row that differs)."""
    out_dir = Path(out_dir)
    check_scan_output(out_dir, [*paths, result.baseline])
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(result.rows, schema=ROWS_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(out_dir / "rows.parquet", sink.getvalue().to_pybytes())
    atomic_write_json(out_dir / "report.json", {"command": "diff", **result.to_json()})

