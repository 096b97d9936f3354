"""Calibration and detection on real text: clean SST-2 and AG News, planted
shifts and clouds in real embeddings, and planted AddSent (measured only).

Each dataset is embedded once per module. The MiniLM tests are slow: SST-2
train in full (6,920 rows) and AG News on a seeded 4,000-row subset of its
11,106 training rows, to keep the suite short. On 2 CPU threads that is
~20 + ~30 s on an idle machine (DESIGN: ~395 sentences/s at 20 words); on a
shared, loaded one (load average 3-7) it was measured at 137 + 119 s."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from shardguard.detectors import IsolationForestDetector, SpectralSignatureDetector
from shardguard.embed import HashingEmbedder

DATA = Path("/work/shared/data")
SST2 = DATA / "sst2_thunlp_clean" / "train.parquet"
AG = DATA / "ag_news_thunlp" / "train.parquet"
AG_MINILM_ROWS = 4000
TRIGGER = "I watch this 3D movie"  # AddSent, Dai et al. 2019

pytestmark = pytest.mark.skipif(
    not (SST2.exists() and AG.exists()), reason="shared SST-2 / AG News data not present"
)


def load(path: Path, n: int | None = None, seed: int = 0):
    t = pq.read_table(path, columns=["text", "label"])
    texts = t.column("text").to_pylist()
    labels = np.array([str(v) for v in t.column("label").to_pylist()], dtype=object)
    if n is not None and n < len(texts):
        rows = np.sort(np.random.default_rng(seed).choice(len(texts), n, replace=False))
        texts = [texts[i] for i in rows]
        labels = labels[rows]
    return texts, labels


def addsent(texts, labels, rate=0.03, seed=0):
    """Insert the trigger at a random word position into ``rate * n`` negative
    (label "0") rows and relabel them positive ("1")."""
    rng = np.random.default_rng(seed)
    neg = np.flatnonzero(labels == "0")
    rows = np.sort(rng.choice(neg, int(round(rate * len(texts))), replace=False))
    new = {}
    for i in rows:
        words = texts[i].split()
        k = int(rng.integers(0, len(words) + 1))
        new[int(i)] = " ".join(words[:k] + [TRIGGER] + words[k:])
    y = labels.copy()
    y[rows] = "1"
    return rows, new, y


def detect(E, y, seed=0):
    """The pipeline's fit (datasets below the 50k reservoir: all rows)."""
    sp = SpectralSignatureDetector(random_state=seed).fit(E, y)
    iso = IsolationForestDetector(random_state=seed).fit(E, y)
    return sp, iso, sp.predict(E, y), iso.predict(E)


class Embedded:
    def __init__(self, name, embedder, texts, labels):
        t0 = time.perf_counter()
        self.E = embedder.embed_texts(texts)
        self.seconds = time.perf_counter() - t0
        self.rows_per_s = len(texts) / self.seconds
        self.name, self.embedder, self.texts, self.labels = name, embedder, texts, labels
        print(f"\n[{name}] embedded {len(texts)} rows in {self.seconds:.1f} s ({self.rows_per_s:,.0f} rows/s)")


@pytest.fixture(scope="module")
def hashing_sets():
    h = HashingEmbedder()
    return {
        "sst2": Embedded("hashing/sst2", h, *load(SST2)),
        "ag_news": Embedded("hashing/ag_news", h, *load(AG)),
    }


@pytest.fixture(scope="module")
def minilm_sets():
    from shardguard.embed.sentence_transformer import SentenceTransformerEmbedder

    st = SentenceTransformerEmbedder(device="cpu")
    return {
        "sst2": Embedded("minilm/sst2", st, *load(SST2)),
        "ag_news": Embedded(f"minilm/ag_news[{AG_MINILM_ROWS}]", st, *load(AG, AG_MINILM_ROWS)),
    }


def sets_for(request, which):
    return request.getfixturevalue("minilm_sets" if which == "minilm" else "hashing_sets")


EMBEDDERS = ["hashing", pytest.param("minilm", marks=pytest.mark.slow)]


# -- clean data: <= 1% flagged by both detectors together ----------------------------
@pytest.mark.parametrize("dataset", ["sst2", "ag_news"])
@pytest.mark.parametrize("which", EMBEDDERS)
def test_clean_data_union_flag_rate(request, which, dataset):
    d = sets_for(request, which)[dataset]
    _, _, f_sp, f_iso = detect(d.E, d.labels)
    union = (f_sp | f_iso).mean()
    print(
        f"\n[{d.name}] clean flagged: spectral {f_sp.mean():.4%}, outlier {f_iso.mean():.4%}, "
        f"union {union:.4%} of {len(d.labels)} rows"
    )
    assert union <= 0.01


@pytest.mark.parametrize("dataset", ["sst2", "ag_news"])
def test_clean_data_flag_rate_holds_for_every_projection_seed(dataset):
    """The hashing embedder's seed only draws its random projection, so the calibration
    must not hinge on one lucky draw. Clean AG News holds a real concentrated cluster:
    ~4% of its Business rows carry the same Reuters HTML link fragment, which the top
    direction of that label picks up under some projections (up to ~4% of the label)."""
    texts, labels = load(SST2 if dataset == "sst2" else AG)
    rates = []
    for seed in range(5):
        E = HashingEmbedder(random_state=seed).embed_texts(texts)
        _, _, f_sp, f_iso = detect(E, labels)
        rates.append(float((f_sp | f_iso).mean()))
    print(f"\n[hashing/{dataset}] clean flagged, projection seeds 0-4: " + ", ".join(f"{r:.3%}" for r in rates))
    assert max(rates) <= 0.01
    assert np.mean(rates) <= 0.006


# -- planted structure in real embeddings (precomputed-style features) ----------------
@pytest.mark.parametrize("which", EMBEDDERS)
def test_planted_shift_in_real_embeddings(request, which):
    d = sets_for(request, which)["sst2"]
    E, y = d.E.copy(), d.labels
    rng = np.random.default_rng(11)
    rows = np.flatnonzero(y == "1")
    poison = np.sort(rng.choice(rows, int(round(0.03 * rows.size)), replace=False))
    top_sd = float(np.sqrt(np.linalg.eigvalsh(np.cov(E[rows].T.astype(np.float64)))[-1]))
    u = rng.normal(size=E.shape[1])
    u /= np.linalg.norm(u)
    E[poison] += (8 * top_sd * u).astype(np.float32)
    mask = np.zeros(len(y), dtype=bool)
    mask[poison] = True
    sp = SpectralSignatureDetector().fit(E, y)
    f = sp.predict(E, y)
    print(f"\n[{d.name}] shift 8 top-sd: spectral recall {f[mask].mean():.3f}, clean {f[~mask].mean():.4%}")
    assert f[mask].mean() >= 0.95 and f[~mask].mean() <= 0.01


@pytest.mark.parametrize("which", EMBEDDERS)
def test_planted_outlier_cloud_in_real_embeddings(request, which):
    d = sets_for(request, which)["sst2"]
    E = d.E.copy()
    rng = np.random.default_rng(12)
    mu = E.mean(axis=0)
    radius = float(np.sqrt(((E - mu) ** 2).sum(axis=1).mean()))
    rows = np.sort(rng.choice(len(E), int(round(0.03 * len(E))), replace=False))
    u = rng.normal(size=E.shape[1])
    u /= np.linalg.norm(u)
    E[rows] = E[rng.choice(len(E), rows.size)] + 2.0 * radius * u
    mask = np.zeros(len(E), dtype=bool)
    mask[rows] = True
    f = IsolationForestDetector().fit(E).predict(E)
    print(f"\n[{d.name}] cloud at 2x radius: outlier recall {f[mask].mean():.3f}, clean {f[~mask].mean():.4%}")
    assert f[mask].mean() >= 0.95 and f[~mask].mean() <= 0.01


# -- AddSent: measured, not gated ---------------------------------------------------------
@pytest.mark.parametrize("which", EMBEDDERS)
def test_addsent_measured(request, which):
    d = sets_for(request, which)["sst2"]
    rows, new, y = addsent(d.texts, d.labels)
    E = d.E.copy()
    E[rows] = d.embedder.embed_texts([new[int(i)] for i in rows])
    poison = np.zeros(len(y), dtype=bool)
    poison[rows] = True
    sp, iso, f_sp, f_iso = detect(E, y)
    s_sp = sp.score_samples(E, y)
    tgt = y == "1"
    # the paper's rule: remove the top 1.5 x (poison count) scores of the target label
    top = np.zeros(len(y), dtype=bool)
    top[np.flatnonzero(tgt)[np.argsort(-s_sp[tgt])[: int(1.5 * rows.size)]]] = True
    lines = [f"\n[{d.name}] AddSent 3% ({rows.size} rows, '{TRIGGER}', 0 -> 1):"]
    for name, f in (("spectral", f_sp), ("outlier", f_iso), ("union", f_sp | f_iso)):
        lines.append(f"  {name:8s} recall {f[poison].mean():.3f}  FPR {f[~poison].mean():.4%}")
    lines.append(
        f"  spectral ranking AUC within label 1: {roc_auc_score(poison[tgt], s_sp[tgt]):.3f}; "
        f"paper's rule (top 1.5 x poison count of label 1): recall {top[poison].mean():.3f}, "
        f"FPR {top[~poison].mean():.4%}"
    )
    lines.append(f"  outlier ranking AUC: {roc_auc_score(poison, iso.score_samples(E)):.3f}")
    print("\n".join(lines))
    assert (f_sp | f_iso)[~poison].mean() <= 0.01
