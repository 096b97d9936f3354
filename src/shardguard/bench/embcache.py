"""A text-keyed embedding cache on disk, so benchmark scenarios that share most
of their rows embed each distinct text once.

Vectors come from the project's own :class:`~shardguard.embed.SentenceTransformerEmbedder`
(the default model unless told otherwise) and are fed to the pipeline as a
precomputed embedding column; detectors see the same vectors a default scan
would compute (up to batching round-off). Files: ``<dir>/<model_key>/keys.npy``
(sha1 digests) and ``vecs.npy`` (float32), rewritten atomically.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np


def _key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


class EmbeddingCache:
    def __init__(self, directory: str | Path, embedder=None, model_key: str | None = None):
        if embedder is None:
            from shardguard.embed import SentenceTransformerEmbedder

            embedder = SentenceTransformerEmbedder()
        self.embedder = embedder
        if model_key is None:
            d = embedder.describe()
            model_key = f"{d.get('kind', 'model')}-{str(d.get('weights_sha256') or d.get('model'))[:16]}"
        self.dir = Path(directory) / model_key
        self.dir.mkdir(parents=True, exist_ok=True)
        kp, vp = self.dir / "keys.npy", self.dir / "vecs.npy"
        if kp.exists() and vp.exists():
            keys = np.load(kp)
            self.vecs = np.load(vp)
            self.index = {bytes(k).ljust(20, b"\0"): i for i, k in enumerate(keys)}  # numpy S20 strips trailing NULs
        else:
            self.vecs = np.zeros((0, embedder.dim), dtype=np.float32)
            self.index = {}

    def _save(self) -> None:
        keys = np.empty(len(self.index), dtype="S20")
        for k, i in self.index.items():
            keys[i] = k
        for name, arr in (("keys", keys), ("vecs", self.vecs)):
            tmp = self.dir / f".{name}.tmp.npy"
            np.save(tmp, arr)
            os.replace(tmp, self.dir / f"{name}.npy")

    def embed(self, texts: list[str], chunk: int = 2048) -> np.ndarray:
        """(len(texts), dim) float32; embeds (and stores) only the texts not cached yet."""
        keys = [_key(t) for t in texts]
        missing: dict[bytes, str] = {}
        for k, t in zip(keys, texts):
            if k not in self.index and k not in missing:
                missing[k] = t
        todo = list(missing.items())
        for s in range(0, len(todo), chunk):
            part = todo[s : s + chunk]
            v = self.embedder.embed_texts([t for _, t in part]).astype(np.float32)
            base = self.vecs.shape[0]
            self.vecs = np.concatenate([self.vecs, v])
            for j, (k, _) in enumerate(part):
                self.index[k] = base + j
            self._save()
        return self.vecs[[self.index[k] for k in keys]]
