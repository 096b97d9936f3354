"""Denial-of-service documents (Souly et al. 2025) and the gibberish detector (issue 11, item 4).

    python benchmarks/dos_bench.py --out bench-out/dos [--scan] [--data ../shared/data]

Without ``--scan`` (about a minute): the detector's statistic ``r`` (the smallest share of
repeated tokens over every stretch of ``window`` tokens, see detectors/gibberish.py) on every
row of the clean corpora -- Wikipedia 2021, TweetEval, GoEmotions, Alpaca rendered
"{instruction}\\n{input}\\n{output}", SMS Spam, GLUE SST-2 train -- and on the Vim tutor's
translations (``/usr/share/vim``, when present); ``r`` of the planted documents (250 x 4 seeds);
the robust z of the worst clean row and of the least extreme document per window; the
detector with its defaults, calibrated on a seeded 50,000-row reservoir as a scan does, on
every corpus (rows flagged) and on Wikipedia with 50 / 100 / 250 documents (recall), and on
tails shorter than the recipe's; the detector's rows/s.

``--scan`` adds the real path: ``shardguard.pipeline.scan`` with the default config and the
static embedder (the CPU default) on Wikipedia with 50 / 100 / 250 documents and on every clean
corpus: recall and rows flagged by ``gibberish`` and by everything together, and the scan's
rows/s with and without the detector on clean Wikipedia (about 15 minutes on 2 cores).

Writes ``<out>/results.json`` and ``<out>/results.md``.
"""

from __future__ import annotations

import argparse
import glob
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
from shardguard.detectors import GibberishDetector
from shardguard.detectors.thresholds import robust_center_scale
from shardguard.pipeline import scan

REPO = Path(__file__).resolve().parents[1]
CORPORA = ("wikipedia_2021", "tweeteval", "goemotions", "alpaca_full", "sms_spam", "sst2_glue")
COUNTS = (50, 100, 250)
RESERVOIR = 50_000
BATCH = 8192  # rows per batch, as the scan's default input.batch_size


def load(data: Path, name: str) -> tuple[list[str], list[str]]:
    """(ids, texts) of a clean corpus, as the benchmark scans it."""
    if name == "alpaca_full":
        t = pq.read_table(data / name / "train.parquet").to_pydict()
        return t["id"], attacks.render({k: t[k] for k in ("instruction", "input", "output")}, suite.ALPACA_TEMPLATE)
    file = {"wikipedia_2021": "train.parquet", "tweeteval": "all.parquet", "goemotions": "all.parquet",
            "sms_spam": "sms_spam.parquet", "sst2_glue": "train.parquet"}[name]
    t = pq.read_table(data / name / file)
    ids = t.column("id").to_pylist() if "id" in t.column_names else [str(i) for i in range(t.num_rows)]
    return [str(i) for i in ids], t.column("text").to_pylist()


def vim_tutors() -> dict[str, str]:
    out = {}
    for path in sorted(glob.glob("/usr/share/vim/vim*/tutor/tutor*.utf-8")):
        with open(path, encoding="utf-8", errors="replace") as fh:
            out[Path(path).name] = fh.read()
    return out


def repeat_shares(texts: list[str], window: int) -> np.ndarray:
    det = GibberishDetector(window=window)
    return np.concatenate([det.repeat_shares(texts[i:i + BATCH]) for i in range(0, len(texts), BATCH)] or [np.zeros(0)])


def reservoir(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, min(n, RESERVOIR), replace=False))


def fitted(texts: list[str], seed: int = 0) -> GibberishDetector:
    """The detector with its defaults, calibrated on a seeded reservoir as a scan's fit is."""
    idx = reservoir(len(texts), seed)
    T = np.array([texts[i] for i in idx.tolist()], dtype=object)
    return GibberishDetector().fit(np.zeros((len(T), 1), np.float32), texts=T)


def flags(det: GibberishDetector, texts: list[str]) -> tuple[np.ndarray, float]:
    """Flags over every row, scored in batches as pass 2 does; and the rows/s of that scoring."""
    t = time.perf_counter()
    out = []
    for i in range(0, len(texts), BATCH):
        T = np.array(texts[i:i + BATCH], dtype=object)
        out.append(det.score_samples(np.zeros((len(T), 1), np.float32), texts=T) > det.threshold_)
    return np.concatenate(out), len(texts) / (time.perf_counter() - t)


def pct(v: np.ndarray, q) -> list[float]:
    return [round(float(x), 3) for x in np.percentile(v, q)] if v.size else []


def alternatives(clean: list[str], docs: list[str], window: int = 128) -> dict:
    """The statistics the issue suggests, against ``r``, on the same rows: clean rows with a
    stretch of ``window`` tokens and the planted documents (prefix included, as they are
    found). Each is oriented so that larger = more like gibberish, taken over the row's most
    gibberish-like stretch where a window makes sense (zlib: whole row, too few bytes per
    stretch); reported: the clean 99.9th percentile and maximum, the documents' minimum, and
    the share of documents above the clean maximum (recall with no clean row flagged) and the
    clean rows at or above the documents' minimum (flagged by a threshold with recall 1)."""
    import zlib

    import wordfreq

    from shardguard.detectors.gibberish import _token_lists

    top = wordfreq.top_n_list("en", 100_000)
    function, known = set(top[:100]), set(top)

    def windowed(toks: list[str], hit: set[str], invert: bool) -> float:
        words = [t for t in toks if t[:1].isalpha()]
        if len(words) < window // 2:
            return float("nan")
        v = np.fromiter(((t in hit) != invert for t in words), float, len(words))
        c = np.concatenate([[0.0], np.cumsum(v)])
        w = min(window, len(words))
        return float(((c[w:] - c[:-w]) / w).max())

    def stats(text: str, toks: list[str]) -> dict[str, float]:
        b = text.encode("utf-8")
        return {"non_word_share": windowed(toks, known, True),
                "one_minus_function_word_share": windowed(toks, function, True),
                "zlib_ratio": len(zlib.compress(b, 9)) / max(len(b), 1)}

    r_clean = repeat_shares(clean, window)
    clean = [t for t, r in zip(clean, r_clean) if np.isfinite(r)]
    out = {}
    cs = [stats(t, k) for t, k in zip(clean, _token_lists(pa.array(clean, pa.string())).to_pylist())]
    ds = [stats(t, k) for t, k in zip(docs, _token_lists(pa.array(docs, pa.string())).to_pylist())]
    for key in cs[0]:
        c = np.array([x[key] for x in cs])
        d = np.array([x[key] for x in ds])
        c, d = c[np.isfinite(c)], d[np.isfinite(d)]
        out[key] = separation(c, d)
    out["one_minus_r"] = separation(1 - r_clean[np.isfinite(r_clean)], 1 - repeat_shares(docs, window))
    return out


def separation(c: np.ndarray, d: np.ndarray) -> dict:
    """How a statistic (larger = more gibberish-like) separates clean rows ``c`` from documents ``d``."""
    return {"clean_p999": round(float(np.percentile(c, 99.9)), 3), "clean_max": round(float(c.max()), 3),
            "docs_min": round(float(d.min()), 3), "docs_over_clean_max": round(float((d > c.max()).mean()), 3),
            "clean_at_docs_min": int((c >= d.min()).sum())}


def statistic_part(data: Path, vocab: list[str]) -> dict:
    res: dict = {"corpora": {}, "windows": {}, "recall": [], "short_tails": []}
    wiki_ids, wiki = load(data, "wikipedia_2021")
    texts_of = {"wikipedia_2021": wiki}
    for name in CORPORA:
        ids, texts = (wiki_ids, wiki) if name == "wikipedia_2021" else load(data, name)
        texts_of[name] = texts
        r = repeat_shares(texts, 128)
        tested = np.flatnonzero(np.isfinite(r))
        det = fitted(texts)
        f, speed = flags(det, texts)
        low = tested[np.argsort(r[tested])[:3]]
        res["corpora"][name] = {
            "rows": len(texts), "tested": int(tested.size), "r_min_p01_p1_p50": pct(r[tested], [0, 0.1, 1, 50]),
            "lowest": [[round(float(r[i]), 3), texts[i][:100]] for i in low.tolist()],
            "flagged": int(f.sum()), "flagged_pct": 100 * float(f.mean()), "rows_per_s": round(speed),
            "threshold": det.threshold_info(),
        }
        print(f"{name}: {res['corpora'][name]['tested']} of {len(texts)} rows tested, r min/0.1%/1%/50% "
              f"{res['corpora'][name]['r_min_p01_p1_p50']}, flagged {int(f.sum())}, {speed:.0f} rows/s", flush=True)
    tutors = vim_tutors()
    if tutors:
        r = repeat_shares(list(tutors.values()), 128)
        res["vim_tutors"] = {"files": len(tutors), "r_min": round(float(np.nanmin(r)), 3),
                             "lowest": sorted(zip(np.round(r, 3).tolist(), tutors))[:3]}
        print(f"vim tutors: {len(tutors)} files, r min {np.nanmin(r):.3f}", flush=True)
    # Planted documents: 250 per seed, 4 seeds.
    docs = []
    for seed in range(4):
        sc = attacks.denial_of_service(wiki_ids, wiki, n_poison=250, seed=seed, vocabulary=vocab)
        docs += [sc.texts[i] for i in np.flatnonzero(sc.is_poison).tolist()]
    res["alternatives"] = alternatives(wiki, docs[:250])
    print("alternatives", res["alternatives"], flush=True)
    # Why window 128 and threshold_z 5: robust z (median and lower half-MAD of r on a seeded
    # 50k reservoir of clean Wikipedia) of the worst clean row per corpus and of the least extreme document.
    res_idx = reservoir(len(wiki))
    for w in (64, 100, 128, 150, 200):
        rw = repeat_shares([wiki[i] for i in res_idx.tolist()], w)
        fit = robust_center_scale(rw[np.isfinite(rw)])
        z = lambda v: (fit.center - v) / fit.scale_lower  # noqa: E731
        row = {"window": w, "center": round(fit.center, 3), "sigma_lo": round(fit.scale_lower, 3)}
        for name, texts in texts_of.items():
            rc = repeat_shares(texts, w)
            row[f"z_worst_{name}"] = round(float(z(np.nanmin(rc))), 2) if np.isfinite(rc).any() else None
        if tutors:
            row["z_worst_vim"] = round(float(z(np.nanmin(repeat_shares(list(tutors.values()), w)))), 2)
        rd = repeat_shares(docs, w)
        row["docs_r_max"] = round(float(np.nanmax(rd)), 3)
        row["z_least_doc"] = round(float(z(np.nanmax(rd))), 2)
        res["windows"][w] = row
        print("window", row, flush=True)
    # Recall without the scan (detector calibrated on the poisoned corpus's reservoir).
    for n in COUNTS:
        for seed in range(3):
            sc = attacks.denial_of_service(wiki_ids, wiki, n_poison=n, seed=100 + seed, vocabulary=vocab)
            det = fitted(sc.texts, seed)
            f, _ = flags(det, sc.texts)
            res["recall"].append({"n": n, "seed": 100 + seed, "recall": float(f[sc.is_poison].mean()),
                                  "clean_flagged": int(f[~sc.is_poison].sum()),
                                  "repeat_threshold": round(det.repeat_threshold_, 4)})
            print("recall", res["recall"][-1], flush=True)
    det = fitted(wiki)
    for tail in (100, 128, 150, 200, 300, 400):
        sc = attacks.denial_of_service(wiki_ids, wiki, n_poison=250, seed=7, vocabulary=vocab, tail_tokens=(tail, tail))
        f, _ = flags(det, [sc.texts[i] for i in np.flatnonzero(sc.is_poison).tolist()])
        res["short_tails"].append({"tail_tokens": tail, "recall": float(f.mean())})
        print("tail", res["short_tails"][-1], flush=True)
    return res


def run_scan(ids: list[str], texts: list[str], work: Path, name: str, overrides: dict | None = None) -> dict:
    shard = work / "shards" / f"{name}.parquet"
    shard.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "text": texts}), shard)
    out = work / "scans" / name
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(None, {"input.id_column": "id", "embed.embedder": "static", **(overrides or {})})
    t = time.perf_counter()
    scan([shard], out, cfg)
    wall = time.perf_counter() - t
    q = pq.read_table(out / "quarantine" / f"{name}.parquet", columns=["row", "reasons"]).to_pydict()
    gib = np.zeros(len(ids), bool)
    union = np.zeros(len(ids), bool)
    for row, reasons in zip(q["row"], q["reasons"]):
        union[row] = True
        gib[row] = "gibberish" in reasons
    report = json.loads((out / "report.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {"gib": gib, "union": union, "wall_s": round(wall, 1), "rows_per_s": round(len(ids) / wall),
            "reasons": report.get("reasons", {})}


def scan_part(data: Path, vocab: list[str], work: Path) -> dict:
    res: dict = {"poisoned": [], "clean": {}}
    wiki_ids, wiki = load(data, "wikipedia_2021")
    for n in COUNTS:
        sc = attacks.denial_of_service(wiki_ids, wiki, n_poison=n, seed=suite.seed_of(f"dos{n}"), vocabulary=vocab)
        s = run_scan(wiki_ids, sc.texts, work, f"wiki_dos{n}")
        p = sc.is_poison
        row = {"n": n, "gibberish_recall": float(s["gib"][p].mean()), "union_recall": float(s["union"][p].mean()),
               "gibberish_clean_flagged": int(s["gib"][~p].sum()), "union_clean_flagged_pct": 100 * float(s["union"][~p].mean()),
               "wall_s": s["wall_s"], "rows_per_s": s["rows_per_s"]}
        res["poisoned"].append(row)
        print("scan", row, flush=True)
    for name in CORPORA:
        ids, texts = load(data, name)
        s = run_scan(ids, texts, work, name)
        row = {"rows": len(ids), "gibberish_flagged": int(s["gib"].sum()), "gibberish_pct": 100 * float(s["gib"].mean()),
               "union_flagged": int(s["union"].sum()), "union_pct": 100 * float(s["union"].mean()),
               "reasons": s["reasons"], "wall_s": s["wall_s"], "rows_per_s": s["rows_per_s"]}
        if name == "wikipedia_2021":
            off = run_scan(ids, texts, work, name + "_off", {"detectors.gibberish.enabled": False})
            row["without_gibberish"] = {"wall_s": off["wall_s"], "rows_per_s": off["rows_per_s"]}
        res["clean"][name] = row
        print("scan", name, row, flush=True)
    return res


def markdown(res: dict) -> str:
    st = res["statistic"]
    lines = ["### r on clean corpora (window 128) and the detector with its defaults", "",
             "| corpus | rows | rows tested (>= 128 tokens) | r min / 0.1% / 1% / median | rows flagged | detector rows/s |",
             "|---|---|---|---|---|---|"]
    for name, c in st["corpora"].items():
        q = " / ".join(f"{v:.3f}" for v in c["r_min_p01_p1_p50"]) or "–"
        lines.append(f"| {name} | {c['rows']:,} | {c['tested']:,} | {q} | {c['flagged']} ({c['flagged_pct']:.3f}%) | {c['rows_per_s']:,} |")
    if "vim_tutors" in st:
        v = st["vim_tutors"]
        lines.append(f"| Vim tutor, {v['files']} translations (whole files) | {v['files']} | {v['files']} | {v['r_min']:.3f} (min) | – | – |")
    lines += ["", "### Window: robust z (centre and lower half-MAD on a 50k Wikipedia reservoir)", "",
              "| window | centre | sigma_lo | worst clean row, z (per corpus) | documents: max r | least extreme document, z |",
              "|---|---|---|---|---|---|"]
    for w, row in st["windows"].items():
        worst = ", ".join(f"{k[8:]} {v}" for k, v in row.items() if k.startswith("z_worst_") and v is not None)
        lines.append(f"| {w} | {row['center']} | {row['sigma_lo']} | {worst} | {row['docs_r_max']} | {row['z_least_doc']} |")
    lines += ["", "### Alternatives on the same rows (clean Wikipedia rows with >= 128 tokens; 250 documents)", "",
              "| statistic (larger = more gibberish-like) | clean 99.9% | clean max | documents min | documents over the clean max | clean rows at or over the documents' min |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {v['clean_p999']} | {v['clean_max']} | {v['docs_min']} | {v['docs_over_clean_max']:.3f} | {v['clean_at_docs_min']} |"
              for k, v in st["alternatives"].items()]
    lines += ["", "### Recall on Wikipedia (detector alone, calibrated on the poisoned corpus's reservoir)", "",
              "| documents | seed | recall | clean rows flagged | r threshold |", "|---|---|---|---|---|"]
    lines += [f"| {r['n']} | {r['seed']} | {r['recall']:.3f} | {r['clean_flagged']} | {r['repeat_threshold']} |" for r in st["recall"]]
    lines += ["", "| tail tokens (250 documents) | recall |", "|---|---|"]
    lines += [f"| {r['tail_tokens']} | {r['recall']:.3f} |" for r in st["short_tails"]]
    if "scan" in res:
        sc = res["scan"]
        lines += ["", "### Real scan (default config, static embedder)", "",
                  "| Wikipedia + documents | gibberish recall | all detectors recall | clean rows flagged by gibberish | clean rows flagged by all (%) | rows/s |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['n']} | {r['gibberish_recall']:.3f} | {r['union_recall']:.3f} | {r['gibberish_clean_flagged']} | "
                  f"{r['union_clean_flagged_pct']:.3f} | {r['rows_per_s']:,} |" for r in sc["poisoned"]]
        lines += ["", "| clean corpus | rows | gibberish flagged | all detectors flagged | reasons | rows/s |", "|---|---|---|---|---|---|"]
        for name, r in sc["clean"].items():
            lines.append(f"| {name} | {r['rows']:,} | {r['gibberish_flagged']} ({r['gibberish_pct']:.3f}%) | "
                         f"{r['union_flagged']} ({r['union_pct']:.2f}%) | {json.dumps(r['reasons'])} | {r['rows_per_s']:,} |")
        w = sc["clean"].get("wikipedia_2021", {})
        if "without_gibberish" in w:
            lines.append(f"\nClean Wikipedia end to end: {w['rows_per_s']:,} rows/s with the detector, "
                         f"{w['without_gibberish']['rows_per_s']:,} without.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-out/dos")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--scan", action="store_true", help="also run the real scans (static embedder)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    vocab = attacks.gibberish_vocabulary()
    t0 = time.perf_counter()
    res = {"command": " ".join(["python", "benchmarks/dos_bench.py"] + (argv if argv is not None else sys.argv[1:])),
           "statistic": statistic_part(data, vocab)}
    if args.scan:
        res["scan"] = scan_part(data, vocab, out / "work")
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=float))
    (out / "results.md").write_text(markdown(res))
    print(f"wrote {out / 'results.md'} in {res['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
