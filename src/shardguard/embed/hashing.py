"""A model-free embedder: feature hashing plus a fixed sparse random projection.

``text -> HashingVectorizer`` (lowercased word unigrams and bigrams, tokens of
one or more word characters, raw counts, ``n_features`` buckets) ``-> x @ P``
where ``P`` is an ``n_features x dim`` sparse sign matrix with exactly
``nnz_per_feature`` entries ``+-1/sqrt(nnz_per_feature)`` per hashed feature
(a sparse Johnson-Lindenstrauss transform, Kane & Nelson 2014), then each row
is L2-normalised.

``P`` is derived from MurmurHash3 of the feature index seeded by
``random_state`` -- no random-number-generator stream is involved -- so the
vectors are identical across machines, processes and library versions that
keep scikit-learn's hashing. The embedder has no state and no fit.

Every hashed feature reaches ``nnz_per_feature`` output coordinates; the very
sparse projections of Li et al. (density ``1/sqrt(n_features)``) would drop
about half the features of a short sentence entirely.

Rows without a single word character (emoji, punctuation) are embedded from
their character 1-3-grams instead, so that every row gets a unit vector.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.utils import murmurhash3_32



def _texts(batch: pa.RecordBatch) -> list[str]:
    if "text" not in batch.schema.names:
        raise ValueError("the batch has no 'text' column")
    return batch.column("text").to_pylist()


class HashingEmbedder:
    """Stateless, deterministic text embedder that needs no model.

    Its vectors encode which words occur, not what they mean (``semantic = False``):
    detectors that need meaning are left out when it is used.

    Parameters
    ----------
    dim : int, default 384
        Output dimension (MiniLM's, so downstream settings carry over).
    n_features : int, default 2**18
        Hash buckets of the vectorizer (collisions are rare at this size).
    random_state : int, default 0
        Seeds the projection.
    nnz_per_feature : int, default 4
        Output coordinates each hashed feature is spread over.
    """

    kind = "hashing"

    #: Vectors carry words, not meaning (see shardguard.detectors.base).
    semantic = False

    def __init__(
        self,
        dim: int = 384,
        n_features: int = 2**18,
        random_state: int = 0,
        nnz_per_feature: int = 4,
    ) -> None:
        if int(dim) < 2:
            raise ValueError(f"dim must be >= 2, got {dim!r}")
        if int(n_features) < 16:
            raise ValueError(f"n_features must be >= 16, got {n_features!r}")
        if not 1 <= int(nnz_per_feature) <= int(dim):
            raise ValueError(f"nnz_per_feature must be in [1, dim], got {nnz_per_feature!r}")
        self.dim = int(dim)
        self.n_features = int(n_features)
        self.random_state = int(random_state)
        self.nnz_per_feature = int(nnz_per_feature)
        self._words = HashingVectorizer(
            n_features=self.n_features,
            ngram_range=(1, 2),
            token_pattern=r"(?u)\b\w+\b",
            lowercase=True,
            alternate_sign=False,
            norm=None,
            dtype=np.float32,
        )
        self._chars = HashingVectorizer(
            n_features=self.n_features,
            analyzer="char",
            ngram_range=(1, 3),
            lowercase=True,
            alternate_sign=False,
            norm=None,
            dtype=np.float32,
        )
        self._proj = self._projection()

    def _projection(self) -> sp.csr_matrix:
        n, k, dim = self.n_features, self.nnz_per_feature, self.dim
        idx = np.arange(n, dtype=np.int32)
        cols = np.empty((n, k), dtype=np.int64)
        signs = np.empty((n, k), dtype=np.float32)
        for r in range(k):
            seed = (self.random_state * 1_000_003 + r) % (2**31)
            h = murmurhash3_32(idx, seed=seed, positive=True).astype(np.int64)
            cols[:, r] = h % dim
            signs[:, r] = np.where((h // dim) % 2 == 0, 1.0, -1.0)
        data = (signs / np.float32(np.sqrt(k))).ravel()
        indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
        P = sp.csr_matrix((data, cols.ravel(), indptr), shape=(n, dim))
        P.sum_duplicates()
        return P

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit rows."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        X = self._words.transform(texts)
        E = np.asarray((X @ self._proj).toarray(), dtype=np.float32)
        empty = np.flatnonzero(np.diff(X.indptr) == 0)
        if empty.size:
            Xc = self._chars.transform([texts[i] for i in empty])
            E[empty] = np.asarray((Xc @ self._proj).toarray(), dtype=np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", E, E, dtype=np.float32))
        zero = norms == 0
        if zero.any():  # only an empty string (or a measure-zero cancellation)
            E[zero] = np.float32(1.0 / np.sqrt(self.dim))
            norms[zero] = 1.0
        E /= norms[:, None]
        return E

    def embed_batch(self, batch: pa.RecordBatch) -> np.ndarray:
        return self.embed_texts(_texts(batch))

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": (
                f"hashing(word 1-2-grams, n_features={self.n_features}, "
                f"sparse JL nnz={self.nnz_per_feature}, seed={self.random_state})"
            ),
            "weights_sha256": None,
            "device": "cpu",
            "dim": self.dim,
            "normalized": True,
            "n_features": self.n_features,
            "nnz_per_feature": self.nnz_per_feature,
            "random_state": self.random_state,
        }

    def __repr__(self) -> str:
        return (
            f"HashingEmbedder(dim={self.dim}, n_features={self.n_features}, "
            f"random_state={self.random_state}, nnz_per_feature={self.nnz_per_feature})"
        )
