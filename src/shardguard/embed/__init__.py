"""Embedders: text rows -> float32 vectors (see :mod:`shardguard.embed.base`).

``make_embedder`` builds the one a config asks for. The sentence-transformers
module is imported lazily, so the hashing and precomputed paths never import
torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardguard.embed.base import Embedder
from shardguard.embed.hashing import HashingEmbedder
from shardguard.embed.precomputed import PrecomputedEmbedder

if TYPE_CHECKING:
    from shardguard.config import EmbedConfig
    from shardguard.embed.sentence_transformer import SentenceTransformerEmbedder


def make_embedder(cfg: "EmbedConfig", random_state: int = 0) -> Embedder | None:
    """The embedder named by ``cfg.embedder``; None for ``"none"``.

    ``sentence-transformers`` -> :class:`SentenceTransformerEmbedder` (model,
    device, batch_size, max_seq_length); ``hashing`` -> :class:`HashingEmbedder`
    (``dim=cfg.hashing_dim``, seeded by ``random_state``); ``precomputed`` ->
    :class:`PrecomputedEmbedder` (reads the batch's ``embedding`` column).
    """
    kind = cfg.embedder
    if kind == "none":
        return None
    if kind == "hashing":
        return HashingEmbedder(dim=cfg.hashing_dim, random_state=random_state)
    if kind == "precomputed":
        return PrecomputedEmbedder()
    if kind == "sentence-transformers":
        from shardguard.embed.sentence_transformer import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder(
            model=cfg.model,
            device=cfg.device,
            batch_size=cfg.batch_size,
            max_seq_length=cfg.max_seq_length,
        )
    from shardguard.config import ConfigError

    raise ConfigError(f"unknown embedder {kind!r}")


def __getattr__(name: str):  # lazy: keep torch out of the hashing / precomputed paths
    if name == "SentenceTransformerEmbedder":
        from shardguard.embed.sentence_transformer import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Embedder",
    "HashingEmbedder",
    "PrecomputedEmbedder",
    "SentenceTransformerEmbedder",
    "make_embedder",
]
