"""HashingEmbedder: determinism, unit rows, edge texts, throughput."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardguard.embed import HashingEmbedder

SST2 = Path("/work/shared/data/sst2_thunlp_clean/train.parquet")


def batch_of(texts):
    n = len(texts)
    return pa.record_batch(
        {
            "id": pa.array([f"s:{i}" for i in range(n)]),
            "text": pa.array(texts, type=pa.string()),
            "label": pa.array([None] * n, type=pa.string()),
            "row": pa.array(np.arange(n, dtype=np.int64)),
        }
    )


TEXTS = [
    "a stirring , funny and finally transporting re-imagining of beauty and the beast",
    "apparently reassembled from the cutting-room floor of any given daytime soap .",
    "I watch this 3D movie",
    "!!! ??? ...",  # no word character: char n-gram fallback
    "🙂🙂",
    " ",
    "x",
]


def test_unit_rows_shape_dtype_and_order():
    emb = HashingEmbedder()
    E = emb.embed_batch(batch_of(TEXTS))
    assert E.shape == (len(TEXTS), 384) and E.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, rtol=1e-6)
    # row order is input order: each row equals the text embedded alone
    for i, t in enumerate(TEXTS):
        np.testing.assert_array_equal(emb.embed_texts([t])[0], E[i])
    assert emb.embed_batch(batch_of([])).shape == (0, 384)


def test_deterministic_across_instances_and_seeded():
    a = HashingEmbedder(random_state=0).embed_texts(TEXTS)
    b = HashingEmbedder(random_state=0).embed_texts(TEXTS)
    c = HashingEmbedder(random_state=1).embed_texts(TEXTS)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # stable across versions and machines: pinned values (MurmurHash3, no RNG stream)
    v = HashingEmbedder().embed_texts(["the quick brown fox"])[0]
    nz = np.flatnonzero(v)
    # 4 unigrams + 3 bigrams, 4 coordinates each; 2 collisions (26 nonzero)
    assert nz.tolist() == [
        12, 20, 60, 64, 71, 125, 138, 140, 158, 193, 194, 237, 240,
        249, 256, 264, 269, 277, 281, 289, 296, 311, 328, 365, 369, 376,
    ]  # fmt: skip
    signs = "---+++-++---+--+++-+++-+-+"
    assert "".join("+" if x > 0 else "-" for x in v[nz]) == signs
    np.testing.assert_allclose(np.abs(v[nz]), 0.196116, rtol=1e-5)


def test_similar_texts_are_close_and_unrelated_far():
    emb = HashingEmbedder()
    a, b, c = emb.embed_texts(
        [
            "the movie was a delight from start to finish",
            "the movie was a delight from start to the finish",
            "stocks fell sharply after the central bank raised rates",
        ]
    )
    assert a @ b > 0.85
    assert abs(a @ c) < 0.4


def test_other_dim_and_describe():
    emb = HashingEmbedder(dim=64, n_features=2**12, random_state=7)
    E = emb.embed_texts(TEXTS)
    assert E.shape == (len(TEXTS), 64)
    d = emb.describe()
    assert d["kind"] == "hashing" and d["dim"] == 64 and d["weights_sha256"] is None
    assert d["random_state"] == 7
    with pytest.raises(ValueError):
        HashingEmbedder(dim=1)
    with pytest.raises(ValueError):
        HashingEmbedder(nnz_per_feature=0)


def test_missing_text_column():
    with pytest.raises(ValueError, match="text"):
        HashingEmbedder().embed_batch(pa.record_batch({"x": pa.array([1])}))


@pytest.mark.skipif(not SST2.exists(), reason="shared SST-2 data not present")
def test_throughput_on_sst2():
    """Target: >= 10,000 rows/s end to end on SST-2-length text (the embedder
    alone measures ~40,000/s on 2 cores)."""
    texts = pq.read_table(SST2, columns=["text"]).column("text").to_pylist()
    batch = batch_of(texts)
    emb = HashingEmbedder()
    emb.embed_batch(batch_of(texts[:100]))
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        E = emb.embed_batch(batch)
        best = max(best, len(texts) / (time.perf_counter() - t0))
    print(f"hashing embedder: {best:,.0f} rows/s on {len(texts)} SST-2 rows")
    assert E.shape == (len(texts), 384)
    assert best >= 10_000
