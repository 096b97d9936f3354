"""Poisoning benchmark (issue 4): published attacks planted into real data, scanned
with shardguard's DEFAULT detector config, scored per detector and downstream.

    python benchmarks/poison_bench.py --out bench-out/poison [--embedder static|minilm|both]
                                      [--quick] [--data ../shared/data]

Embeddings: every distinct text is embedded once with the chosen embedder
(``static``: the CPU default, distilled from all-MiniLM-L6-v2; ``minilm``: the
transformer itself; ``both``, the default: one after the other, side by side)
through shardguard's own embedder classes into a text-keyed cache (``--cache``,
default ``<out>/../emb-cache``), then handed to the scan as a precomputed column --
the vectors a default scan computes, without re-embedding the 90% of rows that
scenarios share. ``--embedder hashing`` lets the scan embed with the model-free
hashing embedder instead (fast, for smoke tests).

Writes ``<out>/<embedder>/results.json``, ``results.md`` and ``recall_fpr.png``
per embedder, and ``<out>/results.md`` (side by side first).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shardguard.bench import suite
from shardguard.bench.attacks import Scenario
from shardguard.config import load_config
from shardguard.pipeline import scan

REPO = Path(__file__).resolve().parents[1]
DETECTOR_REASONS = ("near_duplicate", "duplicate_flood", "outlier", "spectral", "trigger")
#: Scenarios the opt-in label_mismatch detector is measured on (labelled clean data and flips).
OPT_IN_ATTACKS = ("clean", "label_flips")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def auroc(scores: np.ndarray, truth: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if truth.all() or not truth.any():
        return None
    s = np.where(np.isfinite(scores), scores, -1e300)
    return float(roc_auc_score(truth, s))


def recall_at_fpr(scores: np.ndarray, truth: np.ndarray, max_fpr: float = 0.01) -> float | None:
    """The best recall of any threshold on ``scores`` whose false-positive rate is <= ``max_fpr``."""
    from sklearn.metrics import roc_curve

    if truth.all() or not truth.any():
        return None
    fpr, tpr, _ = roc_curve(truth, np.where(np.isfinite(scores), scores, -1e300))
    return float(tpr[fpr <= max_fpr].max())


def label_mismatch_opt_in(sc: Scenario, vecs: np.ndarray | None, seed: int = 0) -> dict | None:
    """The opt-in ``label_mismatch`` detector with its defaults, fitted on the scenario's own
    embeddings and labels as a scan with ``--enable label_mismatch`` would (every row is in
    the reservoir at these sizes). Reported apart: it is not part of the default config."""
    if vecs is None or sc.labels is None or sc.attack not in OPT_IN_ATTACKS:
        return None
    from shardguard.detectors import LabelMismatchDetector

    y = np.asarray(sc.labels, dtype=object)
    det = LabelMismatchDetector(random_state=seed).fit(vecs.astype(np.float32), y)
    score = det.score_samples(vecs.astype(np.float32), y)
    flagged = score > det.threshold_
    poison = sc.is_poison
    return {
        "flagged_share": float(flagged.mean()),
        "fpr": float((flagged & ~poison).sum() / max((~poison).sum(), 1)),
        "recall": float((flagged & poison).sum() / poison.sum()) if poison.any() else None,
        "recall_at_fpr_1pct": recall_at_fpr(score, poison),
        "auroc": auroc(score, poison),
    }


def write_shard(sc: Scenario, vecs: np.ndarray, path: Path) -> None:
    cols: dict[str, pa.Array] = {"id": pa.array(sc.ids, pa.string())}
    if sc.columns is not None:
        for k, v in sc.columns.items():
            cols[k] = pa.array(v, pa.string())
    else:
        cols["text"] = pa.array(sc.texts, pa.string())
        cols["label"] = pa.array(sc.labels, pa.string())
    flat = pa.array(vecs.astype(np.float32).ravel())
    cols["embedding"] = pa.FixedSizeListArray.from_arrays(flat, vecs.shape[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.table(cols), tmp, row_group_size=65536)
    tmp.replace(path)


def run_scan(sc: Scenario, vecs: np.ndarray | None, out: Path, embed: str) -> tuple[dict, float]:
    shard = out / "shards" / f"{_slug(sc.name)}.parquet"
    scan_out = out / "scans" / _slug(sc.name)
    overrides = {"input.id_column": "id"}
    if sc.columns is not None:
        overrides["input.text_template"] = suite.ALPACA_TEMPLATE
    else:
        overrides["input.label_column"] = "label"
    if embed == "cache":
        overrides.update({"input.embedding_column": "embedding", "embed.embedder": "precomputed"})
    else:
        overrides["embed.embedder"] = "hashing"
    if vecs is None:
        vecs = np.zeros((sc.n, 1), np.float32)
    if not shard.exists():
        write_shard(sc, vecs, shard)
    # Keep the pass-1 work files (embeddings, keyed by shard sha256 + config) but
    # always redo the fit and pass 2: detector code may have changed since.
    (scan_out / "manifest.json").unlink(missing_ok=True)
    t = time.perf_counter()
    scan([shard], scan_out, load_config(None, overrides))
    wall = time.perf_counter() - t
    scores = pq.read_table(scan_out / "scores" / f"{_slug(sc.name)}.parquet").to_pandas()
    quar = pq.read_table(scan_out / "quarantine" / f"{_slug(sc.name)}.parquet").to_pandas()
    scores = scores.sort_values("row").reset_index(drop=True)
    n = sc.n
    flags = {r: np.zeros(n, bool) for r in DETECTOR_REASONS}
    union = np.zeros(n, bool)
    for row, reasons in zip(quar["row"].to_numpy(), quar["reasons"]):
        union[row] = True
        for r in reasons:
            flags.setdefault(r, np.zeros(n, bool))[row] = True
    score_cols = {c[: -len("_score")]: scores[c].to_numpy(dtype=float) for c in scores.columns if c.endswith("_score")}
    return {"flags": flags, "union": union, "scores": score_cols}, wall


def detection_metrics(res: dict, poison: np.ndarray) -> dict:
    clean = ~poison
    out = {}

    def one(f: np.ndarray) -> dict:
        tp = int((f & poison).sum())
        return {
            "flagged": int(f.sum()),
            "recall": tp / poison.sum() if poison.any() else None,
            "precision": tp / f.sum() if f.any() else None,
            "fpr": float((f & clean).sum() / clean.sum()),
        }

    for r, f in res["flags"].items():
        out[r] = one(f)
        if r in res["scores"]:
            out[r]["auroc"] = auroc(res["scores"][r], poison)
    out["union"] = one(res["union"])
    # Everything but plain dedup: near_duplicate marks the 2nd..nth copy of ANY repeated
    # text (natural duplicates included), which is dedup rather than a poison verdict.
    no_dup = np.zeros_like(res["union"])
    for r, f in res["flags"].items():
        if r != "near_duplicate":
            no_dup |= f
    out["union_no_near_dup"] = one(no_dup)
    return out


def best_recall_at_fpr(res: dict, poison: np.ndarray) -> float | None:
    """The best recall at FPR <= 1% of any one default score column (label flips carry no
    trigger: the issue asks for their recall at FPR <= 1%)."""
    best = [recall_at_fpr(v, poison) for v in res["scores"].values()]
    best = [b for b in best if b is not None]
    return max(best) if best else None


_CLEAN_MODELS: dict = {}  # the truly clean model is the same for every scenario of a dataset


def downstream_model():
    """The downstream model: TF-IDF (1-2-grams, sublinear tf) + logistic regression (lbfgs:
    deterministic, so a training set gives one model, and one accuracy)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(max_iter=1000))


def downstream(sc: Scenario, data: suite.LabelledData, union: np.ndarray, seed: int = 0) -> dict | None:
    """TF-IDF (1-2-gram) + logistic regression on poisoned / cleaned / truly clean."""
    if data is None or data.dev_texts is None:
        return None

    texts = np.asarray(sc.texts, dtype=object)
    labels = np.asarray(sc.labels, dtype=object)
    poison = sc.is_poison
    sets = {
        "poisoned": (texts, labels),
        "cleaned": (texts[~union], labels[~union]),
        # the truly clean set: the poisoned set minus exactly the planted rows (an oracle
        # filter). Dirty-label poison comes from non-target rows, so at 10% the oracle
        # itself loses a fifth of SST-2's negatives: "original" (the data before any
        # planting) is reported as well but is not what a filter can reach.
        "clean": (texts[~poison], labels[~poison]),
        "original": (np.asarray(data.texts, dtype=object), np.asarray(data.labels, dtype=object)),
    }
    test_t = None
    if sc.trigger is not None and sc.target is not None:
        rng = np.random.default_rng(seed)
        src = [t for t, lab in zip(data.test_texts, data.test_labels) if lab != sc.target]
        if sc.attack == "flood":
            src = src[:200]
        test_t = [sc.trigger(t, rng) for t in src]
    out = {}
    for k, (tx, ly) in sets.items():
        model = _CLEAN_MODELS.get(data.name) if k == "original" else None
        if model is None:
            model = downstream_model()
            model.fit(tx.tolist(), ly)
            if k == "original":
                _CLEAN_MODELS[data.name] = model
        acc = float((model.predict(data.dev_texts) == np.asarray(data.dev_labels, dtype=object)).mean())
        asr = None
        if test_t is not None:
            asr = float((model.predict(test_t) == sc.target).mean())
        out[k] = {"clean_accuracy": acc, "attack_success": asr, "train_rows": int(len(tx))}
    return out


def fmt(v, pct=False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def markdown(results: list[dict]) -> str:
    lines = [
        "### Detection (union = everything shardguard quarantines)",
        "",
        "| scenario | poison rows | union recall | union precision | union FPR % | FPR % w/o near_dup | trigger recall | trigger FPR % | trigger AUROC | flood recall | spectral AUROC | outlier AUROC | reasons (rows flagged) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["detection"]
        u, t = m["union"], m.get("trigger", {})
        fl = m.get("duplicate_flood", {})
        other = ", ".join(f"{k} {v['flagged']}" for k, v in m.items()
                          if not k.startswith("union") and v["flagged"])
        lines.append(
            f"| {r['scenario']} | {r['poison']} | {fmt(u['recall'])} | {fmt(u['precision'])} | {fmt(u['fpr'], True)} "
            f"| {fmt(m['union_no_near_dup']['fpr'], True)} "
            f"| {fmt(t.get('recall'))} | {fmt(t.get('fpr'), True)} | {fmt(t.get('auroc'))} | {fmt(fl.get('recall'))} "
            f"| {fmt(m.get('spectral', {}).get('auroc'))} | {fmt(m.get('outlier', {}).get('auroc'))} | {other or '–'} |"
        )
    opt = [r for r in results if r.get("label_mismatch_opt_in")]
    if opt:
        lines += [
            "",
            "### Opt-in `label_mismatch` (not in the default config; fitted on the scenario's embeddings)",
            "",
            "| scenario | flagged % | FPR % | recall | recall at FPR <= 1% | AUROC | default-config union: recall, and its best recall at FPR <= 1% (any score) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in opt:
            o = r["label_mismatch_opt_in"]
            u = r["detection"]["union"]
            best = r.get("best_recall_at_fpr_1pct")
            lines.append(f"| {r['scenario']} | {fmt(o['flagged_share'], True)} | {fmt(o['fpr'], True)} | {fmt(o['recall'])} "
                         f"| {fmt(o['recall_at_fpr_1pct'])} | {fmt(o['auroc'])} | {fmt(u['recall'])}, {fmt(best)} |")
    lines += [
        "",
        "### Downstream: TF-IDF (1-2-gram) + logistic regression",
        "",
        "| scenario | acc poisoned % | acc cleaned % | acc truly clean % | acc original % | ASR poisoned % | ASR cleaned % | ASR truly clean % | ASR original % | rows removed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        d = r.get("downstream")
        if not d:
            continue
        p, c, k, o = d["poisoned"], d["cleaned"], d["clean"], d["original"]
        lines.append(
            f"| {r['scenario']} | {fmt(p['clean_accuracy'], True)} | {fmt(c['clean_accuracy'], True)} | {fmt(k['clean_accuracy'], True)} "
            f"| {fmt(o['clean_accuracy'], True)} "
            f"| {fmt(p['attack_success'], True)} | {fmt(c['attack_success'], True)} | {fmt(k['attack_success'], True)} "
            f"| {fmt(o['attack_success'], True)} "
            f"| {p['train_rows'] - c['train_rows']} |"
        )
    return "\n".join(lines) + "\n"


def targets(results: list[dict]) -> list[str]:
    """Issue 4's acceptance checks, one line each."""
    out = []
    for r in results:
        m, d = r["detection"], r.get("downstream")
        att, rate = r["attack"], r["rate"]
        if att == "clean":
            f = m["union"]["fpr"]
            g = m["union_no_near_dup"]["fpr"]
            out.append(f"{'PASS' if f <= 0.01 else 'FAIL'} {r['scenario']}: flagged {100 * f:.2f}% of clean rows (<= 1%); "
                       f"{100 * g:.2f}% without near_duplicate")
            continue
        if att == "label_flips":
            u, o = m["union"], r.get("label_mismatch_opt_in") or {}
            out.append(f"NO TARGET {r['scenario']}: default config recall {fmt(u['recall'])} at FPR {100 * u['fpr']:.2f}%; "
                       f"best default score's recall at FPR <= 1%: {fmt(r.get('best_recall_at_fpr_1pct'))}; "
                       f"opt-in label_mismatch recall at FPR <= 1%: {fmt(o.get('recall_at_fpr_1pct'))}")
            continue
        if rate is not None and rate < 0.01:
            continue
        u = m["union"]
        ok = u["recall"] >= 0.95 and u["fpr"] <= 0.01
        out.append(f"{'PASS' if ok else 'FAIL'} {r['scenario']}: recall {u['recall']:.3f} (>= 0.95), FPR {100 * u['fpr']:.2f}% (<= 1%)")
        if d and d["clean"]["attack_success"] is not None:
            a, b = d["cleaned"]["attack_success"], d["clean"]["attack_success"]
            out.append(f"{'PASS' if a - b <= 0.05 else 'FAIL'} {r['scenario']}: ASR cleaned {100 * a:.1f}% vs clean {100 * b:.1f}% (within 5 points)")
        if d:
            a, b = d["cleaned"]["clean_accuracy"], d["clean"]["clean_accuracy"]
            out.append(f"{'PASS' if b - a <= 0.005 else 'FAIL'} {r['scenario']}: accuracy cleaned {100 * a:.1f}% vs clean {100 * b:.1f}% (within 0.5 points)")
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        if r["rate"] is None or r["attack"] in ("clean",):
            continue
        series.setdefault(f"{r['dataset']} {r['attack']}", []).append((r["rate"], r["detection"]["union"]["recall"]))
    for k, pts in sorted(series.items()):
        pts.sort()
        a1.plot([100 * p for p, _ in pts], [v for _, v in pts], marker="o", label=k)
    a1.axhline(0.95, color="grey", ls="--", lw=0.8)
    a1.set_xscale("log")
    a1.set_xlabel("poison rate (%)")
    a1.set_ylabel("recall (union of detectors)")
    a1.set_ylim(-0.02, 1.02)
    a1.legend(fontsize=7)
    a1.set_title("recall vs poison rate")
    clean = [r for r in results if r["attack"] == "clean"]
    names = [r["dataset"] for r in clean]
    a2.bar(names, [100 * r["detection"]["union"]["fpr"] for r in clean])
    a2.axhline(1.0, color="grey", ls="--", lw=0.8)
    a2.set_ylabel("rows flagged on clean data (%)")
    a2.set_title("false-positive rate per clean dataset")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


EMBEDDERS = {
    "minilm": "all-MiniLM-L6-v2 (sentence-transformers; cached, precomputed column)",
    "static": "static model distilled from all-MiniLM-L6-v2 (model2vec; cached, precomputed column)",
    "hashing": "hashing (the scan embeds)",
}


def make_cache(kind: str, cache_dir: Path):
    """The text-keyed cache of ``kind``'s vectors (None for hashing: the scan embeds itself)."""
    if kind == "hashing":
        return None
    from shardguard.bench.embcache import EmbeddingCache

    if kind == "minilm":
        from shardguard.embed import SentenceTransformerEmbedder

        return EmbeddingCache(cache_dir, SentenceTransformerEmbedder())
    from shardguard.embed import StaticEmbedder

    return EmbeddingCache(cache_dir, StaticEmbedder())


def run_one(kind: str, args, out: Path) -> list[dict]:
    cache = make_cache(kind, Path(args.cache) if args.cache else out.parent.parent / "emb-cache")
    results = []
    for sc, data in suite.all_scenarios(args.data, quick=args.quick):
        if args.only and not re.search(args.only, sc.name):
            continue
        t = time.perf_counter()
        vecs = cache.embed(suite.scenario_texts(sc)) if cache is not None else None
        t_embed = time.perf_counter() - t
        res, wall = run_scan(sc, vecs, out, "hashing" if cache is None else "cache")
        det = detection_metrics(res, sc.is_poison)
        ds = downstream(sc, data, res["union"])
        opt_in = label_mismatch_opt_in(sc, vecs)
        r = {"scenario": sc.name, "dataset": sc.dataset, "attack": sc.attack, "rate": sc.rate,
             "rows": sc.n, "poison": int(sc.is_poison.sum()), "detection": det, "downstream": ds,
             "label_mismatch_opt_in": opt_in, "best_recall_at_fpr_1pct": best_recall_at_fpr(res, sc.is_poison),
             "scan_s": round(wall, 2), "embed_s": round(t_embed, 2), "info": sc.info}
        results.append(r)
        u = det["union"]
        print(f"[{kind}] {sc.name:32s} poison {r['poison']:5d} recall {fmt(u['recall'])} fpr {100 * u['fpr']:.2f}% "
              f"flagged {u['flagged']:5d}  trigger {det.get('trigger', {}).get('flagged', 0):5d}  "
              f"embed {t_embed:.1f}s scan {wall:.1f}s", flush=True)
    return results


def side_by_side(runs: dict[str, list[dict]]) -> str:
    """One row per scenario: union recall / FPR and trigger recall for each embedder."""
    kinds = list(runs)
    head = "| scenario | poison rows | " + " | ".join(
        f"{k} recall | {k} FPR % | {k} trigger recall" for k in kinds) + " |"
    lines = ["### Side by side (union of the default detectors)", "", head,
             "|---|---|" + "---|---|---|" * len(kinds)]
    by = {k: {r["scenario"]: r for r in v} for k, v in runs.items()}
    for r0 in runs[kinds[0]]:
        cells = []
        for k in kinds:
            r = by[k].get(r0["scenario"])
            if r is None:
                cells += ["–", "–", "–"]
                continue
            m = r["detection"]
            cells += [fmt(m["union"]["recall"]), fmt(m["union"]["fpr"], True), fmt(m.get("trigger", {}).get("recall"))]
        lines.append(f"| {r0['scenario']} | {r0['poison']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-out/poison")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--cache", default=None, help="embedding cache folder (default <out>/../emb-cache)")
    ap.add_argument("--embedder", choices=("static", "minilm", "both", "hashing"), default="both",
                    help="static: the CPU default (distilled from MiniLM); minilm: the transformer; both side by side")
    ap.add_argument("--quick", action="store_true", help="SST-2 at 1%% and 5%%, Alpaca at 1%%")
    ap.add_argument("--only", default=None, help="regex: run only matching scenario names")
    ap.add_argument("--tables-only", action="store_true",
                    help="run nothing: rebuild <out>/results.md from the embedders' results.json already there")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.out)
    kinds = ["static", "minilm"] if args.embedder == "both" else [args.embedder]
    t0 = time.perf_counter()
    runs: dict[str, list[dict]] = {}
    md_all = []
    for kind in kinds:
        out = root / kind
        if args.tables_only:
            saved = json.loads((out / "results.json").read_text())
            runs[kind] = saved["results"]
            md_all.append(f"## {kind}: {EMBEDDERS[kind]}\n\n{(out / 'results.md').read_text()}")
            continue
        out.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        results = runs[kind] = run_one(kind, args, out)
        checks = targets(results)
        meta = {"command": " ".join(["python", "benchmarks/poison_bench.py"] + (argv if argv is not None else sys.argv[1:])),
                "embed": EMBEDDERS[kind], "wall_s": round(time.perf_counter() - t, 1)}
        (out / "results.json").write_text(json.dumps({"meta": meta, "results": results, "targets": checks},
                                                     indent=1, default=float))
        md = markdown(results) + "\n### Targets\n\n" + "\n".join(f"- {c}" for c in checks) + "\n"
        (out / "results.md").write_text(md)
        plot(results, out / "recall_fpr.png")
        md_all.append(f"## {kind}: {EMBEDDERS[kind]}\n\n{md}")
        fails = [c for c in checks if c.startswith("FAIL")]
        print(f"[{kind}] {len(checks)} checks, {len(fails)} FAIL", *fails, sep="\n", flush=True)
    if len(runs) > 1:
        md_all.insert(0, side_by_side(runs))
    (root / "results.md").write_text("\n".join(md_all))
    print(f"wrote {root / 'results.md'} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
