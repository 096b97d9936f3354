"""The Guard in data-loading code (issue 13): epoch speed and multi-worker loaders.

    python benchmarks/bench_guard.py [--data ../shared/data] [--filter-rows 2000] [--loader-rows 10000]
                                     [--embedder sentence-transformers|hashing] [--method spawn]

1. ``guard.filter`` rows/s, epoch after epoch, over the first ``--filter-rows`` rows of GLUE
   SST-2 train (the guard fitted on them), with the embedding memo (``guard.cache_rows``)
   and without it (``guard.cache_rows: 0``, what every epoch cost before).
2. A torch DataLoader with 2 workers (``--method``) over ``--loader-rows`` rows given as a
   plain list: rows out, rows out more than once, and rows missing against what one process
   keeps. Splitting rows is embedder-independent, so the loader uses the hashing embedder
   unless ``--loader-embedder`` says otherwise.
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--filter-rows", type=int, default=2000)
    ap.add_argument("--loader-rows", type=int, default=10000)
    ap.add_argument("--embedder", default="sentence-transformers")
    ap.add_argument("--loader-embedder", default="hashing")
    ap.add_argument("--method", default="spawn")
    ap.add_argument("--skip", choices=("filter", "loader"), action="append", default=[])
    args = ap.parse_args(argv)
    data = Path(args.data)
    if "filter" not in args.skip:
        for cache_rows in (0, 100_000):
            filter_epochs(data, args.filter_rows, args.embedder, cache_rows)
    if "loader" not in args.skip:
        loader(data, args.loader_rows, args.loader_embedder, args.method)
    return 0


if __name__ == "__main__":
    sys.exit(main())
