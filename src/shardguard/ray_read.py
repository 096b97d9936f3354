"""Pass 1a on Ray Data, the Ray engine's read-and-embed map: the shards read as Arrow
batches, embedded in actors, written per shard.

    ShardDatasource            one read task per shard: ShardReader + RowNormalizer; each input
                               batch becomes one row of the dataset (its valid and its
                               invalid rows, each an Arrow IPC stream)
    .map_batches(EmbedParts)   actors (one GPU each where the cluster has GPUs, one CPU
                               otherwise) embed each input batch's valid rows and write the
                               batch as a part of its shard's work file
                               (OUT/.work/<shard>.parts/<first row>.arrow), returning one
                               summary row per part
    driver                     streams the summaries (progress: rows, never texts or vectors)
    commit_parts               per shard, on the engine's actors: the parts in row order into
                               the work file, the rows and batches the local engine's map writes

One dataset row per input batch, because Ray Data makes its own blocks and batches of rows
(joining a read task's output up to its block size target, cutting batches of ``batch_size``
rows across blocks, which GPU actors must be given): a batch carried whole is embedded in one
call, as the local engine embeds it (a sentence-transformers vector depends, in its last bits,
on the rows padded beside it), and becomes one batch of the work file, which is one call of
the near-duplicate index. The read, the validation and the embedding are the local engine's
own (``ShardReader``, ``RowNormalizer``, the embedder's ``embed_batch``,
``WorkFileWriter.write``), so the work files, and with them the lists, are the same.

A shard's own failure never fails the dataset, whose one failing task would stop every shard
(Ray Data's ``max_errored_blocks`` is 0): the read task ends that shard's rows and records the
reason in ``<shard>.parts/read.json``; an actor records an embedding failure in its summary
row. The shard's commit then fails it alone, with the one-line status naming the file (and
row or column) that the local engine gives, and removes its parts. Should Ray Data itself stop
(a node lost past its retries), the shards it had finished are committed and the others fail
with its error, not the run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shardguard.config import Config, InputConfig
from shardguard.io import workfile
from shardguard.io.readers import Shard, ShardError, ShardReader
from shardguard.io.writers import atomic_write_json
from shardguard.passes.read_embed import ShardOutcome, no_rows, one_line, pass1_key, timed, work_path
from shardguard.validate import NormalizedBatch, RowNormalizer

if TYPE_CHECKING:
    from shardguard.pipeline import ScanPipeline
    from shardguard.ray_engine import RayEngine

log = logging.getLogger(__name__)

#: the read task's closing record, beside the parts
READ_DONE = "read.json"
#: one row per part written: what the driver and the commits learn of a batch
SUMMARY_SCHEMA = pa.schema([("shard", pa.int32()), ("first_row", pa.int64()), ("rows", pa.int64()), ("invalid", pa.int64()),
                            ("dim", pa.int64()), ("embed_s", pa.float64()), ("error", pa.string())])


def parts_dir(work_dir: Path, shard: Shard) -> Path:
    """Where a shard's parts wait for their commit: ``OUT/.work/<shard>.parts``."""
    return work_path(work_dir, shard).with_suffix(".parts")


#: the dataset's rows: one per input batch, its valid and its invalid rows each as an Arrow
#: IPC stream (as the normaliser gave them, the two arguments of ``WorkFileWriter.write``)
BATCH_SCHEMA = pa.schema([("shard", pa.int32()), ("batch", pa.int64()), ("rows", pa.int64()),
                          ("valid", pa.large_binary()), ("invalid", pa.large_binary())])


def _ipc(data: pa.RecordBatch | pa.Table) -> pa.Array:
    """``data`` as an Arrow IPC stream in a one-element ``large_binary`` array (no copy)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as writer:
        writer.write(data)
    buf = sink.getvalue()
    return pa.Array.from_buffers(pa.large_binary(), 1, [None, pa.py_buffer(np.array([0, buf.size], np.int64)), buf])


def batch_row(nb: NormalizedBatch, index: int, start: int) -> pa.Table:
    """One input batch as one dataset row: the shard's position in the scan, the batch's first
    row, its row count, its valid and its invalid rows."""
    return pa.Table.from_arrays([pa.array([index], pa.int32()), pa.array([start], pa.int64()),
                                 pa.array([nb.valid.num_rows + nb.invalid.num_rows], pa.int64()),
                                 _ipc(nb.valid), _ipc(nb.invalid)], schema=BATCH_SCHEMA)


def _id_of_row(shard: Shard, cfg: InputConfig, row: int) -> str:
    """The id of ``row``, read again from the shard: for the message of a repeated id, once."""
    normalizer = RowNormalizer(shard, cfg)
    for batch in ShardReader(shard, cfg.batch_size, normalizer.source_columns()):
        nb = normalizer(batch)
        for t in (nb.valid, nb.invalid):
            hit = np.flatnonzero(np.asarray(t.column("row")) == row)
            if hit.size:
                return t.column("id")[int(hit[0])].as_py()
    raise KeyError(row)


def read_shard(config: Config, o: ShardOutcome, index: int, parts: str) -> Iterator[pa.Table]:
    """A read task: the shard's input batches, a dataset row each, then its closing record
    (rows, invalid rows, status, seconds reading and validating) in ``parts/read.json``.
    Never raises for the shard's own failure: its rows end there and the record says why."""
    cfg = config.input
    timings: Counter = Counter()
    rows = invalid = 0
    status = "ok"
    try:
        normalizer = RowNormalizer(o.shard, cfg)
        reader = ShardReader(o.shard, cfg.batch_size, normalizer.source_columns())
        for batch in timed(timings, "read", reader):
            t = time.perf_counter()
            nb = normalizer(batch)
            timings["validate"] += time.perf_counter() - t
            if batch.num_rows:
                yield batch_row(nb, index, rows)
            rows += batch.num_rows
            invalid += nb.invalid.num_rows
        if cfg.id_column:
            normalizer.check_unique_ids(lambda r: _id_of_row(o.shard, cfg, r))
    except ShardError as exc:
        status = one_line(str(exc))
        log.error("%s", exc)
    except Exception as exc:  # a shard's failure must not stop the others
        status = one_line(f"{o.shard.path}: {type(exc).__name__}: {exc}")
        log.exception("%s failed", o.shard.path)
    atomic_write_json(Path(parts) / READ_DONE, {"rows": rows, "invalid": invalid, "status": status,
                                                "timings": dict(timings)})


def shard_datasource(config: Config, todo: Sequence[ShardOutcome], parts: Sequence[Path]) -> Any:
    """The shards as a Ray Data source: one read task per shard (a shard's batches stay in
    order within its task; the parts record where each begins)."""
    import functools

    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class ShardDatasource(Datasource):
        def get_name(self) -> str:
            return "ShardguardShards"

        def estimate_inmemory_data_size(self) -> int | None:
            return sum(o.size for o in todo) or None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[Any]:
            return [ReadTask(functools.partial(read_shard, config, o, i, str(parts[i])),
                             BlockMetadata(num_rows=None, size_bytes=o.size or None, exec_stats=None,
                                           input_files=(str(o.shard.path),)))
                    for i, o in enumerate(todo)]

    return ShardDatasource()


class EmbedParts:
    """The Ray Data actor of the map: holds an embedder (built once: loading a model is the
    slow part) and turns each input batch into a part file of its shard and a summary row."""

    def __init__(self, config: Config, parts: Sequence[str], inputs: Sequence[str], width: int | None = None) -> None:
        from shardguard.embed import make_embedder

        self.config = config
        self.parts = [Path(p) for p in parts]
        self.inputs = list(inputs)  # each shard's path, for the messages
        self.embedder = make_embedder(config.embed, config.random_state)
        if width is not None and getattr(self.embedder, "learns_width", False):
            # the width the driver learned from the scan's first vectors (RayEngine.read_embed)
            self.embedder = type(self.embedder)(dim=width, column=self.embedder.column)
        self.dtype = workfile.cache_dtype(config.embed.embedder)

    def __call__(self, block: pa.Table) -> pa.Table:
        """``block``: dataset rows (:data:`BATCH_SCHEMA`), each a whole input batch; returns
        their summary rows (:data:`SUMMARY_SCHEMA`)."""
        valid, invalid = block.column("valid"), block.column("invalid")
        return pa.Table.from_pylist(
            [self._part(index, first, pa.ipc.open_stream(valid[k].as_buffer()).read_next_batch(),
                        pa.ipc.open_stream(invalid[k].as_buffer()).read_all())
             for k, (index, first) in enumerate(zip(block.column("shard").to_pylist(), block.column("batch").to_pylist()))],
            schema=SUMMARY_SCHEMA)

    def _part(self, index: int, first: int, valid: pa.RecordBatch, invalid: pa.Table) -> dict[str, Any]:
        summary: dict[str, Any] = {"shard": index, "first_row": first, "rows": valid.num_rows + invalid.num_rows,
                                   "invalid": invalid.num_rows,
                                   "dim": None, "embed_s": 0.0, "error": None}
        folder = self.parts[index]
        try:
            emb, dim = None, None
            if self.embedder is not None:
                if valid.num_rows:
                    t = time.perf_counter()
                    try:
                        emb = self.embedder.embed_batch(valid)
                    except ValueError as exc:  # the local engine's message for the same batch
                        raise ShardError(f"{self.inputs[index]}: {exc}") from exc
                    summary["embed_s"] = time.perf_counter() - t
                    dim = emb.shape[1]
                else:
                    dim = getattr(self.embedder, "dim", None)
            writer = workfile.WorkFileWriter(folder / f"{first:012d}.arrow", dim, self.dtype,
                                             response=bool(self.config.input.response_column))
            try:
                writer.write(valid, emb if emb is not None else no_rows(dim), invalid)
                writer.commit(None)
            except BaseException:
                writer.abort()
                raise
            summary["dim"] = dim
        except ShardError as exc:
            summary["error"] = one_line(str(exc))
        except Exception as exc:  # noqa: BLE001 - the shard fails, not the dataset
            summary["error"] = one_line(f"{self.inputs[index]}: {type(exc).__name__}: {exc}")
        return summary


def _part_batches(folder: Path, firsts: Sequence[int]) -> Iterator[pa.RecordBatch]:
    for first in firsts:
        with workfile.WorkFileReader(folder / f"{first:012d}.arrow") as reader:
            yield from reader


def commit_parts(config: Config, o: ShardOutcome, key: str, work_dir: Path, parts: pa.Table,
                 stopped: str | None, dim: int | None = None) -> tuple[ShardOutcome, Counter]:
    """One shard's parts, in row order, into its work file (sidecar under ``key``); or the shard
    fails with its read's, its embedding's or Ray Data's reason. Removes the parts either way.
    ``parts`` are the shard's summary rows; ``stopped`` is Ray Data's error when it stopped;
    ``dim`` the embedder's width, for a shard without rows (a part's width wins)."""
    timings: Counter = Counter()
    folder = parts_dir(work_dir, o.shard)
    path = work_path(work_dir, o.shard)
    writer: workfile.WorkFileWriter | None = None
    try:
        done_path = folder / READ_DONE
        if not done_path.exists():
            raise ShardError(f"{o.shard.path}: not read: Ray Data stopped: {stopped or 'the read task did not finish'}")
        done = json.loads(done_path.read_text())
        timings.update(done["timings"])
        o.rows, o.invalid = int(done["rows"]), int(done["invalid"])
        parts = parts.sort_by("first_row")
        # a batch Ray Data ran twice (a task retried after its node was lost) wrote the same
        # part twice under one name: one summary row of it counts
        firsts = parts.column("first_row").to_numpy()
        parts = parts.filter(pa.array(np.r_[True, np.diff(firsts) != 0] if firsts.size else np.zeros(0, bool)))
        errors = parts.column("error").to_pylist()
        bad = next((k for k, e in enumerate(errors) if e), None)
        if bad is not None:
            # as the local engine fails a shard: at its first failing batch, which comes before
            # a failure of the read (every part is a batch read before it), with the rows read
            # before that batch
            o.rows = int(parts.column("first_row")[bad].as_py())
            o.invalid = int(pc.sum(parts.column("invalid").slice(0, bad)).as_py() or 0)
            raise ShardError(errors[bad])
        if done["status"] != "ok":
            raise ShardError(done["status"])
        firsts, counts = parts.column("first_row").to_numpy(), parts.column("rows").to_numpy()
        ends = np.cumsum(counts)
        if not (np.array_equal(firsts, ends - counts) and (ends[-1] if ends.size else 0) == o.rows):
            raise ShardError(f"{o.shard.path}: {int(counts.sum())} of {o.rows} rows embedded: "
                             f"Ray Data stopped: {stopped or 'parts are missing'}")
        t = time.perf_counter()
        dims = [d for d in parts.column("dim").to_pylist() if d is not None]
        writer = workfile.WorkFileWriter(path, dims[0] if dims else dim, workfile.cache_dtype(config.embed.embedder),
                                         response=bool(config.input.response_column))
        try:
            for batch in _part_batches(folder, firsts.tolist()):
                writer.append(batch)
        except ValueError as exc:  # parts of two embedding dimensions
            raise ShardError(f"{o.shard.path}: {exc}") from exc
        writer.commit({"key": key, "shard": o.shard.name, "sha256": o.sha256})
        timings["write_work"] += time.perf_counter() - t
    except ShardError as exc:
        o.status = one_line(str(exc))
        log.error("%s", o.status)
    except Exception as exc:  # a shard's failure must not stop the others
        o.status = one_line(f"{o.shard.path}: {type(exc).__name__}: {exc}")
        log.exception("%s failed", o.shard.path)
    finally:
        if o.status != "ok":
            if writer is not None:
                writer.abort()
            workfile.remove(path)
        shutil.rmtree(folder, ignore_errors=True)
    return o, timings


def read_embed(engine: "RayEngine", pipeline: "ScanPipeline", todo: Sequence[ShardOutcome], embedder: Any,
               embedder_info: dict[str, Any] | None, work_dir: Path) -> None:
    """The map for every shard in ``todo`` (none resumable): the dataset, then the commits on
    the engine's actors. Updates the outcomes as the local engine's map does. ``embedder`` is
    the driver's (None without one): the actors build the kind it is, so that ``auto`` means
    one embedder for the whole scan, the one the run's key names, even where the driver's
    node has no GPU and the workers' do (``--embedder sentence-transformers`` uses them)."""
    import ray

    kind = "none" if embedder is None else getattr(embedder, "selection", {}).get("embedder", pipeline.config.embed.embedder)
    dim = getattr(embedder, "dim", None) if embedder is not None else None  # for shards without rows
    cfg = dataclasses.replace(pipeline.config, embed=dataclasses.replace(pipeline.config.embed, embedder=kind))
    parts = [parts_dir(work_dir, o.shard) for o in todo]
    for folder in parts:  # a killed run's parts are not this run's
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    summaries: list[pa.Table] = []
    stopped = None
    context = ray.data.DataContext.get_current()  # the caller's, restored below
    saved = context.enable_progress_bars, context.print_on_execution_start
    # Ray Data logs each execution's start and end; its errors reach this function as exceptions
    ray_log = logging.getLogger("ray.data")
    level = ray_log.level
    try:
        context.enable_progress_bars = False  # the CLI shows its own
        context.print_on_execution_start = False
        ray_log.setLevel(max(level, logging.ERROR))
        # one read task per shard, its output not split further to reach a parallelism
        ds = ray.data.read_datasource(shard_datasource(cfg, todo, parts), override_num_blocks=len(todo))
        # On CPUs Ray Data fuses the read into this map (same resources): a shard is read,
        # validated and embedded in one actor, and only part files and summary rows leave it.
        # (A repartition between them, to embed one shard's batches in two actors, was slower
        # on 2 CPUs: 10.4 s against 9.1 s for 100k rows; a pool of two actors from the start
        # left the read no CPU.) With GPUs it does not: read tasks on the CPUs feed one actor
        # per GPU, an input batch per call (Ray Data wants a batch size for GPU actors).
        if engine.gpus:
            actors: dict[str, Any] = {"num_gpus": 1, "batch_size": 1,
                                      "compute": ray.data.ActorPoolStrategy(size=engine.gpus)}
        else:
            actors = {"num_cpus": 1, "batch_size": None,
                      "compute": ray.data.ActorPoolStrategy(min_size=1, max_size=engine.cpus)}
        ds = ds.map_batches(EmbedParts, fn_constructor_args=(cfg, [str(p) for p in parts],
                                                             [str(o.shard.path) for o in todo], dim),
                            batch_format="pyarrow", **actors)
        try:
            for summary in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                summaries.append(summary)
                pipeline.progress.advance(int(pc.sum(summary.column("rows")).as_py() or 0))
                pipeline.timings["embed"] += float(pc.sum(summary.column("embed_s")).as_py() or 0.0)
        except Exception as exc:  # noqa: BLE001 - the finished shards are kept, the others fail
            stopped = one_line(f"{type(exc).__name__}: {exc}")[:500]
            log.error("Ray Data stopped: %s", stopped)
    finally:
        ray_log.setLevel(level)
        context.enable_progress_bars, context.print_on_execution_start = saved
    table = pa.concat_tables(summaries) if summaries else SUMMARY_SCHEMA.empty_table()
    index = table.column("shard").to_numpy()
    jobs = [(cfg, o, pass1_key(cfg, o.sha256, embedder_info), work_dir, table.filter(pa.array(index == i)), stopped,
             dim) for i, o in enumerate(todo)]
    for o, (done, timings) in zip(todo, engine.map(commit_parts, jobs)):
        o.rows, o.invalid, o.status = done.rows, done.invalid, done.status
        pipeline.timings.update(timings)
