"""``shardguard verify``: is this delivery still the one that was scanned?

A shard swapped after the scan is exactly the attack this tool exists for, so
a scan's manifest records the sha256 of every input shard, of every output
file and of itself (``manifest_sha256``, over its canonical JSON without that
field). :func:`verify_scan` checks all of them and lists every difference:

* the manifest itself altered;
* an output (quarantine list, scores file, report) changed, missing or added;
* an input shard changed, missing, or added (a shard under the scan's inputs,
  or under the ``PATH``s given, that the scan never saw).

With ``PATH``s the inputs are looked up by their names relative to those
paths (a delivery moved or copied elsewhere); without, at the paths the
manifest recorded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from shardguard.io.outputs import file_sha256, json_digest, read_scan_manifest
from shardguard.io.readers import Shard, ShardError, UsageError, discover_shards

log = logging.getLogger(__name__)


@dataclass
class Verification:
    """What :func:`verify_scan` found: ``problems`` is empty when everything matches."""

    shards: int = 0
    outputs: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_outputs(out_dir: Path, manifest: dict, v: Verification) -> None:
    recorded: dict[str, str] = manifest.get("outputs") or {}
    for name, sha in sorted(recorded.items()):
        v.outputs += 1
        path = out_dir / name
        if not path.is_file():
            v.problems.append(f"output missing: {name}")
        elif file_sha256(path) != sha:
            v.problems.append(f"output changed: {name} (sha256 differs from the manifest)")
    for sub in ("quarantine", "scores"):
        for path in sorted((out_dir / sub).rglob("*.parquet")) if (out_dir / sub).is_dir() else []:
            name = path.relative_to(out_dir).as_posix()
            if name not in recorded:
                v.problems.append(f"output added: {name} (not in the manifest)")


def _current_shards(manifest: dict, paths: Sequence[str]) -> dict[str, Shard]:
    roots = list(paths) or [r for r in manifest.get("inputs", []) if Path(r).exists()]
    if not roots:
        return {}
    try:
        return {s.name: s for s in discover_shards(roots)}
    except UsageError as exc:
        if "no shards found" in str(exc):
            return {}
        raise


def verify_scan(out_dir: str | Path, paths: Sequence[str] = ()) -> Verification:
    """Re-hash a scan's inputs and outputs against its manifest; see the module docstring."""
    out_dir = Path(out_dir)
    manifest = read_scan_manifest(out_dir)
    if "manifest_sha256" not in manifest:
        raise UsageError(f"{out_dir}: manifest.json has no digests (written by an older shardguard); scan again")
    v = Verification()
    if json_digest(manifest, "manifest_sha256") != manifest["manifest_sha256"]:
        v.problems.append("manifest.json altered: its sha256 does not match its contents")
    _check_outputs(out_dir, manifest, v)
    current = _current_shards(manifest, paths)
    for entry in manifest.get("shards", []):
        v.shards += 1
        name = entry["name"]
        shard = current.pop(name, None)
        if shard is None and not paths:
            path = Path(entry["input"])
            shard = Shard(path, path.parent, name, entry.get("format", ""))
        if shard is None or not (shard.path.exists() or shard.path.is_symlink()):
            v.problems.append(f"input missing: {name}")
            continue
        if not entry.get("sha256"):  # unreadable at scan time
            continue
        try:
            sha = shard.sha256()
        except ShardError as exc:
            v.problems.append(f"input unreadable: {name}: {exc}")
            continue
        if sha != entry["sha256"]:
            v.problems.append(f"input changed: {name} (sha256 {sha[:12]}..., the scan saw {entry['sha256'][:12]}...)")
    for name in sorted(current):
        v.problems.append(f"input added: {name} (not in the scan)")
    for p in v.problems:
        log.debug("verify: %s", p)
    return v
