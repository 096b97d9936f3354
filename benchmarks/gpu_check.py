"""The GPU path, measured in one short run: for a session that is lent a GPU machine.

    python benchmarks/gpu_check.py --data DIR [--n 20000] [--rows 50000] [--out DIR] [--no-ray]

Run by hand, not a test; on a CPU machine it runs too (``--device cpu``), which is how it is
checked before a GPU session spends device time on it. ``--data`` holds
``sst2_glue/train.parquet`` (GLUE SST-2, sentences) and optionally
``wikipedia_2021/*.parquet`` (paragraphs); on the device machine copy them into a folder the
run carries (``../shared`` does not travel). Every step is timed in this one process, so the
ratios compare like with like; results go to ``--out/gpu_check.json`` (``$OUT`` on the device
machine) after every step, so a run cut short keeps what it measured.

1. The device: torch's CUDA build, the GPU's name and memory.
2. Bare ``SentenceTransformer.encode`` (all-MiniLM-L6-v2, fp16 on CUDA, batches of 256) on
   ``--n`` SST-2 sentences, against shardguard's own sentence-transformers embedder on the same
   texts (``embed_texts``; the embedder the scan runs): rows/s of each and shardguard's overhead.
   The same for ``--n`` Wikipedia paragraphs where given.
3. ``shardguard scan`` with ``embedder: auto`` on ``--rows`` SST-2 rows (labelled, four shards):
   which embedder ``auto`` chose and why, the scan's rows/s and the embed stage's.
4. The Ray engine on the same shards (one GPU actor per GPU): its wall time and whether its
   quarantine lists equal the local engine's (``--no-ray`` skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _texts(data: Path, n: int) -> tuple[list[str], list[str]]:
    sst2 = pq.read_table(data / "sst2_glue" / "train.parquet", columns=["text"]).column("text").to_pylist()[:n]
    wiki: list[str] = []
    for p in sorted((data / "wikipedia_2021").glob("*.parquet"))[:1]:
        wiki = pq.read_table(p, columns=["text"]).column("text").to_pylist()[:n]
    return sst2, wiki


def _rate(fn, texts: list[str]) -> tuple[float, float]:
    fn(texts[:512])  # warm-up: CUDA context, kernels, tokenizer
    t = time.perf_counter()
    fn(texts)
    s = time.perf_counter() - t
    return round(len(texts) / s), round(s, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--n", type=int, default=20_000, help="texts for the embedding comparison")
    ap.add_argument("--rows", type=int, default=50_000, help="SST-2 rows for the scans")
    ap.add_argument("--device", default="auto", help="auto (cuda when there is one), cuda or cpu")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench-out")))
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.platform(),
                    "cpus": os.cpu_count()}

    def save() -> None:
        (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1), flush=True)

    import torch

    cuda = torch.cuda.is_available()
    device = ("cuda" if cuda else "cpu") if args.device == "auto" else args.device
    result["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda, "available": cuda,
                       "gpu": torch.cuda.get_device_name(0) if cuda else None,
                       "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
                       "device": device}
    save()

    # 2. bare model against shardguard's embedder, same texts, same process
    from sentence_transformers import SentenceTransformer

    from shardguard.embed.sentence_transformer import SentenceTransformerEmbedder, default_model_path

    sst2, wiki = _texts(args.data, args.n)
    bare = SentenceTransformer(str(default_model_path()), device=device)
    if device.startswith("cuda"):
        bare = bare.half()
    ours = SentenceTransformerEmbedder(device=device)
    result["embed"] = {}
    for name, texts in (("sst2_sentences", sst2), ("wikipedia_paragraphs", wiki)):
        if not texts:
            continue
        b_rate, b_s = _rate(lambda t: bare.encode(t, batch_size=256, convert_to_numpy=True), texts)
        o_rate, o_s = _rate(ours.embed_texts, texts)
        result["embed"][name] = {"texts": len(texts), "bare_rows_per_s": b_rate, "shardguard_rows_per_s": o_rate,
                                 "shardguard_overhead": round(o_s / b_s - 1, 3)}
        save()
    del bare, ours

    # 3. the scan with embedder auto; 4. the Ray engine on the same shards
    from shardguard.config import load_config
    from shardguard.pipeline import scan

    work = args.out / "gpu_check_work"
    shutil.rmtree(work, ignore_errors=True)
    shards = work / "in"
    shards.mkdir(parents=True)
    t = pq.read_table(args.data / "sst2_glue" / "train.parquet", columns=["id", "text", "label"]).slice(0, args.rows)
    t = t.set_column(0, "id", pa.array([str(v) for v in t.column("id").to_pylist()]))
    for k in range(4):
        pq.write_table(t.take(pa.array(np.arange(k, t.num_rows, 4))), shards / f"part-{k}.parquet")
    cfg = load_config(None, {"input.id_column": "id", "input.label_column": "label", "embed.device": args.device})
    t0 = time.perf_counter()
    scan([shards], work / "local", cfg)
    wall = time.perf_counter() - t0
    report = json.loads((work / "local" / "report.json").read_text())
    result["scan"] = {"rows": t.num_rows, "wall_s": round(wall, 1), "rows_per_s": round(t.num_rows / wall),
                      "embedder": report.get("embedder"), "timings_s": report.get("timings_s"),
                      "quarantined": report["totals"].get("quarantined"), "reasons": report.get("reasons")}
    save()
    if not args.no_ray:
        try:
            from shardguard.ray_engine import RayEngine
        except ImportError as exc:
            result["ray"] = {"skipped": str(exc)}
        else:
            t0 = time.perf_counter()
            with RayEngine() as engine:
                gpus = engine.gpus
                scan([shards], work / "ray", cfg, engine=engine)
            wall = time.perf_counter() - t0
            same = all(pq.read_table(p).equals(pq.read_table(work / "ray" / p.relative_to(work / "local")))
                       for p in sorted((work / "local" / "quarantine").glob("*.parquet")))
            result["ray"] = {"gpus": gpus, "wall_s": round(wall, 1), "lists_equal_local": same}
        save()
    shutil.rmtree(work, ignore_errors=True)  # keeps $OUT to the one JSON file


if __name__ == "__main__":
    main()
