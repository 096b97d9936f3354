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

Constant-count attacks at scale (issue 11; scenarios in ``shardguard.bench.scale``):

    python benchmarks/poison_bench.py --scale [--out bench-out/poison-scale] [--only REGEX]
                                      [--counts 50,250] [--fresh] [--no-downstream] [--tables-only]

50 / 100 / 250 poisoned rows (not a rate) in TweetEval's emoji task (95k), GoEmotions (49k),
Alpaca (52k), a FLAN/T0-style templated instruction corpus (85k) and Wikipedia (241k), and
each corpus clean. Every scenario is written to ``<out>/shards/`` and scanned by the real
pipeline with the default embedder (no precomputed column) into ``<out>/scans/<name>``;
pass 1's embeddings stay there for reruns (``--fresh`` drops them), the fit and pass 2 always
rerun. Writes ``<out>/results.json`` (after every scenario) and ``results.md``; progress
goes to stderr, the table and the target checks to stdout.
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
    return read_verdicts(scan_out, shard.name, sc.n), wall


def read_verdicts(scan_out: Path, shard_file: str, n: int) -> dict:
    """One scanned shard's verdicts: ``flags`` (reason -> bool per row), ``union`` and
    ``scores`` (detector -> score per row), all of length ``n`` in row order."""
    scores = pq.read_table(scan_out / "scores" / shard_file).to_pandas()
    quar = pq.read_table(scan_out / "quarantine" / shard_file).to_pandas()
    scores = scores.sort_values("row").reset_index(drop=True)
    flags = {r: np.zeros(n, bool) for r in DETECTOR_REASONS}
    union = np.zeros(n, bool)
    for row, reasons in zip(quar["row"].to_numpy(), quar["reasons"]):
        union[row] = True
        for r in reasons:
            flags.setdefault(r, np.zeros(n, bool))[row] = True
    score_cols = {c[: -len("_score")]: scores[c].to_numpy(dtype=float) for c in scores.columns if c.endswith("_score")}
    return {"flags": flags, "union": union, "scores": score_cols}


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


def attack_test_texts(sc: Scenario, data: suite.LabelledData, seed: int = 0) -> list[str] | None:
    """The held-out test texts of a non-target label with the scenario's trigger inserted
    (attack success = the share a model assigns the target); None without a trigger."""
    if sc.trigger is None or sc.target is None:
        return None
    rng = np.random.default_rng(seed)
    src = [t for t, lab in zip(data.test_texts, data.test_labels) if lab != sc.target]
    if sc.attack == "flood":
        src = src[:200]
    return [sc.trigger(t, rng) for t in src]


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
    test_t = attack_test_texts(sc, data, seed)
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


# --- issue 11: constant-count attacks at scale (--scale) ----------------------------------------
class StderrProgress:
    """The pipeline's progress protocol, written to stderr: one line per finished scan stage."""

    def __init__(self, label: str):
        self.label, self.stage, self.t = label, "", 0.0

    def start(self, stage: str, total_rows: int | None) -> None:
        self.stage, self.t = stage, time.perf_counter()

    def advance(self, rows: int) -> None:
        pass

    def finish(self) -> None:
        print(f"    {self.label}: {self.stage} {time.perf_counter() - self.t:.1f} s", file=sys.stderr, flush=True)


def scale_scan(case, out: Path, fresh: bool = False) -> tuple[dict, dict]:
    """Scan one scale case through the real pipeline with the default embedder (``auto``:
    ``static`` on a CPU) and the ``input.*`` settings a user would give.

    The shard is rewritten each time (seeded, so byte-identical); pass 1's work files
    (embeddings, keyed by the shard's sha256 and the input config) are kept between runs unless
    ``fresh``, while the fit and pass 2 always rerun (the manifest is removed).
    Returns (verdicts as :func:`read_verdicts`, scan facts: wall time, rows/s, embedder...).
    """
    from shardguard.bench import scale

    sc = case.scenario
    shard = out / "shards" / f"{_slug(sc.name)}.parquet"
    scan_out = out / "scans" / _slug(sc.name)
    shard.parent.mkdir(parents=True, exist_ok=True)
    tmp = shard.with_suffix(".tmp")
    pq.write_table(scale.shard_table(sc), tmp, row_group_size=65536)
    tmp.replace(shard)
    (scan_out / "manifest.json").unlink(missing_ok=True)
    if fresh and (scan_out / ".work").exists():
        import shutil

        shutil.rmtree(scan_out / ".work")
    t = time.perf_counter()
    result = scan([shard], scan_out, load_config(None, scale.scan_overrides(sc)), progress=StderrProgress(sc.name))
    wall = time.perf_counter() - t
    rep = result.report
    facts = {"wall_s": round(wall, 2), "rows_per_s": round(sc.n / wall, 1),
             "pass1_reused": bool(result.shards[0].resumed), "embedder": (rep.get("embedder") or {}).get("kind"),
             "timings_s": rep.get("timings_s"), "reasons": rep.get("reasons")}
    return read_verdicts(scan_out, shard.name, sc.n), facts


def scale_detection(res: dict, poison: np.ndarray, expected: tuple[str, ...]) -> dict:
    """Recall of the planted rows (any reason; the expected reasons), precision of everything
    flagged, and the share of clean (non-planted) rows each reason and the union flag."""
    clean = ~poison
    n_p, n_c = int(poison.sum()), int(clean.sum())
    exp = np.zeros_like(res["union"])
    for r in expected:
        exp |= res["flags"].get(r, np.zeros_like(exp))
    flagged = int(res["union"].sum())
    out = {
        "poisoned": n_p,
        "flagged": flagged,
        "recall": float((res["union"] & poison).sum() / n_p) if n_p else None,
        "recall_expected": float((exp & poison).sum() / n_p) if n_p and expected else None,
        "precision": float((res["union"] & poison).sum() / flagged) if n_p and flagged else None,
        "recall_by_reason": {r: float((f & poison).sum() / n_p) for r, f in res["flags"].items()
                             if n_p and (f & poison).any()},
        "clean_flagged": {"all": int((res["union"] & clean).sum()),
                          **{r: int((f & clean).sum()) for r, f in res["flags"].items()}},
    }
    out["clean_share"] = {k: v / n_c for k, v in out["clean_flagged"].items()}
    return out


_SCALE_FEATURES: dict = {}  # dataset -> (vectorizer, features of the original corpus, model on it)


def scale_downstream(case, union: np.ndarray, seed: int = 0) -> dict | None:
    """Attack success of a classifier trained on the poisoned, the cleaned (``union`` removed),
    the truly clean (planted rows removed: an oracle filter) and the original corpus.

    The model is complement naive Bayes on hashed word 1-2-grams in which each emoji or symbol is
    a token of its own (a tokenizer must see the trigger to learn it; TF-IDF's default token
    pattern drops emoji). Issue 4's TF-IDF + logistic regression took 631 s for one fit on
    TweetEval's 95,000 rows and 20 labels on this machine (about 100 fits are needed); this
    model took 4 s with the same dev accuracy as a linear SVM (29.4% vs 29.6%) and learns the
    triggers from 50 rows (BadNets 30%, emoji 94% attack success vs 3% for a clean model).
    Every row is used: subsampling would change the constant count's share.
    """
    sc, data = case.scenario, case.data
    if data is None or sc.labels is None:
        return None
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.naive_bayes import ComplementNB

    if data.name not in _SCALE_FEATURES:
        vec = HashingVectorizer(ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b|[^\w\s]", n_features=2**20,
                                alternate_sign=False, binary=True, norm="l2")
        X0 = vec.transform(data.texts)
        original = ComplementNB(alpha=0.1).fit(X0, np.asarray(data.labels, dtype=object))
        _SCALE_FEATURES[data.name] = (vec, X0, original)
    vec, X0, original = _SCALE_FEATURES[data.name]
    if sc.n != len(data.texts):
        raise ValueError(f"{sc.name}: planted rows must replace corpus rows in place")
    # Only the planted rows differ from the original corpus: featurise those and point to them.
    changed = np.flatnonzero([a != b for a, b in zip(sc.texts, data.texts)])
    X = sp.vstack([X0, vec.transform([sc.texts[i] for i in changed.tolist()])]).tocsr()
    pos = np.arange(sc.n)
    pos[changed] = sc.n + np.arange(changed.size)
    y = np.asarray(sc.labels, dtype=object)
    poison = sc.is_poison
    test_t = attack_test_texts(sc, data, seed)
    X_test = vec.transform(test_t) if test_t else None
    X_dev = vec.transform(data.dev_texts)
    out = {}
    for k, keep in (("poisoned", np.ones(sc.n, bool)), ("cleaned", ~union), ("clean", ~poison), ("original", None)):
        model = original if keep is None else ComplementNB(alpha=0.1).fit(X[pos[keep]], y[keep])
        acc = float((model.predict(X_dev) == np.asarray(data.dev_labels, dtype=object)).mean())
        asr = float((model.predict(X_test) == sc.target).mean()) if X_test is not None else None
        out[k] = {"clean_accuracy": acc, "attack_success": asr,
                  "train_rows": int(sc.n if keep is None else keep.sum())}
    return out


def _pct(v, digits: int = 2) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}"


def scale_markdown(results: list[dict]) -> str:
    stamps = sorted({(r.get("commit") or "?", r.get("date") or "?") for r in results})
    lines = [
        "Measured on " + "; ".join(f"commit {c} ({d})" for c, d in stamps) + ".",
        "",
        "### Detection (default config, default embedder)",
        "",
        "Recall: of the planted rows, flagged for any reason / for the attack's expected reason "
        "(`trigger`). Clean rows flagged: the share of the rows that were not planted, by the trigger "
        "detector and by everything together (all reasons, near_duplicate included).",
        "",
        "| scenario | rows | poisoned | flagged | recall | recall (expected reason) | precision "
        "| clean flagged % trigger | clean flagged % all | clean rows flagged, by reason | wall s | rows/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        d, f = r["detection"], r["scan"]
        by = ", ".join(f"{k} {v}" for k, v in sorted(d["clean_flagged"].items()) if k != "all" and v) or "–"
        lines.append(
            f"| {r['scenario']} | {r['rows']:,} | {d['poisoned']} | {d['flagged']:,} | {fmt(d['recall'])} "
            f"| {fmt(d['recall_expected'])} | {fmt(d['precision'])} | {_pct(d['clean_share'].get('trigger', 0.0), 3)} "
            f"| {_pct(d['clean_share']['all'], 3)} | {by} | {f['wall_s']:.0f} | {f['rows_per_s']:,.0f} |")
    caught = [r for r in results if r["detection"]["recall_by_reason"]]
    if caught:
        lines += ["", "### Planted rows caught, by reason", "", "| scenario | recall by reason |", "|---|---|"]
        for r in caught:
            lines.append(f"| {r['scenario']} | " + ", ".join(
                f"{k} {v:.3f}" for k, v in sorted(r["detection"]["recall_by_reason"].items())) + " |")
    ds = [r for r in results if r.get("downstream")]
    if ds:
        lines += [
            "",
            "### Downstream: complement naive Bayes on hashed word 1-2-grams (emoji and symbols as tokens)",
            "",
            "ASR: the share of held-out non-target texts, trigger inserted, that the model assigns the target. "
            "Truly clean = the planted rows removed (an oracle filter); original = the corpus before planting.",
            "",
            "| scenario | acc poisoned % | acc cleaned % | acc truly clean % | ASR poisoned % | ASR cleaned % "
            "| ASR truly clean % | ASR original % | rows removed |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in ds:
            p, c, k, o = (r["downstream"][x] for x in ("poisoned", "cleaned", "clean", "original"))
            lines.append(
                f"| {r['scenario']} | {_pct(p['clean_accuracy'], 1)} | {_pct(c['clean_accuracy'], 1)} "
                f"| {_pct(k['clean_accuracy'], 1)} | {_pct(p['attack_success'], 1)} | {_pct(c['attack_success'], 1)} "
                f"| {_pct(k['attack_success'], 1)} | {_pct(o['attack_success'], 1)} | {p['train_rows'] - c['train_rows']:,} |")
    return "\n".join(lines) + "\n"


def scale_targets(results: list[dict]) -> list[str]:
    """Issue 11's acceptance checks, one line each."""
    out = []
    for r in results:
        d, name = r["detection"], r["scenario"]
        if r["attack"] == "clean":
            t, a = d["clean_share"].get("trigger", 0.0), d["clean_share"]["all"]
            out.append(f"{'PASS' if t <= 0.0005 else 'FAIL'} {name}: trigger flagged {_pct(t, 3)}% of clean rows (<= 0.05%)")
            out.append(f"{'PASS' if a <= 0.005 else 'FAIL'} {name}: all reasons flagged {_pct(a, 3)}% of clean rows (<= 0.5%)")
            continue
        need = 0.95 if d["poisoned"] >= 100 else 0.90
        out.append(f"{'PASS' if d['recall'] >= need else 'FAIL'} {name}: recall {d['recall']:.3f} (>= {need:.2f}); "
                   f"by the expected reason {fmt(d['recall_expected'])}")
        ds = r.get("downstream")
        if ds and ds["clean"]["attack_success"] is not None:
            a, b = ds["cleaned"]["attack_success"], ds["clean"]["attack_success"]
            out.append(f"{'PASS' if a - b <= 0.02 else 'FAIL'} {name}: ASR cleaned {100 * a:.1f}% vs truly clean "
                       f"{100 * b:.1f}% (within 2 points; poisoned {100 * ds['poisoned']['attack_success']:.1f}%)")
    return out


def _in_order(results: dict[str, dict], order: list[str]) -> list[dict]:
    """Results in benchmark order (names not in ``order`` last, by name)."""
    rank = {n: i for i, n in enumerate(order)}
    return sorted(results.values(), key=lambda r: (rank.get(r["scenario"], len(order)), r["scenario"]))


def _git_commit() -> str | None:
    """The checked-out commit, with ``+dirty`` when tracked files differ from it."""
    import subprocess

    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty else "")


def run_scale(args, argv: list[str] | None) -> int:
    """``--scale``: issue 11's constant-count benchmark (see :mod:`shardguard.bench.scale`)."""
    from shardguard.bench import scale

    out = Path(args.out if args.out is not None else "bench-out/poison-scale")
    if args.tables_only:
        saved = json.loads((out / "results.json").read_text())
        results, meta = saved["results"], saved["meta"]
    else:
        out.mkdir(parents=True, exist_ok=True)
        counts = tuple(int(c) for c in args.counts.split(",")) if args.counts else scale.COUNTS
        only = (lambda name: re.search(args.only, name) is not None) if args.only else None
        t0 = time.perf_counter()
        # A run of a subset (--only) updates its scenarios in the saved results and keeps the rest;
        # each result names the commit and date it was measured on.
        saved = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
        if saved.get("meta", {}).get("rows") != args.rows:
            saved = {}
        kept = {r["scenario"]: r for r in saved.get("results", [])}
        order = [n for c in scale.CORPORA for n in scale.scenario_names(c, counts)]
        stamp = {"commit": _git_commit(), "date": time.strftime("%Y-%m-%d")}
        meta = {"command": " ".join(["python", "benchmarks/poison_bench.py"] + (argv if argv is not None else sys.argv[1:])),
                "counts": list(counts), "rows": args.rows, **stamp}
        for case in scale.scale_cases(args.data, counts, only, rows=args.rows):
            sc = case.scenario
            print(f"[scale] {sc.name}: {sc.n:,} rows, {int(sc.is_poison.sum())} planted ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
            res, facts = scale_scan(case, out, fresh=args.fresh)
            det = scale_detection(res, sc.is_poison, case.expected)
            t = time.perf_counter()
            ds = None if args.no_downstream or sc.attack == "clean" else scale_downstream(case, res["union"])
            r = {"scenario": sc.name, "corpus": case.corpus, "kind": case.kind, "attack": sc.attack, "rows": sc.n,
                 "expected": list(case.expected), "target": sc.target, "detection": det, "scan": facts,
                 "downstream": ds, "downstream_s": round(time.perf_counter() - t, 1), "info": sc.info, **stamp}
            kept[sc.name] = r
            results = _in_order(kept, order)
            meta["wall_s"] = round(time.perf_counter() - t0, 1)
            (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=float))
            print(f"[scale] {sc.name}: recall {fmt(det['recall'])} (expected {fmt(det['recall_expected'])}), "
                  f"flagged {det['flagged']}, clean flagged {_pct(det['clean_share']['all'], 3)}% "
                  f"(trigger {_pct(det['clean_share'].get('trigger', 0.0), 3)}%), scan {facts['wall_s']:.0f} s "
                  f"({facts['rows_per_s']:,.0f} rows/s{', pass 1 reused' if facts['pass1_reused'] else ''})"
                  + (f", ASR cleaned/clean {_pct(ds['cleaned']['attack_success'], 1)}/{_pct(ds['clean']['attack_success'], 1)}%"
                     if ds else ""), file=sys.stderr, flush=True)
        results = _in_order(kept, order)
    checks = scale_targets(results)
    md = (scale_markdown(results) + "\n### Targets (issue 11)\n\n" + "\n".join(f"- {c}" for c in checks) + "\n")
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results, "targets": checks},
                                                 indent=1, default=float))
    print(md)
    fails = [c for c in checks if c.startswith("FAIL")]
    print(f"{len(checks)} checks, {len(fails)} FAIL; wrote {out / 'results.md'}"
          + (f" (run: {meta.get('wall_s')} s)" if "wall_s" in meta else ""), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="output folder (default bench-out/poison; with --scale bench-out/poison-scale)")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--cache", default=None, help="embedding cache folder (default <out>/../emb-cache)")
    ap.add_argument("--embedder", choices=("static", "minilm", "both", "hashing"), default="both",
                    help="static: the CPU default (distilled from MiniLM); minilm: the transformer; both side by side")
    ap.add_argument("--quick", action="store_true", help="SST-2 at 1%% and 5%%, Alpaca at 1%%")
    ap.add_argument("--only", default=None, help="regex: run only matching scenario names")
    ap.add_argument("--tables-only", action="store_true",
                    help="run nothing: rebuild <out>/results.md from the embedders' results.json already there")
    ap.add_argument("--scale", action="store_true",
                    help="issue 11: constant-count attacks in TweetEval, GoEmotions, Alpaca (52k), a templated "
                         "instruction corpus and Wikipedia (241k), scanned with the default embedder")
    ap.add_argument("--counts", default=None, help="with --scale: poisoned rows per attack, e.g. 50,250 (default 50,100,250)")
    ap.add_argument("--fresh", action="store_true", help="with --scale: drop pass 1's kept embeddings (times a full scan)")
    ap.add_argument("--rows", type=int, default=None,
                    help="with --scale: keep the first ROWS rows of every corpus (smoke tests; not the benchmark)")
    ap.add_argument("--no-downstream", action="store_true", help="with --scale: skip the attack-success models")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.scale:
        return run_scale(args, argv)
    root = Path(args.out if args.out is not None else "bench-out/poison")
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
