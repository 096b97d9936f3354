"""Pass 1a, a map over shards: read, validate and embed one shard into its work file.

The work file (``OUT/.work/<shard>.arrow``, Arrow IPC) holds every row in row order:
valid rows with their text, label and embedding, invalid ones with the reason. It is
keyed by the shard's sha256, the input config and the embedder, so a rerun (of either
engine) reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from shardguard import __version__
from shardguard.config import Config
from shardguard.io import workfile
from shardguard.io.readers import Shard, ShardError, ShardReader
from shardguard.validate import RowNormalizer

log = logging.getLogger(__name__)


@dataclass
class ShardOutcome:
    """One shard's line in the manifest."""

    shard: Shard
    sha256: str
    rows: int = 0
    clean: int = 0
    quarantined: int = 0
    invalid: int = 0
    status: str = "ok"
    reasons: Counter = field(default_factory=Counter)
    allowed: int = 0
    resumed: bool = False
    done: bool = False
    size: int = 0

    @property
    def valid(self) -> int:
        """Rows that passed validation: the rows the global sequence numbers count."""
        return self.rows - self.invalid

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.shard.name,
            "input": self.shard.display_path,
            "format": self.shard.format,
            "output": f"quarantine/{self.shard.output_name}",
            "sha256": self.sha256,
            "rows": self.rows,
            "clean": self.clean,
            "quarantined": self.quarantined,
            "invalid": self.invalid,
            "allowed": self.allowed,
            "reasons": dict(sorted(self.reasons.items())),
            "status": self.status,
        }


def one_line(message: str) -> str:
    """A manifest status is one line: a library's multi-line error is folded onto it."""
    return " ".join(message.split())


def hashed(shard: Shard) -> ShardOutcome:
    """The shard's outcome with its sha256, or failed with a one-line reason (never raises)."""
    if shard.error is not None:
        log.error("%s: %s", shard.path, shard.error)
        return ShardOutcome(shard, "", status=f"{shard.path}: {shard.error}")
    try:
        sha = shard.sha256()
        size = os.stat(shard.path).st_size
    except (ShardError, OSError) as exc:
        log.error("%s", exc)
        return ShardOutcome(shard, "", status=one_line(str(exc) if isinstance(exc, ShardError) else f"{shard.path}: {exc}"))
    return ShardOutcome(shard, sha, size=size)


def work_path(work_dir: Path, shard: Shard) -> Path:
    return work_dir / (shard.output_name[: -len(".parquet")] + ".arrow")


def no_rows(dim: int | None) -> np.ndarray | None:
    """The embeddings of a batch without valid rows: shape (0, dim), or None without an embedder."""
    return None if dim is None else np.zeros((0, dim), np.float32)


def embedding_dim(schema: pa.Schema) -> int | None:
    return schema.field("embedding").type.list_size if "embedding" in schema.names else None


def responses_of(batch: pa.RecordBatch) -> np.ndarray | None:
    """The ``response`` column of a work-file batch (input.response_column), or None."""
    if "response" not in batch.schema.names:
        return None
    return batch.column("response").to_numpy(zero_copy_only=False)


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def pass1_key(config: Config, sha: str, embedder_info: dict[str, Any] | None) -> str:
    """What a shard's work file (and its n-gram counts) depend on."""
    return digest({"version": __version__, "sha256": sha, "input": config.to_dict()["input"], "embedder": embedder_info})


def timed(timings: Counter, stage: str, iterable):
    it = iter(iterable)
    while True:
        t = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            timings[stage] += time.perf_counter() - t
            return
        timings[stage] += time.perf_counter() - t
        yield item


def reuse_work_file(config: Config, o: ShardOutcome, embedder_info: dict[str, Any] | None, work_dir: Path) -> bool:
    """Whether ``o`` has a complete work file made under the same key (shard, input config,
    embedder): then ``o.rows``, ``o.invalid`` and ``o.resumed`` are set from it, and the
    shard is neither read nor embedded again."""
    meta = workfile.read_meta(work_path(work_dir, o.shard))
    if meta is None or meta.get("key") != pass1_key(config, o.sha256, embedder_info):
        return False
    o.rows = int(meta["rows"])
    o.invalid = int(meta["rows"] - meta["valid"])
    o.resumed = True
    log.info("%s: reusing pass-1 work file", o.shard.name)
    return True


def read_embed_shard(config: Config, o: ShardOutcome, embedder: Any, embedder_info: dict[str, Any] | None,
                     work_dir: Path, timings: Counter, advance: Callable[[int], None] | None = None) -> ShardOutcome:
    """Write (or reuse) ``o``'s work file; sets ``o.rows``, ``o.invalid``, ``o.resumed`` and, when the
    shard fails, ``o.status`` (never raises for a shard's own failure). Returns ``o``.

    ``timings`` receives seconds per step (read, validate, embed); ``advance(rows)`` is told
    the rows read, batch by batch.
    """
    cfg = config
    advance = advance or (lambda n: None)
    if reuse_work_file(cfg, o, embedder_info, work_dir):
        advance(o.rows)
        return o
    path = work_path(work_dir, o.shard)
    key = pass1_key(cfg, o.sha256, embedder_info)
    normalizer = RowNormalizer(o.shard, cfg.input)
    reader = ShardReader(o.shard, cfg.input.batch_size, normalizer.source_columns())
    writer: workfile.WorkFileWriter | None = None
    dtype = workfile.cache_dtype(cfg.embed.embedder)
    # Batches seen before the embedding dimension is known (precomputed features, all rows
    # invalid so far) wait here; they hold invalid rows only.
    pending: list[Any] = []
    try:
        for batch in timed(timings, "read", reader):
            t = time.perf_counter()
            nb = normalizer(batch)
            timings["validate"] += time.perf_counter() - t
            emb = None
            if embedder is not None and nb.valid.num_rows:
                t = time.perf_counter()
                try:
                    emb = embedder.embed_batch(nb.valid)
                except ValueError as exc:
                    raise ShardError(f"{o.shard.path}: {exc}") from exc
                timings["embed"] += time.perf_counter() - t
            o.rows += batch.num_rows
            o.invalid += nb.invalid.num_rows
            advance(batch.num_rows)
            if writer is None:
                dim = None
                if embedder is not None:
                    dim = emb.shape[1] if emb is not None else getattr(embedder, "dim", None)
                    if dim is None:
                        pending.append(nb)
                        continue
                writer = workfile.WorkFileWriter(path, dim, dtype, response=bool(cfg.input.response_column))
                for held in pending:
                    writer.write(held.valid, no_rows(dim), held.invalid)
                pending = []
            writer.write(nb.valid, emb if emb is not None else no_rows(writer.dim), nb.invalid)
        if writer is None:  # no valid row at all
            dim = getattr(embedder, "dim", None) if embedder is not None else None
            writer = workfile.WorkFileWriter(path, dim, dtype, response=bool(cfg.input.response_column))
            for held in pending:
                writer.write(held.valid, no_rows(dim), held.invalid)
        if cfg.input.id_column:
            normalizer.check_unique_ids(writer.id_of_row)
        writer.commit({"key": key, "shard": o.shard.name, "sha256": o.sha256})
    except ShardError as exc:
        if writer is not None:
            writer.abort()
        workfile.remove(path)
        o.status = one_line(str(exc))
        log.error("%s", exc)
    except Exception as exc:  # a shard's failure must not stop the others
        if writer is not None:
            writer.abort()
        workfile.remove(path)
        o.status = one_line(f"{o.shard.path}: {type(exc).__name__}: {exc}")
        log.exception("%s failed", o.shard.path)
    return o
