"""How much does the poisoning benchmark's downstream accuracy move when ONE natural row is dropped?

    python benchmarks/downstream_noise.py [--scenario sst2/addsent@0.05] [--draws 100] [--drop 1]
                                          [--text "one of the best movies of the year ."]

Issue 4's downstream check wants the model trained on the cleaned set within 0.5 points of dev
accuracy of the model trained on the truly clean set (the poisoned set minus exactly the
planted rows). A filter that also removes natural rows moves that accuracy even when it
removes no poison: this measures by how much. The truly clean set of the scenario is trained
on ``--draws`` times with ``--drop`` random natural rows left out (seeded), with the
benchmark's own model (``poison_bench.downstream_model``: deterministic, so the spread comes
from the rows alone); with ``--text``, also with that row left out. Prints the accuracy of
the truly clean model and the distribution of |change| in points.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from poison_bench import downstream_model
from shardguard.bench import suite

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--scenario", default="sst2/addsent@0.05")
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--drop", type=int, default=1, help="natural rows left out per draw")
    ap.add_argument("--text", action="append", default=[], help="also leave out the row with this text")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sc, data = next((s, d) for s, d in suite.all_scenarios(args.data) if s.name == args.scenario)
    texts, labels = np.asarray(sc.texts, dtype=object), np.asarray(sc.labels, dtype=object)
    dev_y = np.asarray(data.dev_labels, dtype=object)
    clean = ~sc.is_poison

    def accuracy(keep: np.ndarray) -> tuple[float, np.ndarray]:
        pred = downstream_model().fit(texts[keep].tolist(), labels[keep]).predict(data.dev_texts)
        return 100 * float((pred == dev_y).mean()), pred

    a0, p0 = accuracy(clean)
    print(f"{args.scenario}: truly clean {clean.sum()} rows, dev accuracy {a0:.2f} ({len(dev_y)} dev rows: "
          f"one is {100 / len(dev_y):.2f} points)")
    for t in args.text:
        keep = clean & (texts != t)
        a, p = accuracy(keep)
        print(f"  without {t!r} ({clean.sum() - keep.sum()} row): {a:.2f} ({a - a0:+.2f} points, "
              f"{int((p != p0).sum())} dev predictions changed)")
    rng = np.random.default_rng(args.seed)
    natural = np.flatnonzero(clean)
    delta = []
    for _ in range(args.draws):
        keep = clean.copy()
        keep[rng.choice(natural, args.drop, replace=False)] = False
        delta.append(accuracy(keep)[0] - a0)
    d = np.abs(np.array(delta))
    print(f"  {args.drop} random natural row(s) left out, {args.draws} draws: |change| mean {d.mean():.2f}, "
          f"median {np.median(d):.2f}, 90th percentile {np.percentile(d, 90):.2f}, max {d.max():.2f} points; "
          f"share >= 0.5 points {np.mean(d >= 0.5 - 1e-9):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
