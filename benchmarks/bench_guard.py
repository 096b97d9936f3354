"""The Guard in data-loading code (issues 13, 14): epoch speed, multi-worker loaders, long streams.

    python benchmarks/bench_guard.py [--data ../shared/data] [--filter-rows 2000] [--loader-rows 10000]
                                     [--embedder sentence-transformers|hashing] [--method spawn]
                                     [--stream-rows 200000] [--stream-embedder none]

1. ``guard.filter`` rows/s, epoch after epoch, over the first ``--filter-rows`` rows of GLUE
   SST-2 train (the guard fitted on them), with the embedding memo (``guard.cache_rows``)
   and without it (``guard.cache_rows: 0``, what every epoch cost before).
2. A torch DataLoader with 2 workers (``--method``) over ``--loader-rows`` rows given as a
   plain list: rows out, rows out more than once, and rows missing against what one process
   keeps. Splitting rows is embedder-independent, so the loader uses the hashing embedder
   unless ``--loader-embedder`` says otherwise.
3. A long stream of new rows: a guard fitted on 5,000 rows of TweetEval filters the next
   ``--stream-rows`` rows of TweetEval then GoEmotions (all new to its index, so its index,
   root table and clusters grow with the stream) in batches of 1,024; rows/s in each window of
   50,000 rows. The guard's work per new row is amortised O(1), so the rate must not fall with
   stream length (before issue 14 it copied its whole root table every 4,096 new rows). The
   default ``--stream-embedder none`` measures the guard's own bookkeeping (index, roots,
   clusters, verdicts), not the model.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
OPTS = {"input.id_column": "id", "input.label_column": "label"}


def _sst2(data: Path, n: int) -> pa.Table:
    t = pq.read_table(data / "sst2_glue" / "train.parquet").slice(0, n)
    return t.set_column(2, "label", t.column("label").cast(pa.string()))


def filter_epochs(data: Path, n: int, embedder: str, cache_rows: int, epochs: int = 3) -> list[float]:
    from shardguard.config import load_config
    from shardguard.guard import Guard

    table = _sst2(data, n)
    work = Path(f"/tmp/bench-guard-{n}.parquet")
    pq.write_table(table, work)
    guard = Guard.fit(work, load_config(None, {**OPTS, "embed.embedder": embedder, "guard.cache_rows": cache_rows}))
    batches = table.to_batches(max_chunksize=256)
    rates = []
    for _ in range(epochs):
        t = time.perf_counter()
        kept = sum(guard.filter(b).num_rows for b in batches)
        rates.append(n / (time.perf_counter() - t))
        print(f"  filter epoch {len(rates)}: {rates[-1]:,.0f} rows/s ({kept} of {n} kept), cache_rows={cache_rows}",
              flush=True)
    return rates


def loader(data: Path, n: int, embedder: str, method: str) -> dict[str, int]:
    import torch

    from shardguard.config import load_config
    from shardguard.guard import Guard

    table = _sst2(data, n)
    work = Path(f"/tmp/bench-guard-{n}.parquet")
    pq.write_table(table, work)
    guard = Guard.fit(work, load_config(None, {**OPTS, "embed.embedder": embedder}))
    rows = table.to_pylist()
    expected = {r["id"] for b in table.to_batches(max_chunksize=512) for r in guard.filter(b).to_pylist()}
    dl = torch.utils.data.DataLoader(guard.wrap(rows), batch_size=None, num_workers=2,
                                     multiprocessing_context=mp.get_context(method))
    got = Counter(s["id"] for s in dl)
    out = {"rows_in": n, "expected_out": len(expected), "rows_out": sum(got.values()),
           "duplicates": sum(c - 1 for c in got.values() if c > 1), "missing": len(expected - set(got))}
    print(f"  DataLoader, 2 {method} workers, {n} rows as a list: {out}", flush=True)
    return out


def _stream_rows(data: Path) -> pa.Table:
    """TweetEval, then GoEmotions: id, text, label (strings)."""
    tweets = pq.read_table(data / "tweeteval" / "all.parquet", columns=["id", "text", "label_name"])
    emotions = pq.read_table(data / "goemotions" / "all.parquet", columns=["id", "text", "label"])
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("label", pa.string())])
    parts = [pa.table([t.column(0).cast(pa.string()), t.column(1), t.column(2).cast(pa.string())], schema=schema)
             for t in (tweets, emotions)]
    return pa.concat_tables(parts).combine_chunks()


def _timed_parts(guard) -> dict[str, float]:
    """Seconds spent, from now on, in the near-duplicate index (``index_texts``) and in the
    guard's own tables (roots and clusters: appends, growth, lookups), by wrapping them."""
    import shardguard.guard as guard_module

    spent = {"index": 0.0, "guard tables": 0.0}

    def timed(fn, part):
        def run(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - t
        return run

    guard_module.index_texts = timed(guard_module.index_texts, "index")
    tables = [(getattr(guard, "_roots", None), ("append", "positions", "ids", "lookup")),
              (getattr(guard, "_clusters", None), ("grow", "lookup"))]
    for obj, names in tables:
        for name in names:
            if callable(getattr(obj, name, None)):
                setattr(obj, name, timed(getattr(obj, name), "guard tables"))
    return spent


def long_stream(data: Path, n: int, embedder: str, fit_rows: int = 5000, window: int = 50_000,
                batch: int = 1024) -> list[float]:
    """rows/s of ``guard.filter`` in each window of ``window`` streamed rows (see 3. above)."""
    from shardguard.config import load_config
    from shardguard.guard import Guard

    table = _stream_rows(data)
    if fit_rows + n > table.num_rows:
        raise SystemExit(f"--stream-rows at most {table.num_rows - fit_rows}")
    work = Path(f"/tmp/bench-guard-stream-fit-{fit_rows}.parquet")
    pq.write_table(table.slice(0, fit_rows), work)
    guard = Guard.fit(work, load_config(None, {**OPTS, "embed.embedder": embedder}))
    stream = table.slice(fit_rows, n)
    spent = _timed_parts(guard)
    rates: list[float] = []
    done = kept = start = 0
    t0 = t = time.perf_counter()
    for b in stream.to_batches(max_chunksize=batch):
        kept += guard.filter(b).num_rows
        done += b.num_rows
        if done - start >= window or done == n:
            now = time.perf_counter()
            rates.append((done - start) / (now - t))
            clusters = getattr(guard, "_clusters", None)  # the guard's growing clusters (issue 14 on)
            grown = f", {len(clusters):,} clusters" if hasattr(clusters, "__len__") else ""
            parts = "; ".join(f"{k} {1e6 * v / (done - start):.1f} us/row" for k, v in spent.items())
            print(f"  stream rows {start:>7,}-{done:>7,}: {rates[-1]:>8,.0f} rows/s (cumulative "
                  f"{done / (now - t0):,.0f} rows/s; {kept:,} kept; index {guard.dup_index.n_roots:,} roots{grown}; "
                  f"{parts})", flush=True)
            t, start = now, done
            spent.update({k: 0.0 for k in spent})
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--filter-rows", type=int, default=2000)
    ap.add_argument("--loader-rows", type=int, default=10000)
    ap.add_argument("--embedder", default="sentence-transformers")
    ap.add_argument("--loader-embedder", default="hashing")
    ap.add_argument("--method", default="spawn")
    ap.add_argument("--stream-rows", type=int, default=200_000)
    ap.add_argument("--stream-embedder", default="none")
    ap.add_argument("--skip", choices=("filter", "loader", "stream"), action="append", default=[])
    args = ap.parse_args(argv)
    data = Path(args.data)
    if "filter" not in args.skip:
        for cache_rows in (0, 100_000):
            filter_epochs(data, args.filter_rows, args.embedder, cache_rows)
    if "loader" not in args.skip:
        loader(data, args.loader_rows, args.loader_embedder, args.method)
    if "stream" not in args.skip:
        long_stream(data, args.stream_rows, args.stream_embedder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
