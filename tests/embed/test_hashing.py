"""HashingEmbedder: the documented definition, determinism, unit rows, edge texts.

Throughput is measured by ``benchmarks/bench_embed.py``, not here."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest
import xxhash
from sklearn.utils import murmurhash3_32

from shardguard.embed import HashingEmbedder


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


def reference_vector(text: str, dim: int = 384, n_features: int = 2**18, k: int = 4, seed: int = 0) -> np.ndarray:
    """The documented embedding of one text, written out in plain Python (no Arrow, no scipy)."""
    tokens = [t for t in re.split(r"\W+", text.lower()) if t]  # on ASCII text \w is [A-Za-z0-9_]
    M = 2**64

    def mix(x: int) -> int:  # SplitMix64 finaliser
        x ^= x >> 30
        x = x * 0xBF58476D1CE4E5B9 % M
        x ^= x >> 27
        x = x * 0x94D049BB133111EB % M
        return x ^ (x >> 31)

    hashes = [xxhash.xxh3_64_intdigest(t.encode()) for t in tokens]
    hashes += [mix((a * 0x9E3779B97F4A7C15 + (b ^ 0x632BE59BD9B4E019)) % M) for a, b in zip(hashes, hashes[1:])]
    v = np.zeros(dim)
    for h in hashes:
        bucket = h % n_features
        for r in range(k):
            m = murmurhash3_32(bucket, seed=(seed * 1_000_003 + r) % 2**31, positive=True)
            v[m % dim] += (1 if (m // dim) % 2 == 0 else -1) / np.sqrt(k)
    return v / np.linalg.norm(v)


def test_matches_the_documented_definition():
    emb = HashingEmbedder()
    texts = ["the quick brown fox", "I watch this 3D movie", "the the the", "x", TEXTS[0], TEXTS[1]]
    E = emb.embed_texts(texts)
    for t, e in zip(texts, E):
        np.testing.assert_allclose(e, reference_vector(t), rtol=1e-6, atol=1e-7)
    E7 = HashingEmbedder(dim=64, n_features=2**12, random_state=7, nnz_per_feature=2).embed_texts(texts[:2])
    np.testing.assert_allclose(E7[0], reference_vector(texts[0], 64, 2**12, 2, 7), rtol=1e-6, atol=1e-7)


def test_deterministic_across_instances_and_seeded():
    a = HashingEmbedder(random_state=0).embed_texts(TEXTS)
    b = HashingEmbedder(random_state=0).embed_texts(TEXTS)
    c = HashingEmbedder(random_state=1).embed_texts(TEXTS)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # stable across versions and machines: pinned values (XXH3, SplitMix64, MurmurHash3; no RNG stream)
    v = HashingEmbedder().embed_texts(["the quick brown fox"])[0]
    nz = np.flatnonzero(v)
    # 4 unigrams + 3 bigrams, 4 coordinates each (28 nonzero: no collision)
    assert nz.tolist() == [
        32, 53, 80, 97, 112, 126, 127, 131, 136, 140, 149, 156, 206, 212,
        224, 230, 255, 256, 262, 273, 274, 295, 313, 314, 327, 351, 364, 366,
    ]  # fmt: skip
    assert "".join("+" if x > 0 else "-" for x in v[nz]) == "+-+++----+-+--++--+---+-+---"
    np.testing.assert_allclose(np.abs(v[nz]), 1 / np.sqrt(28), rtol=1e-5)


def test_tokens_are_unicode_words_lowercased():
    emb = HashingEmbedder()
    same = [
        ("Hello, World!", "hello world"),
        ("naïve café", "NAÏVE   CAFÉ"),
        ("cafe\u0301 au lait", "  cafe\u0301 -- au -- lait ."),  # a combining mark stays in its word
        ("snake_case x2", "snake_case,x2"),
        ("Привет мир", "привет, мир"),
    ]
    for a, b in same:
        np.testing.assert_array_equal(*emb.embed_texts([a, b]))
    differ = [("snake_case", "snake case"), ("cafe\u0301", "cafe"), ("a b", "b a")]
    for a, b in differ:
        x, y = emb.embed_texts([a, b])
        assert not np.allclose(x, y), (a, b)


def test_arrow_and_list_inputs_agree():
    emb = HashingEmbedder()
    expected = emb.embed_texts(TEXTS)
    for arr in (pa.array(TEXTS), pa.array(TEXTS, pa.large_string()), pa.chunked_array([TEXTS[:3], TEXTS[3:]])):
        np.testing.assert_array_equal(emb.embed_texts(arr), expected)
    # a null is embedded as the empty string (validation keeps nulls out of a scan)
    E = emb.embed_texts(pa.array(["a b", None]))
    np.testing.assert_array_equal(E[1], emb.embed_texts([""])[0])
    with pytest.raises(ValueError, match="strings"):
        emb.embed_texts(pa.array([1, 2]))


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
