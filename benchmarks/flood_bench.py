"""Floods in unlabelled data (issue 11): what the duplicate_flood rule flags on clean corpora,
and whether it still finds a flood of edited copies planted into them.

    python benchmarks/flood_bench.py --out bench-out/floods [--data ../shared/data] [--embedder static|none]

Three parts, all through ``shardguard.pipeline.scan`` with the default config, unlabelled (no
label column):

1. **Clean corpora**: Wikipedia 2021 (241k paragraphs), Alpaca rendered
   "{instruction}\\n{input}\\n{output}", TweetEval (every task's texts), GoEmotions and, where
   ``shardguard.bench.scale`` exists, its FLAN/T0-style templated corpus (85k prompts sharing
   templates, answers = class names; rendered as Alpaca, scanned without a response column): rows
   flagged ``duplicate_flood`` and by everything together, the clusters whose agreement the
   rule measured (``report.json["judged_duplicate_clusters"]``) and the largest clusters.
2. **Planted floods**: into each corpus, ``--floods`` (default 8) floods of 50-200 copies of one
   row each, every copy with 1-3 letter edits (``shardguard.bench.attacks.typo``, as the flood
   benchmark plants them), inserted at seeded random positions; the original row stays where it
   was. Recall of ``duplicate_flood`` per flood, and the clean rows flagged beside them.
3. **The statistic** (no scan): ``consensus_agreement`` of the first 64 rows of 200 seeded
   typo floods per corpus (base rows of 12 characters or more, the original among them in half
   of them), against the clean corpora's measured clusters.

``--embedder none`` scans without embeddings (near-duplicates and text detectors only: the
flood figures do not depend on the embedder; minutes instead of a quarter of an hour);
``static`` (default) is the CPU default path, so "everything together" is the real figure.
Runs against whatever ``shardguard`` is importable, so the same script measures a baseline
checkout (keys it lacks are reported as absent).

Writes ``<out>/results.json`` and ``<out>/results.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shardguard.bench import attacks, suite
from shardguard.config import load_config
from shardguard.pipeline import scan

REPO = Path(__file__).resolve().parents[1]
CORPORA = ("wikipedia_2021", "alpaca_full", "tweeteval", "goemotions", "templated")
SAMPLE = 64  # rows a flood's agreement is measured on (stages.FLOOD_SAMPLE)


def load(data: Path, name: str) -> tuple[list[str], list[str]]:
    """(ids, texts) of a clean corpus, unlabelled."""
    if name == "alpaca_full":
        t = pq.read_table(data / name / "train.parquet").to_pydict()
        return t["id"], attacks.render({k: t[k] for k in ("instruction", "input", "output")}, suite.ALPACA_TEMPLATE)
    if name == "templated":
        from shardguard.bench.scale import templated_corpus

        ids, cols = templated_corpus(data)
        return ids, attacks.render(cols, suite.ALPACA_TEMPLATE)
    file = {"wikipedia_2021": "train.parquet", "tweeteval": "all.parquet", "goemotions": "all.parquet"}[name]
    t = pq.read_table(data / name / file, columns=["id", "text"])
    return [str(i) for i in t.column("id").to_pylist()], t.column("text").to_pylist()


def plant(ids: list[str], texts: list[str], n_floods: int, seed: int) -> tuple[list[str], list[str], np.ndarray]:
    """``n_floods`` floods of 50-200 typo'd copies of distinct rows of 5 words or more, at
    random positions. Returns (ids, texts, flood) with ``flood`` the flood number of each row
    (-1: an original row)."""
    rng = np.random.default_rng(seed)
    long_rows = np.flatnonzero([len(t.split()) >= 5 for t in texts])
    bases = rng.choice(long_rows, n_floods, replace=False)
    new_t: list[str] = []
    new_f: list[int] = []
    for f, b in enumerate(bases.tolist()):
        k = int(rng.integers(50, 201))
        new_t += [attacks.typo(texts[b], rng) for _ in range(k)]
        new_f += [f] * k
    n = len(texts) + len(new_t)
    pos = np.sort(rng.choice(n, len(new_t), replace=False))
    order = rng.permutation(len(new_t))  # the copies of every flood spread over the corpus
    flood = np.full(n, -1, np.int64)
    flood[pos] = np.asarray(new_f)[order]
    out_t = np.empty(n, dtype=object)
    out_i = np.empty(n, dtype=object)
    rest = np.setdiff1d(np.arange(n), pos)
    out_t[rest], out_i[rest] = texts, ids
    out_t[pos] = np.asarray(new_t, dtype=object)[order]
    out_i[pos] = [f"flood{flood[p]}-{j}" for j, p in enumerate(pos.tolist())]
    return out_i.tolist(), out_t.tolist(), flood


def corpora() -> tuple[str, ...]:
    """The corpora this checkout can build (the templated one needs ``shardguard.bench.scale``)."""
    try:
        import shardguard.bench.scale  # noqa: F401
    except ImportError:
        return tuple(c for c in CORPORA if c != "templated")
    return CORPORA


def run_scan(ids: list[str], texts: list[str], work: Path, name: str, embedder: str) -> dict:
    """One unlabelled default scan; per row: duplicate_flood, flagged at all."""
    shard = work / "shards" / f"{name}.parquet"
    shard.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "text": texts}), shard)
    out = work / "scans" / name
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(None, {"input.id_column": "id", "input.label_column": None, "embed.embedder": embedder})
    t = time.perf_counter()
    scan([shard], out, cfg)
    wall = time.perf_counter() - t
    q = pq.read_table(out / "quarantine" / f"{name}.parquet", columns=["row", "reasons"]).to_pydict()
    flood = np.zeros(len(ids), bool)
    union = np.zeros(len(ids), bool)
    for row, reasons in zip(q["row"], q["reasons"]):
        union[row] = True
        flood[row] = "duplicate_flood" in reasons
    report = json.loads((out / "report.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    shard.unlink()
    thr = report.get("thresholds", {}).get("duplicate_flood", {})
    return {"flood": flood, "union": union, "wall_s": round(wall, 1), "reasons": report.get("reasons", {}),
            "timings_s": report.get("timings_s", {}),
            "clusters_measured": thr.get("clusters_measured"), "clusters_agreeing": thr.get("clusters_agreeing"),
            "judged": report.get("judged_duplicate_clusters"), "largest": report.get("largest_duplicate_clusters")}


def clean_part(data: Path, work: Path, embedder: str) -> dict:
    out = {}
    for name in corpora():
        ids, texts = load(data, name)
        s = run_scan(ids, texts, work, name, embedder)
        n = len(ids)
        text_of = dict(zip(ids, texts))
        out[name] = {
            "rows": n, "duplicate_flood": int(s["flood"].sum()), "duplicate_flood_pct": round(100 * s["flood"].mean(), 3),
            "flagged": int(s["union"].sum()), "flagged_pct": round(100 * s["union"].mean(), 3),
            "reasons": s["reasons"], "wall_s": s["wall_s"], "index_s": s["timings_s"].get("index"),
            "clusters_measured": s["clusters_measured"], "clusters_agreeing": s["clusters_agreeing"],
            "judged": [{**c, "text": text_of.get(c["root_id"], "")[:80]} for c in (s["judged"] or [])],
            "largest": [{"size": c["size"], "flood": c["flood"], "agreement": c.get("agreement"),
                         "text": text_of.get(c["root_id"], "")[:80]} for c in (s["largest"] or [])],
        }
        logging.info("clean %s: %s", name, {k: v for k, v in out[name].items() if k not in ("judged", "largest")})
    return out


def planted_part(data: Path, work: Path, embedder: str, n_floods: int) -> dict:
    out = {}
    for name in corpora():
        ids, texts = load(data, name)
        p_ids, p_texts, flood = plant(ids, texts, n_floods, seed=suite.seed_of(f"floods/{name}"))
        s = run_scan(p_ids, p_texts, work, f"{name}_floods", embedder)
        per = [{"copies": int((flood == f).sum()), "recall": round(float(s["flood"][flood == f].mean()), 3)}
               for f in range(n_floods)]
        clean = flood < 0
        out[name] = {"floods": per, "min_recall": min(p["recall"] for p in per),
                     "recall": round(float(s["flood"][~clean].mean()), 4),
                     "clean_duplicate_flood": int(s["flood"][clean].sum()),
                     "clean_flagged_pct": round(100 * s["union"][clean].mean(), 3)}
        logging.info("planted %s: %s", name, out[name])
    return out


def statistic_part(data: Path, clean: dict | None) -> dict:
    from shardguard.dedup import consensus_agreement

    rng = np.random.default_rng(2025)
    out: dict = {"planted": {}}
    for name in corpora():
        ids, texts = load(data, name)
        cand = np.flatnonzero([len(t) >= 12 for t in texts])
        vals = []
        for j, b in enumerate(rng.choice(cand, 200, replace=False).tolist()):
            k = int(rng.integers(50, 201))
            rows = ([texts[b]] if j % 2 else []) + [attacks.typo(texts[b], rng) for _ in range(k)]
            vals.append(consensus_agreement(rows[:SAMPLE]))
        v = np.asarray(vals)
        out["planted"][name] = {"min": round(float(v.min()), 3), "p01": round(float(np.quantile(v, 0.01)), 3),
                                "p05": round(float(np.quantile(v, 0.05)), 3), "median": round(float(np.median(v)), 3)}
    if clean:
        out["clean_max"] = {name: max((c["agreement"] for c in r["judged"]), default=None)
                            for name, r in clean.items()}
    return out


def markdown(res: dict) -> str:
    lines = [f"# Floods in unlabelled data (embedder: {res['embedder']})", ""]
    if "clean" in res:
        lines += ["| corpus | rows | duplicate_flood | % | flagged by everything | % | clusters measured / agreeing |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in res["clean"].items():
            lines.append(f"| {name} | {r['rows']:,} | {r['duplicate_flood']:,} | {r['duplicate_flood_pct']} | "
                         f"{r['flagged']:,} | {r['flagged_pct']} | {r['clusters_measured']} / {r['clusters_agreeing']} |")
        lines += ["", "Most agreeing measured clusters per clean corpus:", ""]
        for name, r in res["clean"].items():
            for c in r["judged"][:3]:
                lines.append(f"- {name}: size {c['size']}, agreement {c['agreement']}, flood {c['flood']}: "
                             f"{c['text']!r}")
    if "planted" in res:
        lines += ["", "| corpus | floods | copies | recall (all copies) | least recall of a flood | clean rows duplicate_flood |"
                  " clean rows flagged % |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in res["planted"].items():
            lines.append(f"| {name} | {len(r['floods'])} | {sum(f['copies'] for f in r['floods'])} | {r['recall']} | "
                         f"{r['min_recall']} | {r['clean_duplicate_flood']} | {r['clean_flagged_pct']} |")
    if "statistic" in res:
        lines += ["", "consensus_agreement of 200 typo floods per corpus (min / 1% / 5% / median):", ""]
        for name, r in res["statistic"]["planted"].items():
            lines.append(f"- {name}: {r['min']} / {r['p01']} / {r['p05']} / {r['median']}")
        if "clean_max" in res["statistic"]:
            lines.append(f"- clean corpora, highest measured cluster: {res['statistic']['clean_max']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-out/floods")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--embedder", default="static", choices=("static", "none"))
    ap.add_argument("--floods", type=int, default=8, help="floods planted per corpus")
    ap.add_argument("--parts", default="clean,planted,statistic", help="comma-separated subset")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for name in ("shardguard", "datasketch"):
        logging.getLogger(name).setLevel(logging.WARNING)
    out, data = Path(args.out), Path(args.data)
    work = out / "work"
    parts = set(args.parts.split(","))
    res: dict = {"embedder": args.embedder}
    if "clean" in parts:
        res["clean"] = clean_part(data, work, args.embedder)
    if "planted" in parts:
        res["planted"] = planted_part(data, work, args.embedder, args.floods)
    if "statistic" in parts:
        try:
            res["statistic"] = statistic_part(data, res.get("clean"))
        except ImportError:  # a checkout without the rule
            logging.info("no consensus_agreement in this shardguard: statistic part skipped")
    shutil.rmtree(work, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    (out / "results.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
