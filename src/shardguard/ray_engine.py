"""The Ray engine: the scan's maps as Ray tasks and actors (``shardguard scan --engine ray``).

It runs the same stage functions as :class:`shardguard.pipeline.LocalEngine`. The
read-and-embed map is a Ray Data pipeline (:mod:`shardguard.ray_read`): the shards read as
Arrow batches by ``ShardReader`` in read tasks, embedded in actors that each hold an embedder
(one GPU per actor where the cluster has GPUs, CPUs otherwise), written per shard. The
n-gram count and statistics maps (:mod:`shardguard.passes.statistics`) and pass 2
(``ScanPipeline._pass2_shard``) run as calls on one actor per CPU, a shard each, while the
driver merges the maps' states in scan order and runs the fit. The near-duplicate reduce is
split by connected component (:mod:`shardguard.dedup.components`), its maps, group-bys and
joins as calls on the same actors, each group-by a shuffle through the object store (a map
returns one piece per partition, a reduce takes its piece of every map): bucket keys,
sketches and words; candidate pairs verified; components on the driver from the edges alone;
each partition of components replayed in scan order. So its lists equal the local engine's,
and a rerun resumes per shard through the same work files and manifest.

Workers read the inputs and write into ``OUT``: on a cluster of several machines both must
be on a file system every node sees, and every node needs shardguard and its model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from shardguard.passes.read_embed import ShardOutcome, read_embed_shard, reuse_work_file

if TYPE_CHECKING:
    from shardguard.config import EngineConfig
    from shardguard.pipeline import ScanPipeline, ScanState
    from shardguard.scoring import RootTable
    from shardguard.stages import ClusterTable

log = logging.getLogger(__name__)

RAY_PIP = "pip install 'shardguard[ray]'"
#: environment variables shardguard reads, passed on to the workers of a running cluster
_WORKER_ENV = ("SHARDGUARD_CACHE_DIR", "XDG_CACHE_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME")


class RayMissing(ImportError):
    """Ray is not installed: the message names the extra that installs it."""


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise RayMissing(f"--engine ray needs Ray, which this Python lacks; install it with: {RAY_PIP}") from exc
    return ray


def _start_ray_data_coordinator() -> None:
    """Start Ray Data's resource coordinator now, not when the first dataset runs.

    Ray Data (2.5x) schedules nothing before a detached actor of its own, the
    ``AutoscalingCoordinator``, has answered its first resource request; the first dataset
    on a cluster starts it, a process that imports Ray Data (2-4 s on 2 CPUs, in the
    read-and-embed stage's critical path). Started with the cluster, it comes up while the
    driver reads its inputs' digests and loads the model. A cluster where it runs already
    keeps it (``get_if_exists``). Internal to Ray Data, so a warm-up only: where it is missing
    or fails, the first dataset starts it as before."""
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )

        get_or_create_autoscaling_coordinator()
    except Exception as exc:  # noqa: BLE001 - an optimisation, never a failure
        log.debug("Ray Data's coordinator not started ahead: %s", exc)


def cluster_address(address: str | None) -> str:
    """The cluster a scan's ``ray.init`` joins: ``address``, else ``$RAY_ADDRESS``, else
    ``local`` (Ray starts a new local cluster)."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


#: how :func:`_check_answers`' ConnectionError begins
NOTHING_ANSWERS = "nothing answers at"


def _check_answers(address: str, timeout_s: float = 10.0) -> None:
    """Raise ConnectionError at once where nothing listens at a ``HOST:PORT`` address:
    ``ray.init`` would retry it for many minutes (``local``, ``auto`` and ``ray://`` pass)."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConnectionError(f"{NOTHING_ANSWERS} {address} ({exc.strerror or exc})") from None


def make_ray_engine(cfg: "EngineConfig") -> "RayEngine":
    """The engine ``cfg`` (a config's ``engine`` section, ``kind: ray``) names. A ConfigError
    where ``ray_cpus`` would size a new cluster but ``$RAY_ADDRESS`` names a running one."""
    from shardguard.config import ConfigError

    if cfg.ray_cpus is not None and cluster_address(cfg.ray_address) != "local":
        raise ConfigError("engine.ray_cpus (--ray-cpus) sizes a new local cluster: it does not go with a running one "
                          "(RAY_ADDRESS is set; engine.ray_address: local starts one)")
    return RayEngine(cfg.ray_address, cfg.ray_cpus)


def ray_failure(address: str | None, exc: BaseException) -> str:
    """One line for a cluster that could not be started or joined: ``ray.init``'s error, and
    where the cluster runs with token authentication (Ray >= 2.59 turns it on for clusters
    that ``ray start`` makes) what a driver joining it by address needs."""
    target = cluster_address(address)
    where = ("could not start a local Ray cluster" if target == "local"
             else f"could not join the Ray cluster at {target}")
    msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    hint = ""
    # a refused token reaches the driver as ray.init's ConnectionError, after its retries
    if (target != "local" and isinstance(exc, ConnectionError) and not str(exc).startswith(NOTHING_ANSWERS)
            and os.environ.get("RAY_AUTH_MODE") != "token"):
        hint = ("; if it uses token authentication, set RAY_AUTH_MODE=token (the token from ~/.ray/auth_token "
                "or RAY_AUTH_TOKEN): https://docs.ray.io/en/latest/ray-security/token-auth.html")
    return f"{where}: {msg}{hint}"


class _Worker:
    """A Ray actor that runs stage functions: it imports shardguard once, so the calls after
    the first do not pay for it again."""

    def call(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    def score_write(self, ctx: tuple, o: ShardOutcome, members: tuple, clusters: Any, roots: Any) -> ShardOutcome:
        """Pass 2 of one shard: the pipeline's own ``_pass2_shard``, with the shard's copies and
        the clusters they and its rows belong to."""
        from shardguard.pipeline import ScanPipeline

        config, out_dir, state, columns = ctx
        ScanPipeline(config, out_dir)._pass2_shard(o, state, clusters, roots, columns, members)
        return o


def _for_pass2(state: "ScanState") -> "ScanState":
    """What every pass-2 worker reads of the scan's state: the fitted detectors and the
    sequence numbers. The embedder stays on the driver (pass 2 reads the cached embeddings);
    the near-duplicate index and the roots' features are already stand-ins
    (:meth:`ScanState.release_reduce_state`, before the fit); the roots' ids stay, and the
    copies and clusters go with each shard's job, only that shard's
    (:meth:`RayEngine.score_write`)."""
    from shardguard.scoring import LabelCodes, RootTable
    from shardguard.stages import DuplicateClusters

    return dataclasses.replace(state, embedder=None, clusters=DuplicateClusters(state.clusters.flood_size),
                               root_seqs=[], root_ids=None, root_rows=[], root_shards=[], root_labels=[],
                               cluster_roots=RootTable(LabelCodes()))


#: Valid rows per partition of the near-duplicate reduce's group-bys (a replay partition holds
#: about 400 B of index per row of a component, plus the rows' texts; a bucket partition 16 B
#: per row and band): the partitions are at least the cluster's CPUs.
PARTITION_ROWS = 500_000


class RayEngine:
    """Runs the scan's maps on a Ray cluster.

    Parameters
    ----------
    address : a running cluster's address (``ray.init(address=...)``, e.g. ``auto`` or
        ``HOST:6379``); None: ``$RAY_ADDRESS`` where it is set (Ray's own convention, which
        ``ray job submit`` sets), else a new local cluster, ``local``. Never the cluster that
        ``ray start`` left running on this machine, which ``ray.init()`` without an address
        would join: a scan without an address starts and stops its own.
    num_cpus : CPUs of a new local cluster (default: all); with any other address, Ray's own
        ValueError.

    The maps run on one actor per CPU of the cluster (one shard each at a time), so the
    driver holds at most that many partial states besides the merged one.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        self.ray = _import_ray()
        self._started = False
        if not self.ray.is_initialized():
            address = cluster_address(address)
            _check_answers(address)
            # the workers inherit this process's environment on a local cluster (caches, offline flags)
            kw: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}
            if address == "local":
                kw["num_cpus"] = num_cpus or os.cpu_count() or 1
            else:  # a running cluster's workers do not inherit this environment: pass what shardguard reads
                env = {k: os.environ[k] for k in _WORKER_ENV if k in os.environ}
                kw["runtime_env"] = {"env_vars": env} if env else None
            self.ray.init(**kw)
            self._started = True
        _start_ray_data_coordinator()
        res = self.ray.cluster_resources()
        self.cpus = max(1, int(res.get("CPU", 1)))
        self.gpus = int(res.get("GPU", 0))
        self._workers: list[Any] | None = None
        self._pool_lock = threading.Lock()

    def close(self) -> None:
        """Stop the engine's actors and the local cluster it started (a cluster given by address
        is left running)."""
        if self._workers is not None and self.ray.is_initialized():
            self._kill(self._workers)
        self._workers = None
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False

    def __enter__(self) -> "RayEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- workers ----------------------------------------------------------------------------
    def _pool(self) -> list[Any]:
        """The engine's actors: one per CPU, made on first use (before the embedding map, so
        that they start beside it) and kept for the following maps and the reduce.

        They ask Ray for no CPU (Ray's default actors hold none while they live either): an
        idle pool then leaves the CPUs to Ray Data's read tasks and embedding actors, and the
        engine keeps one job per actor in flight, so the pool never runs more jobs than the
        cluster has CPUs. They are spread over the nodes, which Ray does not do for actors
        that ask for nothing."""
        with self._pool_lock:  # the statistics' thread and the reduce may both ask first
            if self._workers is None:
                cls = self.ray.remote(num_cpus=0, scheduling_strategy="SPREAD")(_Worker)
                self._workers = [cls.remote() for _ in range(self.cpus)]
            return self._workers

    def _kill(self, actors: Sequence[Any]) -> None:
        for a in actors:
            self.ray.kill(a)

    # -- maps -------------------------------------------------------------------------------
    def read_embed(self, pipeline: "ScanPipeline", todo: Sequence[ShardOutcome], embedder: Any,
                   embedder_info: dict[str, Any] | None, work_dir: Path) -> None:
        """Ray Data: :mod:`shardguard.ray_read` reads the shards as Arrow batches and embeds
        them in actors of its own; a shard with a work file of the same key is resumed."""
        from shardguard import ray_read

        resumed = [o for o in todo if reuse_work_file(pipeline.config, o, embedder_info, work_dir)]
        for o in resumed:  # a run killed between a commit and its cleanup leaves the parts
            shutil.rmtree(ray_read.parts_dir(work_dir, o.shard), ignore_errors=True)
        pipeline.progress.advance(sum(o.rows for o in resumed))
        todo = [o for o in todo if not o.resumed]
        # An embedder that learns its width from the first vectors it sees (precomputed) reads
        # the leading shards here, in scan order, as the local engine does, until it has one;
        # the actors then check every other shard against that width, as the local engine's
        # one embedder would (each actor learning its own would fail other shards than it).
        while todo and getattr(embedder, "learns_width", False) and embedder.dim is None:
            read_embed_shard(pipeline.config, todo.pop(0), embedder, embedder_info, work_dir, pipeline.timings,
                             pipeline.progress.advance)
        if not todo:
            return
        self._pool()  # its processes start while Ray Data's do; it commits the shards
        ray_read.read_embed(self, pipeline, todo, embedder, embedder_info, work_dir)

    def map(self, fn: Any, jobs: Sequence[tuple]) -> Iterator[Any]:
        # An argument every job shares (the statistics' spec with its candidates) goes into the
        # object store once, not once per job; Ray hands the workers the object, not the ref.
        counts = Counter(id(a) for job in jobs for a in job)
        shared: dict[int, Any] = {}
        for job in jobs:
            for a in job:
                if counts[id(a)] > 1 and id(a) not in shared and not isinstance(a, (str, int, float, Path)):
                    shared[id(a)] = self.ray.put(a)
        jobs = [tuple(shared.get(id(a), a) for a in job) for job in jobs]
        # ActorPool.map yields in the jobs' order and keeps one job per actor in flight
        pool = self.ray.util.ActorPool(self._pool())
        yield from pool.map(lambda a, job: a.call.remote(fn, *job), jobs)

    # -- the near-duplicate reduce, by component -------------------------------------------------
    #: The statistics map runs in a thread beside the reduce, on the same actors: neither waits
    #: on the other's results (the statistics' jobs take none; each reduce call only earlier
    #: reduce calls'), so an actor's queue never waits on itself, and with fewer shards than
    #: actors the two run at once (ActorPool hands jobs to actors from the end of the list,
    #: the reduce's calls go round from its start).
    parallel_reduces = True
    in_process = False  # maps run in Ray workers: each shard brings a reservoir of its own
    #: The driver fits once the statistics are in, while the workers replay the components:
    #: the reduce's index and texts are on the workers, the driver holds its edges and copies.
    fits_beside_reduce = True

    def near_duplicates(self, pipeline: "ScanPipeline", ok: Sequence[ShardOutcome], state: "ScanState",
                        copies: str) -> None:
        """:mod:`shardguard.dedup.components`' stages as Ray tasks, each group-by or join a
        shuffle through the object store: every map task returns one piece per partition
        (``num_returns``), every reduce task takes its piece of every map. No node gathers the
        signatures or the texts: the driver holds the edges (a spanning forest from each
        reduce: at most 16 B per row in a component and reduce), each word's first row (8 B
        a distinct word, labelled scans) and the copies with their roots, which the clusters
        hold anyway."""
        import time

        import numpy as np
        import pyarrow as pa

        from shardguard.dedup import components as C
        from shardguard.passes.read_embed import work_path

        if state.root_ids is not None:
            raise ValueError("a guard's fit (remember_roots) replays the index in one process: use the local engine")
        if not ok:
            return
        ray = self.ray
        actors = self._pool()
        turn = iter(range(1 << 62))

        def task(fn: Any, *args: Any, n: int = 1) -> Any:
            """``fn(*args)`` on the next actor in turn (``n`` returns). An actor runs its calls
            in the order they were made, and every call here depends only on earlier ones, so
            the queue never waits on itself; the actors' processes are already up."""
            return actors[next(turn) % len(actors)].call.options(num_returns=n).remote(fn, *args)

        clock = [time.perf_counter()]

        def lap(stage: str) -> None:  # report.json's timings_s: index_<stage>
            now = time.perf_counter()
            pipeline.timings[f"index_{stage}"] += now - clock[0]
            clock[0] = now

        params, judged = C.IndexParams.of(state.dup_index), copies == "conflicting"
        paths = [work_path(state.work_dir, o.shard) for o in ok]
        starts = [state.seq_start[o.shard.name] for o in ok]
        rows = sum(o.valid for o in ok)
        # group-by partitions: at least 2 (a task's single return is not a list) and the CPUs
        P = max(2, self.cpus, -(-rows // PARTITION_ROWS))
        keys = [task(C.shard_keys_split, p, s, params, judged, P, n=3 * P) for p, s in zip(paths, starts)]
        # group by bucket -> a large bucket's edges, a small bucket's candidate pairs; the
        # candidates joined with their rows' sketches twice and verified; group by word
        links = [task(C.links_of, P, *(k[j] for k in keys), n=1 + P) for j in range(P)]
        sketches = [task(C.concat, *(k[2 * P + j] for k in keys)) for j in range(P)]
        firsts = [task(C.first_join_of, P, sketches[j], *(lk[1 + j] for lk in links), n=P) for j in range(P)]
        verified = [task(C.verified_of, params, sketches[j], *(f[j] for f in firsts)) for j in range(P)]
        word_refs = [task(C.first_words_of, *(k[P + j] for k in keys)) for j in range(P)] if judged else []
        edges = ray.get([lk[0] for lk in links] + verified)
        lap("bucket_edges")
        src = np.concatenate([t.column("src").to_numpy() for t in edges])
        dst = np.concatenate([t.column("dst").to_numpy() for t in edges])
        del edges, keys, links, sketches, firsts
        seqs, comp = C.components(src, dst)  # the driver: edges only
        lap("components")
        first = np.unique(np.concatenate(ray.get(word_refs))) if word_refs else np.zeros(0, np.int64)
        lap("first_words")
        pipeline.state_sizes.update({"near_duplicate_edges": int(src.size), "near_duplicate_component_rows": int(seqs.size),
                                     "near_duplicate_partitions": int(P)})
        del src, dst
        parts, new_word = C.partition_of(comp, P), np.isin(seqs, first)
        pipeline.state_sizes["near_duplicate_largest_partition_rows"] = int(np.bincount(parts, minlength=P).max())
        sizes = np.unique(comp, return_counts=True)[1]  # none where no row has a near-duplicate
        pipeline.state_sizes["near_duplicate_largest_component_rows"] = int(sizes.max()) if sizes.size else 0
        # group by partition -> the sequential replay of each partition's components
        bounds = np.searchsorted(seqs, np.append(np.asarray(starts, np.int64), np.iinfo(np.int64).max))
        pieces = [task(C.shard_rows_split, p, s, k, *(a[bounds[k]:bounds[k + 1]] for a in (seqs, parts, new_word)), P,
                       n=P) for k, (p, s) in enumerate(zip(paths, starts))]
        results: list[pa.Table] = ray.get([task(C.replay_of, params, judged, *(r[j] for r in pieces))
                                           for j in range(P)])
        lap("replay")
        C.record_results(results, [o.shard.name for o in ok], starts, state.clusters, state.root_features)
        lap("record")
        pipeline.progress.advance(sum(o.rows for o in ok))

    def score_write(self, pipeline: "ScanPipeline", todo: Sequence[ShardOutcome], state: "ScanState",
                    clusters: "ClusterTable", roots: "RootTable",
                    columns: list[str]) -> Iterator[ShardOutcome]:
        if not todo:
            return
        import numpy as np

        ctx = self.ray.put((pipeline.config, pipeline.out_dir, _for_pass2(state), columns))
        by_name = {o.shard.name: o for o in todo}

        def job(actor: Any, o: ShardOutcome) -> Any:
            # the shard's copies, and the clusters they and the shard's own rows (roots) belong
            # to: a worker holds its shard's part of the clusters, not all of them
            members = state.clusters.members(o.shard.name)
            lo = state.seq_start[o.shard.name]
            own = clusters.roots[(clusters.roots >= lo) & (clusters.roots < lo + o.valid)]
            keys = np.union1d(members[1], own)
            return actor.score_write.remote(ctx, o, members, clusters.subset(keys), roots.subset(keys))

        pool = self.ray.util.ActorPool(self._pool())
        for done in pool.map_unordered(job, list(todo)):
            mine = by_name[done.shard.name]
            mine.clean, mine.quarantined, mine.invalid = done.clean, done.quarantined, done.invalid
            mine.allowed, mine.reasons = done.allowed, done.reasons
            pipeline.progress.advance(mine.rows)
            yield mine
