"""False alarms on clean real data (issue 13): the share of rows a default scan quarantines.

    python benchmarks/false_alarms.py [--data ../shared/data] [--embedder none|hashing|static|auto|sentence-transformers]
                                      [--only REGEX] [--set KEY=VALUE ...] [--json FILE]

Scans each clean dataset as it ships (GLUE SST-2 train, the whole ``sst2_glue`` folder with
its unlabelled test file, SMS Spam, AG News train, Alpaca 5k) with the default config and
prints, per dataset, the rows, the share quarantined and the share per reason. Near-duplicate
verdicts do not depend on the embedder, so ``--embedder none`` (the default here) measures
``near_duplicate`` and ``duplicate_flood`` alone in seconds; ``hashing`` adds the outlier and
spectral detectors (the trigger detector needs semantic vectors: `static`, the CPU default, or
``sentence-transformers``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

from shardguard.config import load_config
from shardguard.pipeline import scan

REPO = Path(__file__).resolve().parents[1]

#: name -> (paths under the data folder, config overrides)
DATASETS = {
    "sst2_glue/train": (["sst2_glue/train.parquet"], {"input.id_column": "id", "input.label_column": "label"}),
    "sst2_glue (folder)": (["sst2_glue/train.parquet", "sst2_glue/validation.parquet", "sst2_glue/test.parquet"],
                           {"input.id_column": "id", "input.label_column": "label"}),
    "sms_spam": (["sms_spam/sms_spam.parquet"], {"input.id_column": "id", "input.label_column": "label"}),
    "ag_news/train": (["ag_news_thunlp/train.parquet"], {"input.id_column": "id", "input.label_column": "label"}),
    "alpaca_5k": (["alpaca_subset5k/alpaca_5000.parquet"],
                  {"input.id_column": "id", "input.text_template": "{instruction}\n{input}\n{output}"}),
}


def measure(data: Path, name: str, embedder: str, extra: dict) -> dict:
    """Scan one dataset into a temporary folder; rows, quarantined and per-reason shares."""
    paths, overrides = DATASETS[name]
    cfg = load_config(None, {**overrides, "embed.embedder": embedder, **extra})
    with tempfile.TemporaryDirectory(prefix="sg-false-alarms-") as tmp:
        t = time.perf_counter()
        result = scan([data / p for p in paths], Path(tmp) / "out", cfg)
        wall = time.perf_counter() - t
    tot = result.report["totals"]
    rows = max(tot["rows"], 1)
    return {
        "dataset": name, "rows": tot["rows"], "quarantined": tot["quarantined"],
        "share": tot["quarantined"] / rows,
        "reasons": {k: v / rows for k, v in result.report["reasons"].items()},
        "counts": dict(result.report["reasons"]), "wall_s": round(wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--embedder", default="none",
                    choices=("none", "hashing", "static", "auto", "sentence-transformers"))
    ap.add_argument("--only", default=None, help="regex: only the matching dataset names")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config knob (repeatable)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    import re

    extra = {}
    for item in args.set:
        k, _, v = item.partition("=")
        extra[k] = yaml.safe_load(v)
    results = []
    for name in DATASETS:
        if args.only and not re.search(args.only, name):
            continue
        r = measure(Path(args.data), name, args.embedder, extra)
        results.append(r)
        reasons = ", ".join(f"{k} {v:.2%} ({r['counts'][k]})" for k, v in sorted(r["reasons"].items()))
        print(f"{name:20s} rows {r['rows']:6d}  quarantined {r['share']:6.2%} ({r['quarantined']})  "
              f"[{reasons}]  {r['wall_s']} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
