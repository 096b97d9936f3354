"""Label-flipped typo'd copies planted into clean real data: how many does a default scan find?

    python benchmarks/planted_flips.py [--data ../shared/data] [--seeds 7 8 9] [--copies 60]
                                       [--only REGEX] [--set KEY=VALUE ...] [--json FILE]

For each dataset (GLUE SST-2 train: phrase-level, every sub-phrase of a sentence a row of its
own; SMS Spam; AG News train) and seed: ``--copies`` rows of at least 6 words are drawn, each
gets 1-3 random letter edits (``bench.attacks.typo``) and the other label (AG News: the next
of its four), and the copies are written as a second shard after the data, as an attacker's
file would come. Scanned with the default config and ``embed.embedder: none`` (near-duplicate
verdicts do not depend on the embedder). Prints, per dataset and seed, the copies found
(``near_duplicate``) and the share of the clean rows quarantined, then the totals.

Issue 13 measured 31 of 60 on GLUE SST-2 (seed 7) when a copy was judged only against its
near-duplicate group's first row, often a sub-phrase of the copied sentence.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from shardguard.bench.attacks import typo
from shardguard.config import load_config
from shardguard.pipeline import scan

REPO = Path(__file__).resolve().parents[1]
DATASETS = {
    "sst2_glue/train": "sst2_glue/train.parquet",
    "sms_spam": "sms_spam/sms_spam.parquet",
    "ag_news/train": "ag_news_thunlp/train.parquet",
}


def plant(table: pa.Table, copies: int, seed: int) -> pa.Table:
    """``copies`` typo'd copies of distinct rows of >= 6 words, each under another label."""
    texts, labels = table.column("text").to_pylist(), table.column("label").to_pylist()
    kinds = sorted(set(labels), key=str)
    rng, pick = np.random.default_rng(seed), random.Random(seed)
    long_rows = [i for i, t in enumerate(texts) if len(t.split()) >= 6]
    rows = [{"id": f"flip-{k}", "text": typo(texts[i], rng),
             "label": kinds[(kinds.index(labels[i]) + 1) % len(kinds)]}
            for k, i in enumerate(pick.sample(long_rows, copies))]
    return pa.Table.from_pylist(rows, schema=table.select(["id", "text", "label"]).schema)


def measure(data: Path, name: str, seed: int, copies: int, extra: dict) -> dict:
    src = data / DATASETS[name]
    table = pq.read_table(src, columns=["id", "text", "label"])
    cfg = load_config(None, {"embed.embedder": "none", "input.id_column": "id", "input.label_column": "label",
                             **extra})
    with tempfile.TemporaryDirectory(prefix="sg-flips-") as tmp:
        inp = Path(tmp) / "in"
        inp.mkdir()
        shutil.copy(src, inp / "a.parquet")
        pq.write_table(plant(table, copies, seed), inp / "b.parquet")
        scan([inp], Path(tmp) / "out", cfg)
        q = pq.read_table(Path(tmp) / "out" / "quarantine" / "b.parquet").to_pylist()
        found = sum("near_duplicate" in r["reasons"] for r in q)
        clean_q = pq.read_table(Path(tmp) / "out" / "quarantine" / "a.parquet").num_rows
    return {"dataset": name, "seed": seed, "copies": copies, "found": found, "rows": table.num_rows,
            "clean_quarantined": clean_q, "clean_share": clean_q / table.num_rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    ap.add_argument("--copies", type=int, default=60)
    ap.add_argument("--only", default=None, help="regex: only the matching dataset names")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config knob (repeatable)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    extra = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    results = []
    for name in DATASETS:
        if args.only and not re.search(args.only, name):
            continue
        for seed in args.seeds:
            r = measure(Path(args.data), name, seed, args.copies, extra)
            results.append(r)
            print(f"{name:16s} seed {seed:3d}  found {r['found']:3d} of {r['copies']}  clean rows quarantined "
                  f"{r['clean_share']:.2%} ({r['clean_quarantined']} of {r['rows']})", flush=True)
        mine = [r for r in results if r["dataset"] == name]
        found, total = sum(r["found"] for r in mine), sum(r["copies"] for r in mine)
        print(f"{name:16s} total     found {found} of {total} ({found / total:.3f})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
