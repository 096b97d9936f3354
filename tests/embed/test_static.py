"""StaticEmbedder and static-model distillation: offline, cached by source digest and
parameters, verified against recorded digests; ``auto`` selection; the CLI.

Distillation runs on a tiny sentence-transformers model built here from the packaged
MiniLM's tokenizer and a 1-layer, 32-dim BERT (seconds, no network)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shardguard.config import ConfigError, EmbedConfig, load_config
from shardguard.embed import CPU_DEFAULT, cuda_available, make_embedder, select_embedder
from shardguard.embed.sentence_transformer import default_model_path, weights_digest
from shardguard.embed.static import (
    RECORD_NAME,
    StaticEmbedder,
    StaticModelError,
    cache_key,
    distill_params,
    distill_static_model,
    resolve_static_model,
    verify_static_model,
)

from tests.conftest import SAMPLES

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def build_tiny_st_model(path: Path, seed: int) -> Path:
    """A real (random-weight) sentence-transformers model: MiniLM's tokenizer, a 1-layer BERT."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel

    hf = path / "hf"
    hf.mkdir(parents=True)
    src = default_model_path()
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, hf / name)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(hf)
    word = Transformer(str(hf), max_seq_length=64)
    st = SentenceTransformer(modules=[word, Pooling(32)], device="cpu")
    out = path / "st"
    st.save(str(out))
    shutil.rmtree(hf)
    return out


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_st_model(root / "a", seed=0), build_tiny_st_model(root / "b", seed=1)


@pytest.fixture(scope="module")
def distilled(tiny_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distilled") / "m"
    distill_static_model(str(tiny_models[0]), out, dim=16)
    return out


def test_distill_writes_a_verified_model_that_embeds(distilled, tiny_models):
    record = verify_static_model(distilled)
    assert record["dim"] == 16
    assert record["source_weights_sha256"] == weights_digest(tiny_models[0])
    assert record["params"] == distill_params(16)
    assert set(record["files"]) >= {"model.safetensors", "tokenizer.json", "config.json"}
    emb = StaticEmbedder(model=str(distilled))
    X = emb.embed_texts(["a stirring , funny re-imagining", "ok", "apparently reassembled from the floor"])
    assert X.shape == (3, 16) and X.dtype == np.float32
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    d = emb.describe()
    assert d["kind"] == "static" and d["weights_sha256"] == record["model_sha256"]
    assert d["source_weights_sha256"] == record["source_weights_sha256"]


def test_distill_refuses_an_existing_folder(distilled, tiny_models):
    with pytest.raises(ConfigError, match="already exists"):
        distill_static_model(str(tiny_models[0]), distilled, dim=16)


def test_cache_reuses_a_model_and_keys_on_source_and_parameters(tiny_models, tmp_path):
    builds = []

    def counting_build(*args, **kwargs):  # the real distillation, counted
        builds.append(args[0])
        return distill_static_model(*args, **kwargs)

    a, b = (str(m) for m in tiny_models)
    p1, i1 = resolve_static_model(a, tmp_path, 16, build=counting_build)
    p2, i2 = resolve_static_model(a, tmp_path, 16, build=counting_build)
    assert p1 == p2 and len(builds) == 1
    assert (i1["origin"], i2["origin"]) == ("distilled", "cache")
    assert i1["weights_sha256"] == i2["weights_sha256"]
    assert p1.name == cache_key(weights_digest(Path(a)), distill_params(16))
    p3, _ = resolve_static_model(b, tmp_path, 16, build=counting_build)  # another source
    p4, _ = resolve_static_model(a, tmp_path, 8, build=counting_build)  # other parameters
    assert len({p1, p3, p4}) == 3 and len(builds) == 3


def test_a_corrupted_cached_model_is_rebuilt_never_used(tiny_models, tmp_path, caplog):
    a = str(tiny_models[0])
    path, _ = resolve_static_model(a, tmp_path, 16)
    weights = path / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-8:] = b"\x00\x01\x02\x03\x04\x05\x06\x07"
    weights.write_bytes(bytes(blob))
    with pytest.raises(StaticModelError, match="model.safetensors does not match"):
        verify_static_model(path)
    with caplog.at_level(logging.WARNING, logger="shardguard.embed.static"):
        path2, info2 = resolve_static_model(a, tmp_path, 16)
    assert path2 == path and info2["origin"] == "distilled"
    assert any("does not match" in r.message for r in caplog.records)
    verify_static_model(path2)


def test_a_changed_given_model_folder_is_refused(distilled, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(distilled, copy)
    (copy / "extra.txt").write_text("not part of the model")
    with pytest.raises(StaticModelError, match="extra.txt is not in"):
        StaticEmbedder(model=str(copy))
    (copy / "extra.txt").unlink()
    cfg = json.loads((copy / "config.json").read_text())
    cfg["normalize"] = False
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(StaticModelError, match="config.json does not match"):
        StaticEmbedder(model=str(copy))


def test_a_plain_model2vec_folder_is_used_as_it_is(distilled, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(distilled, plain)
    (plain / RECORD_NAME).unlink()
    emb = StaticEmbedder(model=str(plain))
    assert emb.describe()["source_weights_sha256"] is None
    assert emb.embed_texts(["hello world"]).shape == (1, 16)


def test_auto_resolves_as_documented():
    if cuda_available():
        pytest.skip("this machine has CUDA: auto picks the transformer")
    assert CPU_DEFAULT == "static"
    assert select_embedder(EmbedConfig()) == (CPU_DEFAULT, select_embedder(EmbedConfig())[1])
    assert select_embedder(EmbedConfig())[1].startswith("auto: no CUDA device")
    assert select_embedder(EmbedConfig(device="cpu"))[0] == CPU_DEFAULT
    assert select_embedder(EmbedConfig(device="cuda"))[0] == "sentence-transformers"
    for kind in ("sentence-transformers", "static", "hashing", "precomputed", "none"):
        assert select_embedder(EmbedConfig(embedder=kind))[0] == kind
    assert load_config(None).embed.embedder == "auto"


def test_make_embedder_records_its_selection(distilled):
    emb = make_embedder(EmbedConfig(embedder="static", model=str(distilled)))
    assert isinstance(emb, StaticEmbedder)
    assert emb.selection == {"embedder": "static", "why": "embed.embedder: static"}


def _cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "shardguard", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_scan_with_static_records_the_model_in_manifest_and_report(tiny_models, tmp_path):
    out = tmp_path / "out"
    r = _cli("scan", str(SAMPLES), "--out", str(out), "--id-column", "id", "--label-column", "label",
             "--embedder", "static", "--model", str(tiny_models[0]), "--set", "embed.static_dim=16",
             "--set", f"embed.cache_dir={tmp_path / 'cache'}", "--no-progress")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    e = manifest["embedder"]
    model_dir = Path(e["model_path"])
    record = verify_static_model(model_dir)
    assert model_dir.parent == tmp_path / "cache" / "static"
    assert e["kind"] == "static" and e["dim"] == 16
    assert e["weights_sha256"] == record["model_sha256"]
    assert e["source_weights_sha256"] == weights_digest(tiny_models[0])
    assert e["selected"] == {"embedder": "static", "why": "embed.embedder: static"}
    report = json.loads((out / "report.json").read_text())
    assert report["embedder"]["kind"] == "static"
    assert "embedder: static" in r.stdout
    assert sum(s["rows"] for s in manifest["shards"]) == 1996


def test_model_distill_command(tiny_models, tmp_path):
    out = tmp_path / "m"
    r = _cli("model", "distill", "--from", str(tiny_models[1]), "--out", str(out), "--dim", "8")
    assert r.returncode == 0, r.stderr
    assert f"static model: {out}" in r.stdout
    assert verify_static_model(out)["dim"] == 8
    again = _cli("model", "distill", "--from", str(tiny_models[1]), "--out", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    cached = _cli("model", "distill", "--from", str(tiny_models[1]), "--dim", "8",
                  env_extra={"SHARDGUARD_CACHE_DIR": str(tmp_path / "c")})
    assert cached.returncode == 0, cached.stderr
    assert str(tmp_path / "c" / "static") in cached.stdout
    bad = _cli("model", "distill", "--from", str(tmp_path / "nope"), "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "not an existing local directory" in bad.stderr


def test_an_unwritable_cache_is_a_clear_config_error(tiny_models, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot write the static model into .*embed.cache_dir"):
        StaticEmbedder(model=str(tiny_models[0]), cache_dir=str(blocker / "cache"), dim=16)


def test_a_guard_fitted_with_auto_keeps_the_embedder_auto_chose(tiny_models, tmp_path):
    """Workers and other machines must embed as the fit did: auto is resolved once, at fit."""
    from shardguard import Guard

    cfg = load_config(None, {"input.id_column": "id", "input.label_column": "label", "embed.device": "cpu",
                             "embed.model": str(tiny_models[0]), "embed.static_dim": 16,
                             "embed.cache_dir": str(tmp_path / "cache")})
    assert cfg.embed.embedder == "auto"
    guard = Guard.fit(SAMPLES / "sms_000.parquet", cfg)
    assert guard.config.embed.embedder == "static"
    guard.save(tmp_path / "profile")
    again = Guard.load(tmp_path / "profile")
    assert again.config.embed.embedder == "static"
