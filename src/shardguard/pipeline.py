"""The scan: two passes over the shards, shaped like the data flow.

    shards ──► read + validate + embed ──► OUT/.work/<shard>.arrow      (pass 1a, per shard)
                                              │
             near-duplicate index, per-label statistics, reservoir ◄──┘  (pass 1b, in scan order)
                                              │
                                        fit the detectors
                                              │
             score cached embeddings ──► verdicts ──► QuarantineWriter   (pass 2, per shard)

Pass 1a is the only step that reads a shard or runs the model; its output is
keyed by the shard's sha256 and the config, so a rerun reuses it. Pass 1b
replays the work files in scan order, so near-duplicate roots and the fitted
state are the same whether or not a run was resumed. A shard that fails in
pass 1a touches no global state, and the other shards complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shardguard import __version__
from shardguard.config import Config
from shardguard.detectors import REGISTRY, EmbeddingDetector
from shardguard.detectors.near_duplicates import NearDuplicateIndex
from shardguard.embed import make_embedder
from shardguard.io import workfile
from shardguard.io.readers import Shard, ShardError, ShardReader, discover_shards
from shardguard.io.writers import QuarantineWriter, atomic_write_json, remove_stale_temps
from shardguard.stages import (
    DUPLICATE_FLOOD,
    INVALID,
    NEAR_DUPLICATE,
    DuplicateClusters,
    ReservoirSample,
    reasons_column,
)
from shardguard.validate import RowNormalizer

log = logging.getLogger(__name__)


class Progress(Protocol):
    """What the pipeline tells its caller; the CLI draws a bar from it."""

    def start(self, stage: str, total_rows: int | None) -> None: ...
    def advance(self, rows: int) -> None: ...
    def finish(self) -> None: ...


class _NoProgress:
    def start(self, stage: str, total_rows: int | None) -> None:
        pass

    def advance(self, rows: int) -> None:
        pass

    def finish(self) -> None:
        pass


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
    resumed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.shard.name,
            "input": str(self.shard.path),
            "format": self.shard.format,
            "output": f"quarantine/{self.shard.output_name}",
            "sha256": self.sha256,
            "rows": self.rows,
            "clean": self.clean,
            "quarantined": self.quarantined,
            "invalid": self.invalid,
            "reasons": dict(sorted(self.reasons.items())),
            "status": self.status,
        }


@dataclass
class ScanResult:
    out_dir: Path
    shards: list[ShardOutcome]
    report: dict[str, Any]

    @property
    def failed(self) -> list[ShardOutcome]:
        return [s for s in self.shards if s.status != "ok"]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def build_detectors(config: Config) -> dict[str, EmbeddingDetector]:
    """Instantiate the enabled embedding detectors from the registry (none is fitted)."""
    out = {}
    for name, params in config.enabled_detectors().items():
        params = dict(params)
        cls = REGISTRY[name]
        if "random_state" in cls._get_param_names() and "random_state" not in params:
            params["random_state"] = config.random_state
        out[name] = cls(**params)
    return out


def score_columns(config: Config, detectors: Sequence[str]) -> list[str]:
    cols = [f"{NEAR_DUPLICATE}_score"] if config.near_duplicates.enabled else []
    return cols + [f"{name}_score" for name in detectors]


class ScanPipeline:
    """Runs ``shardguard scan``: see the module docstring for the flow.

    Parameters
    ----------
    config : the resolved run configuration.
    out_dir : the output folder (created; reruns resume inside it).
    progress : receives stage starts and row counts (no output when None).
    """

    def __init__(self, config: Config, out_dir: str | Path, progress: Progress | None = None):
        self.config = config
        self.out_dir = Path(out_dir)
        self.progress = progress or _NoProgress()
        self.timings: Counter = Counter()

    # -- keys -------------------------------------------------------------------------
    def _pass1_key(self, sha: str, embedder_info: dict[str, Any] | None) -> str:
        return _digest(
            {
                "version": __version__,
                "sha256": sha,
                "input": self.config.to_dict()["input"],
                "embedder": embedder_info,
            }
        )

    # -- the run --------------------------------------------------------------------------
    def run(self, paths: Sequence[str | Path]) -> ScanResult:
        t_start = time.perf_counter()
        shards = discover_shards(paths)
        cfg = self.config
        (self.out_dir / "quarantine").mkdir(parents=True, exist_ok=True)
        work_dir = self.out_dir / ".work"
        work_dir.mkdir(exist_ok=True)
        removed = remove_stale_temps(self.out_dir)
        if removed:
            log.info("removed %d temporary file(s) left by an interrupted run", removed)

        t = time.perf_counter()
        outcomes = [ShardOutcome(s, s.sha256()) for s in shards]
        self.timings["hash_inputs"] += time.perf_counter() - t

        embedder = make_embedder(cfg.embed, cfg.random_state)
        embedder_info = embedder.describe() if embedder is not None else None
        detectors = build_detectors(cfg)
        run_key = _digest(
            {
                "version": __version__,
                "config": cfg.to_dict(),
                "embedder": embedder_info,
                "shards": [(o.shard.name, o.sha256) for o in outcomes],
            }
        )
        previous = self._previous_manifest(run_key)

        # Pass 1a: read, validate, embed each shard into its work file.
        total_bytes = sum(o.shard.path.stat().st_size for o in outcomes)
        self.progress.start("read + embed", None)
        for o in outcomes:
            self._pass1_shard(o, embedder, embedder_info, work_dir)
        self.progress.finish()
        ok = [o for o in outcomes if o.status == "ok"]

        # Pass 1b: near-duplicates, statistics and reservoir, in scan order.
        t = time.perf_counter()
        dup_index = (
            NearDuplicateIndex(
                threshold=cfg.near_duplicates.threshold,
                num_perm=cfg.near_duplicates.num_perm,
                ngram=cfg.near_duplicates.ngram,
                seed=cfg.near_duplicates.seed,
            )
            if cfg.near_duplicates.enabled
            else None
        )
        clusters = DuplicateClusters(cfg.near_duplicates.flood_size)
        reservoir = ReservoirSample(cfg.fit.reservoir_size, cfg.random_state)
        seq_start: dict[str, int] = {}
        seq = 0
        self.progress.start("index", sum(o.rows for o in ok))
        for o in ok:
            seq_start[o.shard.name] = seq
            seq += self._replay_shard(o, dup_index, clusters, reservoir, detectors, work_dir)
        self.progress.finish()
        self.timings["index"] += time.perf_counter() - t

        # Fit.
        t = time.perf_counter()
        if detectors:
            X, y = reservoir.sample()
            if X.shape[0] < 2:
                log.warning("too few valid rows (%d) to fit the embedding detectors; they are skipped", X.shape[0])
                detectors = {}
            for name, det in detectors.items():
                if det.streaming:
                    det.calibrate(X, y)
                else:
                    det.fit(X, y)
                log.info("fitted %s: %s", name, det.threshold_info())
        self.timings["fit"] += time.perf_counter() - t

        # Pass 2: verdicts and lists.
        t = time.perf_counter()
        root_ids = self._root_ids(clusters, ok, seq_start, work_dir)
        flood_roots = clusters.flood_roots()
        columns = score_columns(cfg, list(detectors))
        manifest = self._manifest_base(run_key, embedder_info, outcomes)
        self.progress.start("score + write", sum(o.rows for o in ok))
        for o in ok:
            done = previous.get(o.shard.name)
            qpath = self.out_dir / "quarantine" / o.shard.output_name
            if done is not None and qpath.exists() and (self.out_dir / "scores" / o.shard.output_name).exists():
                self._restore(o, done)
                self.progress.advance(o.rows)
            else:
                self._pass2_shard(o, detectors, clusters, flood_roots, root_ids, seq_start[o.shard.name],
                                  columns, work_dir)
            manifest["shards"] = [x.to_json() for x in outcomes if x.status != "pending"]
            atomic_write_json(self.out_dir / "manifest.json", manifest)
        self.progress.finish()
        self.timings["score_write"] += time.perf_counter() - t

        wall = time.perf_counter() - t_start
        report = self._report(outcomes, detectors, clusters, wall, total_bytes)
        manifest["shards"] = [x.to_json() for x in outcomes]
        manifest["complete"] = True
        manifest["totals"] = report["totals"]
        atomic_write_json(self.out_dir / "manifest.json", manifest)
        atomic_write_json(self.out_dir / "report.json", report)
        return ScanResult(self.out_dir, outcomes, report)

    # -- pass 1a ------------------------------------------------------------------------------
    def _pass1_shard(self, o: ShardOutcome, embedder, embedder_info, work_dir: Path) -> None:
        cfg = self.config
        path = work_dir / (o.shard.output_name[: -len(".parquet")] + ".arrow")
        key = self._pass1_key(o.sha256, embedder_info)
        meta = workfile.read_meta(path)
        if meta is not None and meta.get("key") == key:
            o.rows = int(meta["rows"])
            o.invalid = int(meta["rows"] - meta["valid"])
            o.resumed = True
            self.progress.advance(o.rows)
            log.info("%s: reusing pass-1 work file", o.shard.name)
            return
        normalizer = RowNormalizer(o.shard, cfg.input)
        reader = ShardReader(o.shard, cfg.input.batch_size, normalizer.source_columns())
        writer: workfile.WorkFileWriter | None = None
        try:
            for batch in self._timed("read", reader):
                t = time.perf_counter()
                nb = normalizer(batch)
                self.timings["validate"] += time.perf_counter() - t
                emb = None
                if embedder is not None and nb.valid.num_rows:
                    t = time.perf_counter()
                    try:
                        emb = embedder.embed_batch(nb.valid)
                    except ValueError as exc:
                        raise ShardError(f"{o.shard.path}: {exc}") from exc
                    self.timings["embed"] += time.perf_counter() - t
                if writer is None:
                    dim = None
                    if embedder is not None:
                        dim = emb.shape[1] if emb is not None else getattr(embedder, "dim", None)
                    if embedder is not None and dim is None:
                        # Only invalid rows so far and the dimension is unknown: hold them.
                        dim = None
                    writer = workfile.WorkFileWriter(path, dim)
                elif embedder is not None and writer.dim is None and emb is not None:
                    raise ShardError(f"{o.shard.path}: cannot infer the embedding dimension")
                if writer.dim is not None and emb is None:
                    emb = np.zeros((0, writer.dim), np.float32)
                writer.write(nb.valid, emb, nb.invalid)
                o.rows += batch.num_rows
                o.invalid += nb.invalid.num_rows
                self.progress.advance(batch.num_rows)
            if writer is None:
                dim = getattr(embedder, "dim", None) if embedder is not None else None
                writer = workfile.WorkFileWriter(path, dim)
            if cfg.input.id_column:
                normalizer.check_unique_ids(lambda row: self._id_at(writer, row))
            writer.commit({"key": key, "shard": o.shard.name, "sha256": o.sha256})
        except ShardError as exc:
            if writer is not None:
                writer.abort()
            workfile.remove(path)
            o.status = str(exc)
            log.error("%s", exc)
        except Exception as exc:  # a shard's failure must not stop the others
            if writer is not None:
                writer.abort()
            workfile.remove(path)
            o.status = f"{o.shard.path}: {type(exc).__name__}: {exc}"
            log.exception("%s failed", o.shard.path)

    @staticmethod
    def _id_at(writer: workfile.WorkFileWriter, row: int) -> str:
        writer._writer.close()
        writer._sink.close()
        with workfile.WorkFileReader(writer.tmp) as r:
            t = r.read_columns(["row", "id"])
        idx = pc.index(t.column("row"), row).as_py()
        return t.column("id")[idx].as_py()

    def _timed(self, stage: str, iterable):
        it = iter(iterable)
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.timings[stage] += time.perf_counter() - t
                return
            self.timings[stage] += time.perf_counter() - t
            yield item

    # -- pass 1b ------------------------------------------------------------------------------
    def _replay_shard(self, o, dup_index, clusters, reservoir, detectors, work_dir) -> int:
        """Feed one shard's valid rows to the global state; returns how many there were."""
        path = work_dir / (o.shard.output_name[: -len(".parquet")] + ".arrow")
        n_valid = 0
        streaming = [d for d in detectors.values() if d.streaming]
        with workfile.WorkFileReader(path) as reader:
            dim = reader.schema.field("embedding").type.list_size if "embedding" in reader.schema.names else None
            for batch in reader:
                valid_mask = batch.column("detail").is_null()
                vb = batch.filter(valid_mask)
                n_valid += vb.num_rows
                if vb.num_rows == 0:
                    self.progress.advance(batch.num_rows)
                    continue
                if dup_index is not None:
                    root, sim = dup_index.add(vb.column("text").to_pylist())
                    clusters.record(o.shard.name, vb.column("row").to_numpy(), np.asarray(root), np.asarray(sim))
                if detectors and dim is not None:
                    X = workfile.embeddings_from_arrow(vb.column("embedding"), dim)
                    y = vb.column("label").to_numpy(zero_copy_only=False)
                    reservoir.add(X, y)
                    for det in streaming:
                        det.partial_fit(X, y)
                self.progress.advance(batch.num_rows)
        return n_valid

    def _root_ids(self, clusters, ok, seq_start, work_dir) -> dict[int, str]:
        """Global sequence number of every cluster root -> its id (for ``duplicate_of``)."""
        roots = clusters.all_roots()
        if roots.size == 0:
            return {}
        names = [o.shard.name for o in ok]
        starts = np.array([seq_start[n] for n in names], dtype=np.int64)
        which = np.searchsorted(starts, roots, side="right") - 1
        out: dict[int, str] = {}
        for k in np.unique(which):
            o = ok[int(k)]
            path = work_dir / (o.shard.output_name[: -len(".parquet")] + ".arrow")
            with workfile.WorkFileReader(path) as r:
                t = r.read_columns(["id", "detail"])
            ids = t.filter(t.column("detail").is_null()).column("id")
            mine = roots[which == k]
            local = mine - starts[k]
            for s, i in zip(mine.tolist(), ids.take(pa.array(local)).to_pylist()):
                out[s] = i
        return out

    # -- pass 2 ---------------------------------------------------------------------------------
    def _pass2_shard(self, o, detectors, clusters, flood_roots, root_ids, start, columns, work_dir) -> None:
        path = work_dir / (o.shard.output_name[: -len(".parquet")] + ".arrow")
        members = clusters.members.get(o.shard.name)
        if members is not None:
            order = np.argsort(members[0])
            m_rows, m_root, m_sim = members[0][order], members[1][order], members[2][order]
        else:
            m_rows = m_root = np.zeros(0, np.int64)
            m_sim = np.zeros(0, np.float32)
        o.clean = o.quarantined = o.invalid = 0
        o.reasons = Counter()
        seq = start
        with workfile.WorkFileReader(path) as reader, QuarantineWriter(
            self.out_dir, o.shard.output_name, columns
        ) as writer:
            dim = reader.schema.field("embedding").type.list_size if "embedding" in reader.schema.names else None
            for batch in reader:
                n = batch.num_rows
                rows = batch.column("row").to_numpy()
                valid = batch.column("detail").is_null().to_numpy(zero_copy_only=False)
                vidx = np.flatnonzero(valid)
                flags: dict[str, np.ndarray] = {INVALID: ~valid}
                scores: dict[str, np.ndarray] = {}
                dup_of = np.full(n, None, dtype=object)
                if self.config.near_duplicates.enabled:
                    vseq = seq + np.arange(vidx.size)
                    pos = np.searchsorted(m_rows, rows)
                    pos = np.minimum(pos, max(m_rows.size - 1, 0))
                    is_member = (m_rows.size > 0) & (m_rows[pos] == rows) if m_rows.size else np.zeros(n, bool)
                    nd_score = np.full(n, np.nan)
                    nd_score[is_member] = m_sim[pos[is_member]]
                    member_root = np.full(n, -1, np.int64)
                    member_root[is_member] = m_root[pos[is_member]]
                    all_seq = np.full(n, -1, np.int64)
                    all_seq[vidx] = vseq
                    flood = np.isin(all_seq, flood_roots) & (all_seq >= 0)
                    flood |= is_member & np.isin(member_root, flood_roots)
                    flags[NEAR_DUPLICATE] = is_member
                    flags[DUPLICATE_FLOOD] = flood
                    dup_of[is_member] = [root_ids[r] for r in member_root[is_member].tolist()]
                    scores[f"{NEAR_DUPLICATE}_score"] = nd_score
                    seq += vidx.size
                if detectors and dim is not None and vidx.size:
                    vb = batch.take(pa.array(vidx))
                    X = workfile.embeddings_from_arrow(vb.column("embedding"), dim)
                    y = vb.column("label").to_numpy(zero_copy_only=False)
                    for name, det in detectors.items():
                        s = np.full(n, np.nan)
                        s[vidx] = det.score_samples(X, y)
                        scores[f"{name}_score"] = s
                        flags[name] = np.zeros(n, bool)
                        flags[name][vidx] = s[vidx] > det.threshold_
                elif detectors:
                    for name in detectors:
                        scores[f"{name}_score"] = np.full(n, np.nan)
                        flags[name] = np.zeros(n, bool)
                flagged = np.zeros(n, bool)
                for name, f in flags.items():
                    flagged |= f
                    o.reasons[name] += int(f.sum())
                status = np.where(~valid, "invalid", np.where(flagged, "quarantined", "clean"))
                o.rows_seen = getattr(o, "rows_seen", 0)
                o.clean += int((status == "clean").sum())
                o.quarantined += int(flagged.sum())
                o.invalid += int((~valid).sum())
                score_arrays = {c: pa.array(scores.get(c, np.full(n, np.nan)), pa.float64(), from_pandas=True)
                                for c in columns}
                all_rows = pa.table(
                    {"id": batch.column("id"), "row": batch.column("row"), "label": batch.column("label"),
                     "status": pa.array(status.tolist(), pa.string()), **score_arrays}
                )
                sel = pa.array(flagged)
                q = pa.table(
                    {
                        "id": batch.column("id"),
                        "row": batch.column("row"),
                        "reasons": reasons_column(flags, n),
                        "duplicate_of": pa.array(dup_of.tolist(), pa.string()),
                        "label": batch.column("label"),
                        "detail": batch.column("detail"),
                        **score_arrays,
                    }
                ).filter(sel)
                writer.add(q, all_rows)
                self.progress.advance(n)
        o.reasons = Counter({k: v for k, v in o.reasons.items() if v})

    def _restore(self, o: ShardOutcome, done: dict[str, Any]) -> None:
        o.clean, o.quarantined, o.invalid = done["clean"], done["quarantined"], done["invalid"]
        o.reasons = Counter(done.get("reasons", {}))
        o.resumed = True
        log.info("%s: already scanned with the same inputs and config; kept", o.shard.name)

    # -- manifest and report ------------------------------------------------------------------------
    def _previous_manifest(self, run_key: str) -> dict[str, dict[str, Any]]:
        path = self.out_dir / "manifest.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        if data.get("run_key") != run_key:
            return {}
        return {s["name"]: s for s in data.get("shards", []) if s.get("status") == "ok"}

    def _manifest_base(self, run_key, embedder_info, outcomes) -> dict[str, Any]:
        return {
            "tool": "shardguard",
            "version": __version__,
            "run_key": run_key,
            "complete": False,
            "config": self.config.to_dict(),
            "embedder": embedder_info,
            "shards": [],
        }

    def _report(self, outcomes, detectors, clusters, wall, total_bytes) -> dict[str, Any]:
        reasons: Counter = Counter()
        for o in outcomes:
            reasons.update(o.reasons)
        ok = [o for o in outcomes if o.status == "ok"]
        rows = sum(o.rows for o in ok)
        totals = {
            "shards": len(outcomes),
            "failed_shards": len(outcomes) - len(ok),
            "rows": rows,
            "clean": sum(o.clean for o in ok),
            "quarantined": sum(o.quarantined for o in ok),
            "invalid": sum(o.invalid for o in ok),
        }
        nd = self.config.near_duplicates
        thresholds: dict[str, Any] = {}
        if nd.enabled:
            thresholds[NEAR_DUPLICATE] = {"jaccard": nd.threshold, "num_perm": nd.num_perm, "ngram": nd.ngram}
            thresholds[DUPLICATE_FLOOD] = {"cluster_size_over": nd.flood_size}
        for name, det in detectors.items():
            thresholds[name] = det.threshold_info()
        largest = sorted(clusters.counts.items(), key=lambda kv: -kv[1])[:10]
        return {
            "version": __version__,
            "totals": totals,
            "reasons": dict(sorted(reasons.items())),
            "thresholds": thresholds,
            "largest_duplicate_clusters": [{"root_seq": k, "size": v + 1} for k, v in largest],
            "timings_s": {k: round(v, 3) for k, v in sorted(self.timings.items())},
            "wall_s": round(wall, 3),
            "throughput_rows_per_s": round(rows / wall, 1) if wall > 0 else None,
            "input_bytes": total_bytes,
            "failed": [{"name": o.shard.name, "error": o.status} for o in outcomes if o.status != "ok"],
        }


def scan(paths: Sequence[str | Path], out_dir: str | Path, config: Config | None = None,
         progress: Progress | None = None) -> ScanResult:
    """Library entry point for ``shardguard scan``."""
    return ScanPipeline(config or Config(), out_dir, progress).run(paths)
