"""Embedders: text rows -> float32 vectors (see :mod:`shardguard.embed.base`).

``make_embedder`` builds the one a config asks for. Each embedder's module is imported
lazily, when that embedder is built or named: the hashing and precomputed paths never import
torch, and the static path never imports scikit-learn (the hashing embedder's vectoriser,
~1 s of every Ray embedding actor's start on 2 cores).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shardguard.embed.base import Embedder

if TYPE_CHECKING:
    from shardguard.config import EmbedConfig
    from shardguard.embed.hashing import HashingEmbedder
    from shardguard.embed.precomputed import PrecomputedEmbedder
    from shardguard.embed.sentence_transformer import SentenceTransformerEmbedder
    from shardguard.embed.static import StaticEmbedder


def cuda_available() -> bool:
    """Whether torch sees a CUDA device; on Linux without an NVIDIA driver, answered without importing torch."""
    if sys.platform.startswith("linux") and not Path("/proc/driver/nvidia").exists() \
            and not any(Path("/dev").glob("nvidia[0-9]*")):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


#: What ``auto`` runs where no GPU runs the transformer: the static model distilled from it.
#: On two CPU cores it embeds 50-200x faster, and the poisoning benchmark met every target
#: with it that it meets with MiniLM (docs/benchmarks.md, "Static vs MiniLM").
CPU_DEFAULT = "static"
_CPU_WHY = "the static model distilled from the transformer is 50-200x faster on CPUs, with the same detection targets met"


def select_embedder(cfg: "EmbedConfig") -> tuple[str, str]:
    """``(kind, why)``: the embedder ``cfg`` asks for, resolving ``auto``.

    ``auto`` is the sentence-transformers model where it runs on a GPU (``embed.device``
    cuda, or auto with CUDA available), and :data:`CPU_DEFAULT` on CPUs.
    """
    kind = cfg.embedder
    if kind != "auto":
        return kind, f"embed.embedder: {kind}"
    dev = cfg.device
    if dev.startswith("cuda") or dev == "mps":
        return "sentence-transformers", f"auto: embed.device is {dev}, the transformer runs there"
    if dev == "cpu":
        return CPU_DEFAULT, f"auto: embed.device is cpu; {_CPU_WHY}"
    if cuda_available():
        return "sentence-transformers", "auto: a CUDA device is available, the transformer runs there"
    return CPU_DEFAULT, f"auto: no CUDA device; {_CPU_WHY}"


def make_embedder(cfg: "EmbedConfig", random_state: int = 0) -> Embedder | None:
    """The embedder named by ``cfg.embedder`` (``auto`` resolved by :func:`select_embedder`);
    None for ``"none"``. The embedder's ``selection`` attribute says which one and why.

    ``sentence-transformers`` -> :class:`SentenceTransformerEmbedder` (model,
    device, batch_size, max_seq_length); ``static`` -> :class:`StaticEmbedder`
    (a model2vec folder in ``model``, or distilled from the sentence-transformers
    ``model`` into ``cache_dir``); ``hashing`` -> :class:`HashingEmbedder`
    (``dim=cfg.hashing_dim``, seeded by ``random_state``); ``precomputed`` ->
    :class:`PrecomputedEmbedder` (reads the batch's ``embedding`` column).
    """
    kind, why = select_embedder(cfg)
    emb: Any
    if kind == "none":
        return None
    if kind == "hashing":
        from shardguard.embed.hashing import HashingEmbedder

        emb = HashingEmbedder(dim=cfg.hashing_dim, random_state=random_state)
    elif kind == "precomputed":
        from shardguard.embed.precomputed import PrecomputedEmbedder

        emb = PrecomputedEmbedder()
    elif kind == "static":
        from shardguard.embed.static import StaticEmbedder

        emb = StaticEmbedder(model=cfg.model, cache_dir=cfg.cache_dir, dim=cfg.static_dim,
                             max_seq_length=cfg.max_seq_length)
    elif kind == "sentence-transformers":
        from shardguard.embed.sentence_transformer import SentenceTransformerEmbedder

        emb = SentenceTransformerEmbedder(
            model=cfg.model,
            device=cfg.device,
            batch_size=cfg.batch_size,
            max_seq_length=cfg.max_seq_length,
        )
    else:
        from shardguard.config import ConfigError

        raise ConfigError(f"unknown embedder {kind!r}")
    emb.selection = {"embedder": kind, "why": why}
    return emb


def __getattr__(name: str):  # lazy: each embedder's dependencies only where it is used
    if name == "HashingEmbedder":
        from shardguard.embed.hashing import HashingEmbedder

        return HashingEmbedder
    if name == "PrecomputedEmbedder":
        from shardguard.embed.precomputed import PrecomputedEmbedder

        return PrecomputedEmbedder
    if name == "SentenceTransformerEmbedder":
        from shardguard.embed.sentence_transformer import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder
    if name == "StaticEmbedder":
        from shardguard.embed.static import StaticEmbedder

        return StaticEmbedder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Embedder",
    "HashingEmbedder",
    "PrecomputedEmbedder",
    "SentenceTransformerEmbedder",
    "StaticEmbedder",
    "make_embedder",
    "select_embedder",
]
