"""The scan as stages, shaped like the data flow; an engine runs the maps.

    shards ──► read + validate + embed ──► OUT/.work/<shard>.arrow   map, per shard      (passes.read_embed)
                                              │
               n-gram counts ─────────────────┤                      map + merge         (passes.statistics)
               reservoir, per-label statistics, candidates' rows ────┤ map + merge in scan order
               near-duplicate roots, cluster sizes and labels ───────┘ reduce in scan order (passes.index)
                                              │
                                        fit the detectors                                  (driver)
                                              │
             score cached embeddings ──► verdicts ──► QuarantineWriter   map, per shard      (pass 2, below)

The read-and-embed map is the only step that reads a shard or runs the model; its
output is keyed by the shard's sha256 and the config, so a rerun reuses it. Every row
gets a global sequence number (its rank among the valid rows in scan order), known once
the maps have counted each shard's valid rows, so the statistics maps run per shard and
merge into exactly what one pass computes (the reservoir by random keys, the streaming
statistics and candidates merged in scan order). The near-duplicate reduce replays the
work files in scan order, so roots are the same whether or not a run was resumed, and
whichever engine ran the maps. A shard that fails in the first map touches no global
state, and the other shards complete.

:class:`LocalEngine` runs the maps in this process (the statistics map in a second
thread, beside the near-duplicate reduce; the fit once the reduce has freed its index);
``shardguard.ray_engine.RayEngine`` runs the same functions as Ray tasks and actors, and
the driver fits beside the reduce, whose state is on the workers.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shardguard import __version__
from shardguard.config import Config
from shardguard.dedup import NearDuplicateIndex, RootFeatures
from shardguard.detectors import REGISTRY, EmbeddingDetector
from shardguard.detectors.ngram_stats import NgramCounts, StreamCandidates
from shardguard.embed import make_embedder
from shardguard.io import workfile
from shardguard.io.outputs import OutputLock, check_scan_output, file_sha256, json_digest, real_path
from shardguard.io.idlist import allowed_ids
from shardguard.io.readers import discover_shards
from shardguard.io.writers import QuarantineWriter, atomic_write_json, remove_stale_temps
from shardguard.passes.index import fetch_rows, index_shard, root_table
from shardguard.passes.read_embed import (
    ShardOutcome,
    digest as _digest,
    embedding_dim as _embedding_dim,
    hashed as _hashed,
    pass1_key,
    read_embed_shard,
    responses_of as _responses,
    work_path as _work_path,
)
from shardguard.passes.statistics import ShardStatistics, StatisticsSpec, count_shard_ngrams, shard_statistics
from shardguard.scoring import BatchScorer, LabelCodes, RootTable
from shardguard.stages import (
    DUPLICATE_FLOOD,
    NEAR_DUPLICATE,
    ClusterTable,
    DuplicateClusters,
    text_kwargs,
)

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
    #: The cluster roots by sequence number (id, shard, row, label), for ``duplicate_of*`` and the report.
    cluster_roots: RootTable = field(default_factory=lambda: RootTable(LabelCodes()))
    #: What each indexed root says (length, words, negations, hashes), to judge its copies.
    root_features: RootFeatures = field(default_factory=RootFeatures)
    #: Ids confirmed clean by a review (``review.allow``), as an Arrow array for ``is_in``.
    allow: pa.Array | None = None

    def release_reduce_state(self) -> None:
        """Free what only the near-duplicate reduce and the clusters' resolution read, once
        both are done: the index (an empty one with its parameters says there is one), its
        roots' features, and the copies' labels and features. The scan's lists need only
        the resolved clusters and each shard's copies; a guard (``remember_roots``) keeps it
        all. Done before the fit, whose temporaries are the scan's largest: the peak then
        holds none of the index (docs/scaling.md, "memory")."""
        idx = self.dup_index
        if idx is not None:
            self.dup_index = NearDuplicateIndex(idx.threshold, idx.num_perm, idx.ngram, idx.seed)
        self.root_features = RootFeatures()
        self.clusters.release_resolved()


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


class Engine(Protocol):
    """Runs the scan's maps: in this process (:class:`LocalEngine`) or elsewhere
    (``shardguard.ray_engine.RayEngine``). Every engine calls the same stage functions;
    the reduces and the fit run in the caller's process."""

    name: str

    def read_embed(self, pipeline: "ScanPipeline", todo: Sequence[ShardOutcome], embedder: Any,
                   embedder_info: dict[str, Any] | None, work_dir: Path) -> None:
        """Write (or reuse) the work file of every shard in ``todo``, updating the outcomes."""

    def map(self, fn: Any, jobs: Sequence[tuple]) -> Iterable[Any]:
        """``fn(*job)`` for every job, yielded in the jobs' order."""

    #: Whether the statistics map may run in a thread beside :meth:`near_duplicates` (an
    #: engine whose reduce needs the CPUs the maps hold runs them one after the other).
    parallel_reduces: bool

    #: Whether :meth:`map` runs ``fn`` in the caller's process, so that a job may carry
    #: state of the caller's to add into (the statistics map's reservoir).
    in_process: bool

    #: Whether the fit may run beside :meth:`near_duplicates` (with ``parallel_reduces``):
    #: true where the reduce's state lives elsewhere; in this process the fit waits for the
    #: index to be freed, so that the peak memory is one of the two, not both.
    fits_beside_reduce: bool

    def near_duplicates(self, pipeline: "ScanPipeline", ok: Sequence[ShardOutcome], state: "ScanState",
                        copies: str) -> None:
        """The near-duplicate reduce over the valid rows of ``ok`` (scan order): records every
        copy into ``state.clusters`` and the cluster roots' features into
        ``state.root_features``, as the sequential replay does."""

    def score_write(self, pipeline: "ScanPipeline", todo: Sequence[ShardOutcome], state: "ScanState",
                    clusters: ClusterTable, roots: RootTable,
                    columns: list[str]) -> Iterable[ShardOutcome]:
        """Pass 2 for every shard in ``todo``; yields each outcome (updated) once its lists are written."""


class ScanAbandoned(RuntimeError):
    """Raised in the statistics' thread once the scan beside it has failed: it stops there,
    between shards, instead of reading the rest of the work files for nobody."""


class _Beside:
    """``fn()`` in a thread beside the caller's work; :meth:`result` waits for it and raises
    what it raised. A daemon thread, unlike an executor's: a scan that fails or is
    interrupted (Ctrl-C) in the caller's thread does not wait for the statistics or the fit
    beside it to finish (minutes, for a large labelled fit) before the process can exit."""

    def __init__(self, fn: Any, name: str) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Any) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self._error = exc

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


class LocalEngine:
    """Every map in this process, one shard after another (the statistics map in a thread
    of its own beside the near-duplicate reduce, see :meth:`ScanPipeline.prepare`)."""

    name = "local"

    def read_embed(self, pipeline: "ScanPipeline", todo: Sequence[ShardOutcome], embedder: Any,
                   embedder_info: dict[str, Any] | None, work_dir: Path) -> None:
        for o in todo:
            read_embed_shard(pipeline.config, o, embedder, embedder_info, work_dir, pipeline.timings,
                             pipeline.progress.advance)

    def map(self, fn: Any, jobs: Sequence[tuple]) -> Iterator[Any]:
        for job in jobs:
            yield fn(*job)

    parallel_reduces = True
    in_process = True
    fits_beside_reduce = False

    def near_duplicates(self, pipeline: "ScanPipeline", ok: Sequence[ShardOutcome], state: "ScanState",
                        copies: str) -> None:
        """The sequential replay: every work file into one index, in scan order."""
        for position, o in enumerate(ok):
            index_shard(o, position, state, copies)
            pipeline.progress.advance(o.rows)

    def score_write(self, pipeline: "ScanPipeline", todo: Sequence[ShardOutcome], state: "ScanState",
                    clusters: ClusterTable, roots: RootTable,
                    columns: list[str]) -> Iterator[ShardOutcome]:
        for o in todo:
            pipeline._pass2_shard(o, state, clusters, roots, columns)
            yield o


class ScanPipeline:
    """Runs ``shardguard scan``: see the module docstring for the flow.

    Parameters
    ----------
    config : the resolved run configuration.
    out_dir : the output folder (created; reruns resume inside it).
    progress : receives stage starts and row counts (no output when None).
    engine : runs the maps (default :class:`LocalEngine`: this process); the lists do not
        depend on it.
    """

    def __init__(self, config: Config, out_dir: str | Path, progress: Progress | None = None,
                 engine: Engine | None = None):
        self.config = config
        self.engine = engine or LocalEngine()
        self.out_dir = Path(out_dir)
        self.progress = progress or _NoProgress()
        self.timings: Counter = Counter()
        #: Sizes of the driver's corpus-sized state after the reduces and the fit (report.json).
        self.state_sizes: dict[str, int] = {}
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

        # Pass 2 (map, per shard): verdicts and lists.
        t = time.perf_counter()
        roots = state.cluster_roots
        clusters = state.clusters.table()
        self.state_sizes["duplicate_clusters"] = int(clusters.roots.size)  # each a row of roots
        columns = score_columns(self.config, list(state.detectors))
        manifest = self._manifest_base(state.run_key, state.embedder_info)

        def mark_done(o: ShardOutcome) -> None:
            o.done = True
            manifest["shards"] = [x.to_json() for x in state.outcomes if x.done or x.status != "ok"]
            atomic_write_json(self.out_dir / "manifest.json", manifest)

        self.progress.start("score + write", sum(o.rows for o in ok))
        todo = []
        for o in ok:
            done = previous.get(o.shard.name)
            complete = (self.out_dir / "quarantine" / o.shard.output_name).exists() and (
                self.out_dir / "scores" / o.shard.output_name
            ).exists()
            if done is not None and complete:
                self._restore(o, done)
                self.progress.advance(o.rows)
                mark_done(o)
            else:
                todo.append(o)
        for o in self.engine.score_write(self, todo, state, clusters, roots, columns):
            mark_done(o)
        self.progress.finish()
        self.timings["score_write"] += time.perf_counter() - t

        wall = time.perf_counter() - t_start
        report = self._report(state.outcomes, state.detectors, clusters, wall, state.input_bytes, roots)
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
        """The maps, the reduces and the fit: everything but the lists. ``Guard.fit`` stops here.

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
                # where it runs is not what it finds: either engine resumes the other's run
                "config": {k: v for k, v in cfg.to_dict().items() if k != "engine"},
                "embedder": embedder_info,
                "shards": [(o.shard.name, o.sha256) for o in outcomes],
                "allow_sha256": file_sha256(cfg.review.allow) if cfg.review.allow else None,
            }
        )

        # Map: read, validate, embed each shard into its work file.
        self.progress.start("read + embed", None)
        self.engine.read_embed(self, [o for o in outcomes if o.status == "ok"], embedder, embedder_info, work_dir)
        self.progress.finish()
        ok = [o for o in outcomes if o.status == "ok"]
        # Every valid row's global sequence number: its rank in scan order.
        seq_start = dict(zip([o.shard.name for o in ok], np.cumsum([0] + [o.valid for o in ok]).tolist()))
        paths_ok = [_work_path(work_dir, o.shard) for o in ok]

        # N-gram counts per shard (map, merged), then the candidates of the whole stream.
        candidates = {}
        t = time.perf_counter()
        if cfg.input.label_column and any(getattr(d, "uses_stream_candidates", False) for d in detectors.values()):
            self.progress.start("count n-grams", sum(o.rows for o in ok))
            merged: NgramCounts | None = None
            jobs = [(p, pass1_key(cfg, o.sha256, embedder_info)) for p, o in zip(paths_ok, ok)]
            for o, part in zip(ok, self.engine.map(count_shard_ngrams, jobs)):
                merged = part if merged is None else merged.merge(part)
                self.progress.advance(o.rows)
            self.progress.finish()
            counts = merged if merged is not None else NgramCounts([], [], [])
            for name, det in detectors.items():
                if getattr(det, "uses_stream_candidates", False):
                    candidates[name] = det.select_candidates(counts)
                    log.info("%s: %d candidate n-grams in %d rows", name, len(candidates[name]), counts.n_rows)
        self.timings["ngram_counts"] += time.perf_counter() - t

        # Statistics per shard (map, merged in scan order), beside the near-duplicate reduce.
        t = time.perf_counter()
        # the index lives in the state alone, which frees it before the fit (release_reduce_state)
        state = ScanState(
            outcomes=outcomes,
            work_dir=work_dir,
            embedder=embedder,
            embedder_info=embedder_info,
            detectors=detectors,
            dup_index=NearDuplicateIndex(threshold=cfg.near_duplicates.threshold, num_perm=cfg.near_duplicates.num_perm,
                                         ngram=cfg.near_duplicates.ngram, seed=cfg.near_duplicates.seed)
            if cfg.near_duplicates.enabled else None,
            clusters=DuplicateClusters(cfg.near_duplicates.flood_size, cfg.near_duplicates.flood_agreement),
            run_key=run_key,
            input_bytes=sum(o.size for o in outcomes),
            seq_start=seq_start,
            root_ids=[] if remember_roots else None,
            skipped_detectors=skipped,
            allow=allow,
        )
        spec = StatisticsSpec.of(cfg, detectors, candidates)

        abandoned = threading.Event()  # the scan failed beside the statistics: nothing reads them

        def statistics() -> ShardStatistics:
            total = spec.empty()
            if detectors:
                # In this process every shard offers its rows to the one reservoir: a reservoir
                # per shard would hold up to another full sample for each shard beside the
                # total, and the sample is the same for any split (keys by sequence number).
                shared = total.reservoir if getattr(self.engine, "in_process", False) else None
                jobs = [(p, seq_start[o.shard.name], spec, shared) for p, o in zip(paths_ok, ok)]
                for part in self.engine.map(shard_statistics, jobs):
                    if abandoned.is_set():  # stop reading work files for a scan that has failed
                        raise ScanAbandoned("the scan failed beside its statistics")
                    total.merge(part)
            return total

        # The statistics read the embeddings, the index the texts: independent, so the
        # statistics (numpy / BLAS, or waiting on Ray) run in a second thread. The index stays
        # in this thread: its temporaries grow with the index, and a second thread's allocator
        # arena would keep what they leave behind. The fit needs the statistics only: where the
        # reduce runs elsewhere, it follows them in that thread, beside the reduce. A failure
        # here ends that thread at its next shard (a daemon: nothing waits for it).
        parallel = getattr(self.engine, "parallel_reduces", True)
        fit_beside = parallel and getattr(self.engine, "fits_beside_reduce", False)

        def statistics_then_fit() -> ShardStatistics:
            stats = statistics()
            if fit_beside and not abandoned.is_set():
                self._fit(detectors, stats, embedder, ok, seq_start, work_dir)
            return stats

        stats_future = _Beside(statistics_then_fit, "shardguard-statistics") if parallel else None
        try:  # a failure here ends the statistics beside it too, between shards
            stats = None if parallel else statistics()
            self.progress.start("index", sum(o.rows for o in ok))
            if state.dup_index is not None:
                self.engine.near_duplicates(self, ok, state, cfg.near_duplicates.copies)
            else:
                self.progress.advance(sum(o.rows for o in ok))
            if stats_future is not None and not fit_beside:
                stats = stats_future.result()
            self.progress.finish()
            state.cluster_roots = root_table(state.clusters.all_roots(), ok, seq_start, work_dir)
            state.clusters.resolve(state.cluster_roots.label_of, state.root_features,
                                   lambda seqs: fetch_rows(ok, seq_start, work_dir, seqs, embeddings=False)[2])
            self.timings["index"] += time.perf_counter() - t
            # The reduces' state that grows with the corpus (docs/scaling.md reads these).
            if state.dup_index is not None and state.dup_index.n_docs:  # an engine that partitions the reduce reports its own
                self.state_sizes["near_duplicate_index_bytes"] = int(state.dup_index.nbytes)
                self.state_sizes["near_duplicate_roots"] = int(state.dup_index.n_roots)
            self.state_sizes["root_features_bytes"] = int(state.root_features.nbytes)
            self.state_sizes["cluster_roots_bytes"] = int(state.cluster_roots.nbytes)
            if not remember_roots:
                state.release_reduce_state()
            if fit_beside:
                stats = stats_future.result()
            else:
                self._fit(detectors, stats, embedder, ok, seq_start, work_dir)
            return state
        except BaseException:
            abandoned.set()
            raise

    def _fit(self, detectors: dict[str, EmbeddingDetector], stats: ShardStatistics, embedder: Any,
             ok: Sequence[ShardOutcome], seq_start: dict[str, int], work_dir: Path) -> None:
        """Fit (or calibrate, after merging their streaming state) the embedding detectors on
        the reservoir sample of ``stats``; drops them all when fewer than 2 rows were sampled."""
        t = time.perf_counter()
        reservoir = stats.reservoir
        if detectors:
            X, y, texts = reservoir.sample()
            if X.shape[0] < 2:
                log.warning("too few valid rows (%d) to fit the embedding detectors; they are skipped", X.shape[0])
                detectors.clear()
            for name, det in detectors.items():
                kw = text_kwargs(det, texts, reservoir.sample_responses())
                if name in stats.gatherers:
                    rows = stats.gatherers[name].finish()
                    self.state_sizes[f"{name}_candidate_rows"] = int(rows.seqs.size)
                    kw["candidates"] = StreamCandidates(
                        rows, reservoir.sample_seqs(), lambda seqs: fetch_rows(ok, seq_start, work_dir, seqs))
                if getattr(det, "embeds_new_texts", False) and hasattr(embedder, "embed_texts"):
                    kw["embed"] = embedder.embed_texts
                if det.streaming:
                    det.merge(stats.streaming[name])
                    det.calibrate(X, y, **kw)
                else:
                    det.fit(X, y, **kw)
                log.debug("fitted %s: %s", name, det.threshold_info())
        self.timings["fit"] += time.perf_counter() - t

    # -- pass 2 ---------------------------------------------------------------------------------
    def _pass2_shard(self, o: ShardOutcome, state: "ScanState", clusters: ClusterTable,
                     roots: RootTable, columns: list[str], members: tuple | None = None) -> None:
        """Score and write one shard. ``members``: its copies as ``DuplicateClusters.members``
        gives them (default: from ``state.clusters``); ``clusters`` and ``roots`` need hold
        only the clusters those copies and the shard's own rows belong to."""
        m_rows, m_root, m_sim, m_contradicts = members if members is not None else state.clusters.members(o.shard.name)
        o.clean = o.quarantined = o.invalid = o.allowed = 0
        o.reasons = Counter()
        seq = state.seq_start[o.shard.name]
        scorer = BatchScorer(state.detectors, self.config.near_duplicates.copies, clusters, roots,
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
                roots: RootTable | None = None) -> dict[str, Any]:
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
        roots = roots if roots is not None else RootTable(LabelCodes())
        big_id, big_shard, big_row, _ = roots.lookup(table.roots[largest])
        agreement = table.agreement if table.agreement is not None else np.full(table.roots.size, np.nan)
        measured = np.flatnonzero(np.isfinite(agreement))
        judged = measured[np.lexsort((table.roots[measured], -agreement[measured]))][:10]
        judged_id = roots.lookup(table.roots[judged])[0]
        return {
            **findings,
            "version": __version__,
            "totals": totals,
            "reasons": dict(sorted(reasons.items())),
            "thresholds": thresholds,
            "largest_duplicate_clusters": [
                {
                    "root_id": big_id[j],
                    "root_shard": big_shard[j],
                    "root_row": big_row[j],
                    "size": int(table.sizes[i]),
                    "flood": bool(table.flood[i]),
                    # consensus_agreement of its rows, where the flood rule measured it (else null)
                    "agreement": round(float(agreement[i]), 3) if np.isfinite(agreement[i]) else None,
                    "first_label": table.reference[i],
                    "majority_label": table.majority[i],
                }
                for j, i in enumerate(largest.tolist())
            ],
            # the clusters whose agreement the flood rule measured, most agreeing first (the
            # rows that decide between a flood of edited copies and rows filling one frame)
            "judged_duplicate_clusters": [
                {"root_id": judged_id[j], "size": int(table.sizes[i]),
                 "agreement": round(float(agreement[i]), 3), "flood": bool(table.flood[i])}
                for j, i in enumerate(judged.tolist())
            ],
            "timings_s": {k: round(v, 3) for k, v in sorted(self.timings.items())},
            "state_sizes": dict(sorted(self.state_sizes.items())),
            # what the timings and memory depend on besides the config (see shardguard.launch)
            "runtime": {"arrow_memory_pool": pa.default_memory_pool().backend_name,
                        "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX")},
            "wall_s": round(wall, 3),
            "engine": self.engine.name,
            "throughput_rows_per_s": round(rows / wall, 1) if wall > 0 else None,
            "input_bytes": total_bytes,
            "failed": [{"name": o.shard.name, "error": o.status} for o in outcomes if o.status != "ok"],
        }


def scan(paths: Sequence[str | Path], out_dir: str | Path, config: Config | None = None,
         progress: Progress | None = None, engine: Engine | None = None) -> ScanResult:
    """Library entry point for ``shardguard scan``. ``engine``: None runs the one the config's
    ``engine`` section names (with ``kind: ray``, a Ray engine made for this call and closed
    after it); an engine given (a :class:`~shardguard.ray_engine.RayEngine` kept across
    scans) runs instead."""
    config = config or Config()
    if engine is None and config.engine.kind == "ray":
        from shardguard.ray_engine import make_ray_engine

        with make_ray_engine(config.engine) as ray_engine:
            return ScanPipeline(config, out_dir, progress, ray_engine).run(paths)
    return ScanPipeline(config, out_dir, progress, engine).run(paths)
