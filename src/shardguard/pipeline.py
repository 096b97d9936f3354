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
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shardguard import __version__
from shardguard.config import Config
from shardguard.dedup import NearDuplicateIndex, RootFeatures, index_texts
from shardguard.detectors import REGISTRY, EmbeddingDetector
from shardguard.detectors.ngram_stats import (
    TOKENIZER_VERSION,
    CandidateGatherer,
    NgramCounter,
    NgramCounts,
    StreamCandidates,
)
from shardguard.embed import make_embedder
from shardguard.io import workfile
from shardguard.io.outputs import OutputLock, check_scan_output, file_sha256, json_digest, real_path
from shardguard.io.idlist import allowed_ids
from shardguard.io.readers import Shard, ShardError, ShardReader, discover_shards
from shardguard.io.writers import QuarantineWriter, atomic_write_json, remove_stale_temps
from shardguard.scoring import BatchScorer, MappingRoots
from shardguard.stages import (
    DUPLICATE_FLOOD,
    NEAR_DUPLICATE,
    ClusterTable,
    DuplicateClusters,
    ReservoirSample,
    text_kwargs,
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
    allowed: int = 0
    resumed: bool = False
    done: bool = False
    size: int = 0

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


@dataclass
class ScanResult:
    out_dir: Path
    shards: list[ShardOutcome]
    report: dict[str, Any]

    @property
    def failed(self) -> list[ShardOutcome]:
        return [s for s in self.shards if s.status != "ok"]


@dataclass
class ScanState:
    """What pass 1 and the fit leave for pass 2 (and for a :class:`~shardguard.guard.Guard`)."""

    outcomes: list[ShardOutcome]
    work_dir: Path
    embedder: Any
    embedder_info: dict[str, Any] | None
    detectors: dict[str, EmbeddingDetector]
    dup_index: NearDuplicateIndex | None
    clusters: DuplicateClusters
    run_key: str
    input_bytes: int
    seq_start: dict[str, int] = field(default_factory=dict)
    #: With ``prepare(remember_roots=True)``: sequence numbers and ids of the indexed rows.
    root_seqs: list[np.ndarray] = field(default_factory=list)
    root_ids: list[pa.Array] | None = None
    skipped_detectors: dict[str, str] = field(default_factory=dict)
    root_rows: list[np.ndarray] = field(default_factory=list)
    root_shards: list[np.ndarray] = field(default_factory=list)  # index into the ok shards, in scan order
    root_labels: list[np.ndarray] = field(default_factory=list)
    #: Cluster root sequence number -> (id, shard, row, label), for ``duplicate_of*`` and the report.
    cluster_roots: dict[int, tuple[str, str, int, Any]] = field(default_factory=dict)
    #: What each indexed root says (length, words, negations, hashes), to judge its copies.
    root_features: RootFeatures = field(default_factory=RootFeatures)
    #: Ids confirmed clean by a review (``review.allow``), as an Arrow array for ``is_in``.
    allow: pa.Array | None = None


def one_line(message: str) -> str:
    """A manifest status is one line: a library's multi-line error is folded onto it."""
    return " ".join(message.split())


def _hashed(shard: Shard) -> ShardOutcome:
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


def _work_path(work_dir: Path, shard: Shard) -> Path:
    return work_dir / (shard.output_name[: -len(".parquet")] + ".arrow")


def _no_rows(dim: int | None) -> np.ndarray | None:
    """The embeddings of a batch without valid rows: shape (0, dim), or None without an embedder."""
    return None if dim is None else np.zeros((0, dim), np.float32)


def _embedding_dim(schema: pa.Schema) -> int | None:
    return schema.field("embedding").type.list_size if "embedding" in schema.names else None


def _responses(batch: pa.RecordBatch) -> np.ndarray | None:
    """The ``response`` column of a work-file batch (input.response_column), or None."""
    if "response" not in batch.schema.names:
        return None
    return batch.column("response").to_numpy(zero_copy_only=False)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def build_detectors(config: Config, embedder: Any = None,
                    skipped: dict[str, str] | None = None) -> dict[str, EmbeddingDetector]:
    """Instantiate the enabled embedding detectors from the registry (none is fitted).

    Detectors that need semantic embeddings are left out when ``embedder`` is not
    semantic; why goes into ``skipped`` (name -> reason) and the log.
    """
    out = {}
    for name, params in config.enabled_detectors().items():
        params = dict(params)
        cls = REGISTRY[name]
        if cls.needs_semantic_embeddings and not getattr(embedder, "semantic", True):
            why = (f"needs semantic embeddings; the {getattr(embedder, 'kind', config.embed.embedder)} embedder's vectors carry "
                   "words, not meaning (use the default model or a precomputed column)")
            log.warning("detector %s left out: %s", name, why)
            if skipped is not None:
                skipped[name] = why
            continue
        if "random_state" in cls._get_param_names() and "random_state" not in params:
            params["random_state"] = config.random_state
        out[name] = cls(**params)
    return out


def _embedder_summary(info: dict[str, Any] | None) -> dict[str, Any] | None:
    """What report.json says of the embedder: which ran, which model, and why it was chosen."""
    if info is None:
        return None
    sel = info.get("selected") or {}
    return {"kind": info.get("kind"), "model": info.get("model"), "device": info.get("device"),
            "dim": info.get("dim"), "why": sel.get("why")}


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
        self._lock: OutputLock | None = None
        self._inputs: list[str] = []

    @contextmanager
    def _exclusive(self, paths: Sequence[str | Path]) -> Iterator[None]:
        """Check OUT against the inputs and hold its lock; an interrupted run leaves no temporary file.

        Re-entrant: ``run`` holds it across ``prepare`` and pass 2.
        """
        if self._lock is not None:
            yield
            return
        check_scan_output(self.out_dir, paths)
        self._inputs = [str(real_path(p)) for p in paths]
        lock = OutputLock(self.out_dir, "scan").acquire()
        self._lock = lock
        try:
            yield
        except BaseException:  # KeyboardInterrupt, SIGTERM (see cli): what is half-written goes
            remove_stale_temps(self.out_dir)
            raise
        finally:
            self._lock = None
            lock.release()

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
        """Scan ``paths`` into the output folder; see the module docstring."""
        with self._exclusive(paths):
            return self._run(paths)

    def _run(self, paths: Sequence[str | Path]) -> ScanResult:
        t_start = time.perf_counter()
        state = self.prepare(paths)
        ok = [o for o in state.outcomes if o.status == "ok"]
        previous = self._previous_manifest(state.run_key)

        # Pass 2: verdicts and lists.
        t = time.perf_counter()
        root_ids = state.cluster_roots
        clusters = state.clusters.table()
        columns = score_columns(self.config, list(state.detectors))
        manifest = self._manifest_base(state.run_key, state.embedder_info)
        self.progress.start("score + write", sum(o.rows for o in ok))
        for o in ok:
            done = previous.get(o.shard.name)
            complete = (self.out_dir / "quarantine" / o.shard.output_name).exists() and (
                self.out_dir / "scores" / o.shard.output_name
            ).exists()
            if done is not None and complete:
                self._restore(o, done)
                self.progress.advance(o.rows)
            else:
                self._pass2_shard(o, state, clusters, root_ids, columns)
            o.done = True
            manifest["shards"] = [x.to_json() for x in state.outcomes if x.done or x.status != "ok"]
            atomic_write_json(self.out_dir / "manifest.json", manifest)
        self.progress.finish()
        self.timings["score_write"] += time.perf_counter() - t

        wall = time.perf_counter() - t_start
        report = self._report(state.outcomes, state.detectors, clusters, wall, state.input_bytes, root_ids)
        report["skipped_detectors"] = state.skipped_detectors
        report["embedder"] = _embedder_summary(state.embedder_info)
        report["run_key"] = state.run_key
        manifest["shards"] = [x.to_json() for x in state.outcomes]
        manifest["totals"] = report["totals"]
        atomic_write_json(self.out_dir / "report.json", report)
        # Last: the manifest marks the run complete and records a digest of every output and of itself,
        # which ``shardguard verify`` checks.
        manifest["complete"] = True
        outputs = ["report.json"] + [f"{sub}/{o.shard.output_name}" for o in ok for sub in ("quarantine", "scores")]
        manifest["outputs"] = {name: file_sha256(self.out_dir / name) for name in outputs}
        manifest["manifest_sha256"] = json_digest(manifest, "manifest_sha256")
        atomic_write_json(self.out_dir / "manifest.json", manifest)
        return ScanResult(self.out_dir, state.outcomes, report)

    def prepare(self, paths: Sequence[str | Path], remember_roots: bool = False) -> "ScanState":
        """Pass 1 and the fit: everything but the lists. ``Guard.fit`` stops here.

        With ``remember_roots`` the state also keeps the id of every indexed
        (first-occurrence) row, so a guard can tell a fitted row from a repeat
        of it and name what a repeat duplicates.
        """
        with self._exclusive(paths):
            return self._prepare(paths, remember_roots)

    def _prepare(self, paths: Sequence[str | Path], remember_roots: bool) -> "ScanState":
        shards = discover_shards(paths)
        cfg = self.config
        (self.out_dir / "quarantine").mkdir(parents=True, exist_ok=True)
        work_dir = self.out_dir / ".work"
        work_dir.mkdir(exist_ok=True)
        removed = remove_stale_temps(self.out_dir)
        if removed:
            log.info("removed %d temporary file(s) left by an interrupted run", removed)

        t = time.perf_counter()
        outcomes = [_hashed(s) for s in shards]
        self.timings["hash_inputs"] += time.perf_counter() - t

        t = time.perf_counter()
        embedder = make_embedder(cfg.embed, cfg.random_state)  # imports torch for the model path
        embedder_info = embedder.describe() if embedder is not None else None  # hashes the weights
        if embedder_info is not None and getattr(embedder, "selection", None):
            embedder_info["selected"] = embedder.selection
            log.info("embedder: %s (%s)", embedder.selection["embedder"], embedder.selection["why"])
        self.timings["setup"] += time.perf_counter() - t
        skipped: dict[str, str] = {}
        detectors = build_detectors(cfg, embedder, skipped)
        allow = allowed_ids(cfg.review.allow)
        run_key = _digest(
            {
                "version": __version__,
                "config": cfg.to_dict(),
                "embedder": embedder_info,
                "shards": [(o.shard.name, o.sha256) for o in outcomes],
                "allow_sha256": file_sha256(cfg.review.allow) if cfg.review.allow else None,
            }
        )

        # Pass 1a: read, validate, embed each shard into its work file.
        self.progress.start("read + embed", None)
        for o in outcomes:
            if o.status == "ok":
                self._pass1_shard(o, embedder, embedder_info, work_dir)
        self.progress.finish()
        ok = [o for o in outcomes if o.status == "ok"]

        # N-gram counts per shard (map), then the candidates of the whole stream (reduce).
        gatherers: dict[str, CandidateGatherer] = {}
        t = time.perf_counter()
        for name, det in detectors.items():
            if getattr(det, "uses_stream_candidates", False) and cfg.input.label_column:
                counts = self._count_ngrams(ok, work_dir, embedder_info)
                gatherers[name] = CandidateGatherer(det.select_candidates(counts))
                log.info("%s: %d candidate n-grams in %d rows", name, len(gatherers[name].candidates),
                         counts.n_rows)
        self.timings["ngram_counts"] += time.perf_counter() - t

        # Pass 1b: near-duplicates, statistics, reservoir and candidates' rows, in scan order.
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
        state = ScanState(
            outcomes=outcomes,
            work_dir=work_dir,
            embedder=embedder,
            embedder_info=embedder_info,
            detectors=detectors,
            dup_index=dup_index,
            clusters=DuplicateClusters(cfg.near_duplicates.flood_size, cfg.near_duplicates.flood_agreement),
            run_key=run_key,
            input_bytes=sum(o.size for o in outcomes),
            root_ids=[] if remember_roots else None,
            skipped_detectors=skipped,
            allow=allow,
        )
        needs_text = any(getattr(d, "needs_text", False) for d in detectors.values())
        reservoir = ReservoirSample(cfg.fit.reservoir_size, cfg.random_state, keep_text=needs_text)
        seq = 0
        self.progress.start("index", sum(o.rows for o in ok))
        for o in ok:
            state.seq_start[o.shard.name] = seq
            seq += self._replay_shard(o, state, reservoir, list(gatherers.values()))
        self.progress.finish()
        state.cluster_roots = self._root_ids(state.clusters, ok, state.seq_start, work_dir)
        state.clusters.resolve({k: v[3] for k, v in state.cluster_roots.items()}, state.root_features,
                               lambda seqs: self._fetch_rows(ok, state.seq_start, work_dir, seqs, embeddings=False)[2])
        self.timings["index"] += time.perf_counter() - t

        # Fit.
        t = time.perf_counter()
        if detectors:
            X, y, texts = reservoir.sample()
            if X.shape[0] < 2:
                log.warning("too few valid rows (%d) to fit the embedding detectors; they are skipped", X.shape[0])
                detectors.clear()
            for name, det in detectors.items():
                kw = text_kwargs(det, texts, reservoir.sample_responses())
                if name in gatherers:
                    kw["candidates"] = StreamCandidates(
                        gatherers[name].finish(), reservoir.sample_seqs(),
                        lambda seqs: self._fetch_rows(ok, state.seq_start, work_dir, seqs))
                if getattr(det, "embeds_new_texts", False) and hasattr(embedder, "embed_texts"):
                    kw["embed"] = embedder.embed_texts
                if det.streaming:
                    det.calibrate(X, y, **kw)
                else:
                    det.fit(X, y, **kw)
                log.debug("fitted %s: %s", name, det.threshold_info())
        self.timings["fit"] += time.perf_counter() - t
        return state

    # -- pass 1a ------------------------------------------------------------------------------
    def _pass1_shard(self, o: ShardOutcome, embedder, embedder_info, work_dir: Path) -> None:
        cfg = self.config
        path = _work_path(work_dir, o.shard)
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
        dtype = workfile.cache_dtype(cfg.embed.embedder)
        # Batches seen before the embedding dimension is known (precomputed features, all rows
        # invalid so far) wait here; they hold invalid rows only.
        pending: list[Any] = []
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
                o.rows += batch.num_rows
                o.invalid += nb.invalid.num_rows
                self.progress.advance(batch.num_rows)
                if writer is None:
                    dim = None
                    if embedder is not None:
                        dim = emb.shape[1] if emb is not None else getattr(embedder, "dim", None)
                        if dim is None:
                            pending.append(nb)
                            continue
                    writer = workfile.WorkFileWriter(path, dim, dtype, response=bool(cfg.input.response_column))
                    for held in pending:
                        writer.write(held.valid, _no_rows(dim), held.invalid)
                    pending = []
                writer.write(nb.valid, emb if emb is not None else _no_rows(writer.dim), nb.invalid)
            if writer is None:  # no valid row at all
                dim = getattr(embedder, "dim", None) if embedder is not None else None
                writer = workfile.WorkFileWriter(path, dim, dtype, response=bool(cfg.input.response_column))
                for held in pending:
                    writer.write(held.valid, _no_rows(dim), held.invalid)
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
    def _replay_shard(self, o: ShardOutcome, state: "ScanState", reservoir: ReservoirSample,
                      gatherers: Sequence[CandidateGatherer] = ()) -> int:
        """Feed one shard's valid rows to the global state; returns how many there were.

        The two consumers of a batch are independent -- the near-duplicate index reads
        the texts, the statistics and reservoir the embeddings -- so a second thread
        feeds a batch to the statistics while this one indexes it (both spend their
        time in numpy / BLAS, which release the GIL). Each sees the batches one at a
        time, in scan order: the results are those of a serial run. The index stays in
        this thread: its temporaries grow with the index, and a second thread's
        allocator arena would keep what they leave behind.
        """
        path = _work_path(state.work_dir, o.shard)
        n_valid = 0
        streaming = [d for d in state.detectors.values() if d.streaming]

        seq0 = state.seq_start[o.shard.name]

        def feed_statistics(X: np.ndarray, y: np.ndarray, texts: np.ndarray | None, seqs: np.ndarray,
                            responses: np.ndarray | None) -> None:
            reservoir.add(X, y, texts, seqs, responses)
            for det in streaming:
                det.partial_fit(X, y, **text_kwargs(det, texts))
            for g in gatherers:
                g.add(texts.tolist(), seqs)

        with workfile.WorkFileReader(path) as reader, ThreadPoolExecutor(1, "shardguard-statistics") as pool:
            dim = _embedding_dim(reader.schema)
            for batch in reader:
                vb = batch.filter(batch.column("detail").is_null())
                n_valid += vb.num_rows
                y = vb.column("label").to_numpy(zero_copy_only=False)
                feeding = None
                if vb.num_rows and state.detectors and dim is not None:
                    X = workfile.embeddings_from_arrow(vb.column("embedding"), dim)
                    texts = vb.column("text").to_numpy(zero_copy_only=False) if reservoir.texts is not None else None
                    seqs = seq0 + n_valid - vb.num_rows + np.arange(vb.num_rows, dtype=np.int64)
                    responses = _responses(vb) if reservoir.texts is not None else None
                    feeding = pool.submit(feed_statistics, X, y, texts, seqs, responses)
                if vb.num_rows and state.dup_index is not None:
                    first = state.dup_index.n_docs
                    # rows are judged by what they say only where that decides a verdict
                    judged = y if self.config.near_duplicates.copies == "conflicting" else None
                    added, contradicts, feats = index_texts(state.dup_index, state.root_features,
                                                            vb.column("text"), judged)
                    root = added.root
                    rows = vb.column("row").to_numpy()
                    state.clusters.record(o.shard.name, rows, root, added.sim, y, contradicts, feats,
                                          first + np.arange(vb.num_rows, dtype=np.int64))
                    if state.root_ids is not None:
                        is_root = added.new_root  # indexed as a root: later rows may name it
                        state.root_seqs.append(first + np.flatnonzero(is_root))
                        state.root_ids.append(pc.filter(vb.column("id"), pa.array(is_root)))
                        state.root_rows.append(rows[is_root])
                        state.root_labels.append(y[is_root])
                        state.root_shards.append(np.full(int(is_root.sum()), len(state.seq_start) - 1, np.int32))
                if feeding is not None:
                    feeding.result()  # one batch in flight: the statistics see the batches in order
                self.progress.advance(batch.num_rows)
        return n_valid

    # -- n-gram counts (map per shard) and the candidates' rows ---------------------------------
    def _count_ngrams(self, ok: Sequence[ShardOutcome], work_dir: Path, embedder_info) -> NgramCounts:
        """Each shard's n-gram document frequencies per label, from its work file's valid rows,
        kept in ``OUT/.work/ngrams/<shard>/`` beside the work file (a resumed run reuses them);
        merged over the shards."""
        merged: NgramCounts | None = None
        self.progress.start("count n-grams", sum(o.rows for o in ok))
        for o in ok:
            path = _work_path(work_dir, o.shard)
            key = self._pass1_key(o.sha256, embedder_info)
            d = work_dir / "ngrams" / path.stem
            meta_file = d / "counts.json"
            counts = None
            try:
                meta = json.loads(meta_file.read_text())
                if meta.get("key") == key and meta.get("tokenizer_version") == TOKENIZER_VERSION \
                        and all(Path(r).exists() for r in meta["runs"]):
                    counts = NgramCounts.from_json(meta)
            except (OSError, ValueError, KeyError):
                counts = None
            if counts is None:
                if d.exists():
                    for old in d.iterdir():
                        old.unlink()
                counter = NgramCounter(d)
                with workfile.WorkFileReader(path) as reader:
                    for batch in reader:
                        vb = batch.filter(batch.column("detail").is_null())
                        if vb.num_rows:
                            counter.add(vb.column("text").to_pylist(), vb.column("label").to_pylist())
                counts = counter.finish()
                atomic_write_json(meta_file, {"key": key, **counts.to_json()})
            self.progress.advance(o.rows)
            merged = counts if merged is None else merged.merge(counts)
        self.progress.finish()
        return merged if merged is not None else NgramCounts([], [], [])

    def _fetch_rows(self, ok: Sequence[ShardOutcome], seq_start: dict[str, int], work_dir: Path,
                    seqs: np.ndarray, embeddings: bool = True) -> tuple[np.ndarray, list[Any], list[str]]:
        """Embeddings (float32; an empty ``(0, 0)`` array without ``embeddings``), labels and
        texts of the valid rows with global sequence numbers ``seqs`` (sorted), read batch by
        batch from the work files."""
        seqs = np.asarray(seqs, dtype=np.int64)
        xs: list[np.ndarray] = []
        labels: list[Any] = []
        texts: list[str] = []
        for o in ok:
            lo = seq_start[o.shard.name]
            a, b = np.searchsorted(seqs, [lo, lo + o.rows])  # o.rows >= its valid rows
            if a == b:
                continue
            with workfile.WorkFileReader(_work_path(work_dir, o.shard)) as reader:
                dim = _embedding_dim(reader.schema)
                seen = lo
                for batch in reader:
                    vb = batch.filter(batch.column("detail").is_null())
                    hi = seen + vb.num_rows
                    i, j = np.searchsorted(seqs, [seen, hi])
                    if j > i:
                        take = pa.array(seqs[i:j] - seen)
                        if embeddings:
                            xs.append(workfile.embeddings_from_arrow(vb.column("embedding").take(take), dim))
                        labels.extend(vb.column("label").take(take).to_pylist())
                        texts.extend(vb.column("text").take(take).to_pylist())
                    seen = hi
        X = np.vstack(xs) if xs else np.zeros((0, 0), np.float32)
        if len(texts) != seqs.size:
            raise RuntimeError(f"fetched {len(texts)} of {seqs.size} rows from the work files")
        return X, labels, texts

    def _root_ids(self, clusters, ok, seq_start, work_dir) -> dict[int, tuple[str, str, int, Any]]:
        """Global sequence number of every cluster root -> (id, shard, row, label)."""
        roots = clusters.all_roots()
        if roots.size == 0:
            return {}
        names = [o.shard.name for o in ok]
        starts = np.array([seq_start[n] for n in names], dtype=np.int64)
        which = np.searchsorted(starts, roots, side="right") - 1
        out: dict[int, str] = {}
        for k in np.unique(which):
            o = ok[int(k)]
            with workfile.WorkFileReader(_work_path(work_dir, o.shard)) as r:
                t = r.read_columns(["id", "row", "label", "detail"])
            t = t.filter(t.column("detail").is_null())
            mine = roots[which == k]
            local = pa.array(mine - starts[k])
            ids = t.column("id").take(local).to_pylist()
            rows = t.column("row").take(local).to_pylist()
            labels = t.column("label").take(local).to_pylist()
            for s, i, r, lab in zip(mine.tolist(), ids, rows, labels):
                out[s] = (i, o.shard.name, r, lab)
        return out

    # -- pass 2 ---------------------------------------------------------------------------------
    def _pass2_shard(self, o: ShardOutcome, state: "ScanState", clusters: ClusterTable,
                     root_ids: dict[int, tuple[str, str, int, Any]], columns: list[str]) -> None:
        m_rows, m_root, m_sim, m_contradicts = state.clusters.members(o.shard.name)
        o.clean = o.quarantined = o.invalid = o.allowed = 0
        o.reasons = Counter()
        seq = state.seq_start[o.shard.name]
        scorer = BatchScorer(state.detectors, self.config.near_duplicates.copies, clusters, MappingRoots(root_ids),
                             columns, state.allow, self.config.review.text_chars)
        with workfile.WorkFileReader(_work_path(state.work_dir, o.shard)) as reader, QuarantineWriter(
            self.out_dir, o.shard.output_name, columns
        ) as writer:
            dim = _embedding_dim(reader.schema)
            for batch in reader:
                n = batch.num_rows
                rows = batch.column("row").to_numpy()
                valid = batch.column("detail").is_null().to_numpy(zero_copy_only=False)
                vidx = np.flatnonzero(valid)
                dups = None
                if state.dup_index is not None:
                    pos = np.minimum(np.searchsorted(m_rows, rows), max(m_rows.size - 1, 0))
                    is_member = (m_rows[pos] == rows) if m_rows.size else np.zeros(n, bool)
                    sim = np.full(n, np.nan)
                    sim[is_member] = m_sim[pos[is_member]]
                    member_root = np.full(n, -1, np.int64)
                    member_root[is_member] = m_root[pos[is_member]]
                    contradicts = None
                    if m_contradicts is not None:
                        contradicts = np.zeros(n, bool)
                        contradicts[is_member] = m_contradicts[pos[is_member]]
                    own_seq = np.full(n, -1, np.int64)
                    own_seq[vidx] = seq + np.arange(vidx.size)
                    labels = batch.column("label").to_numpy(zero_copy_only=False)
                    dups = scorer.duplicates(labels, member_root, sim, own_seq, contradicts)
                seq += vidx.size
                X = y = texts = responses = None
                if state.detectors and dim is not None and vidx.size:
                    vb = batch.take(pa.array(vidx))
                    X = workfile.embeddings_from_arrow(vb.column("embedding"), dim)
                    y = vb.column("label").to_numpy(zero_copy_only=False)
                    texts = vb.column("text").to_numpy(zero_copy_only=False)
                    responses = _responses(vb)
                verdicts, flags = scorer(batch, valid, dups, X, y, texts, responses)
                status = verdicts.column("status")
                q = verdicts.filter(pc.is_in(status, value_set=pa.array(["quarantined", "invalid"])))
                o.allowed += int(pc.sum(pc.equal(status, "allowed")).as_py() or 0)
                writer.add(q, verdicts)
                for name, f in flags.items():
                    o.reasons[name] += int(f.sum())
                o.quarantined += q.num_rows
                o.invalid += int((~valid).sum())
                o.clean += n - q.num_rows
                self.progress.advance(n)
        o.reasons = Counter({k: v for k, v in o.reasons.items() if v})

    def _restore(self, o: ShardOutcome, done: dict[str, Any]) -> None:
        o.clean, o.quarantined, o.invalid = done["clean"], done["quarantined"], done["invalid"]
        o.allowed = done.get("allowed", 0)
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

    def _manifest_base(self, run_key, embedder_info) -> dict[str, Any]:
        return {
            "tool": "shardguard",
            "version": __version__,
            "run_key": run_key,
            "complete": False,
            "inputs": self._inputs,
            "config": self.config.to_dict(),
            "embedder": embedder_info,
            "shards": [],
        }

    def _report(self, outcomes, detectors, table: ClusterTable, wall, total_bytes,
                root_ids: dict[int, tuple[str, str, int, Any]] | None = None) -> dict[str, Any]:
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
            "allowed": sum(o.allowed for o in ok),
        }
        nd = self.config.near_duplicates
        thresholds: dict[str, Any] = {}
        if nd.enabled:
            copies_rule = {
                "conflicting": "a later copy that says what an earlier row says (the earliest earlier "
                               "statement it repeats: similar length, not a sub-phrase or a negation of it) "
                               "under another label (both labelled)",
                "all": "every later copy",
                "none": "no copy (near_duplicate_score is still written)",
            }[nd.copies]
            thresholds[NEAR_DUPLICATE] = {
                "threshold": nd.threshold,
                "rule": "estimated Jaccard similarity of character n-gram sets to an earlier row >= threshold; "
                        f"quarantined: {copies_rule}",
                "jaccard": nd.threshold, "num_perm": nd.num_perm, "ngram": nd.ngram, "copies": nd.copies,
                "copies_found": int((table.sizes - 1).sum()),
            }
            measured = np.isfinite(table.agreement) if table.agreement is not None else np.zeros(0, bool)
            thresholds[DUPLICATE_FLOOD] = {
                "threshold": nd.flood_size, "cluster_size_over": nd.flood_size,
                "flood_agreement": nd.flood_agreement,
                "rule": "the rows carrying the majority label (all of them when unlabelled) of a cluster whose rows "
                        "of about its median length number more than the threshold, when those rows carry two "
                        "labels or more, or -- under one label or none -- are mostly distinct texts (not verbatim "
                        "repeats) that agree on one text: at every position of their consensus text at least "
                        "flood_agreement of them hold its most common variant (edited copies of one text, not "
                        "rows filling one frame with their own content)",
                "clusters_measured": int(measured.sum()),
                "clusters_agreeing": int((table.agreement[measured] >= nd.flood_agreement).sum()) if measured.any() else 0,
            }
        findings: dict[str, Any] = {}
        for name, det in detectors.items():
            thresholds[name] = det.threshold_info()
            findings.update(det.findings())
        largest = np.lexsort((table.roots, -table.sizes))[:10]  # by size, then scan order
        where = root_ids or {}
        agreement = table.agreement if table.agreement is not None else np.full(table.roots.size, np.nan)
        measured = np.flatnonzero(np.isfinite(agreement))
        judged = measured[np.lexsort((table.roots[measured], -agreement[measured]))][:10]
        return {
            **findings,
            "version": __version__,
            "totals": totals,
            "reasons": dict(sorted(reasons.items())),
            "thresholds": thresholds,
            "largest_duplicate_clusters": [
                {
                    "root_id": where.get(k, (None, None, None))[0],
                    "root_shard": where.get(k, (None, None, None))[1],
                    "root_row": where.get(k, (None, None, None))[2],
                    "size": int(table.sizes[i]),
                    "flood": bool(table.flood[i]),
                    # consensus_agreement of its rows, where the flood rule measured it (else null)
                    "agreement": round(float(agreement[i]), 3) if np.isfinite(agreement[i]) else None,
                    "first_label": table.reference[i],
                    "majority_label": table.majority[i],
                }
                for i, k in zip(largest.tolist(), table.roots[largest].tolist())
            ],
            # the clusters whose agreement the flood rule measured, most agreeing first (the
            # rows that decide between a flood of edited copies and rows filling one frame)
            "judged_duplicate_clusters": [
                {"root_id": where.get(k, (None,))[0], "size": int(table.sizes[i]),
                 "agreement": round(float(agreement[i]), 3), "flood": bool(table.flood[i])}
                for i, k in zip(judged.tolist(), table.roots[judged].tolist())
            ],
            "timings_s": {k: round(v, 3) for k, v in sorted(self.timings.items())},
            # what the timings and memory depend on besides the config (see shardguard.launch)
            "runtime": {"arrow_memory_pool": pa.default_memory_pool().backend_name,
                        "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX")},
            "wall_s": round(wall, 3),
            "throughput_rows_per_s": round(rows / wall, 1) if wall > 0 else None,
            "input_bytes": total_bytes,
            "failed": [{"name": o.shard.name, "error": o.status} for o in outcomes if o.status != "ok"],
        }


def scan(paths: Sequence[str | Path], out_dir: str | Path, config: Config | None = None,
         progress: Progress | None = None) -> ScanResult:
    """Library entry point for ``shardguard scan``."""
    return ScanPipeline(config or Config(), out_dir, progress).run(paths)
