"""A model-free embedder: feature hashing plus a fixed sparse random projection.

``text -> word unigrams and bigrams -> hashed counts`` (``n_features`` buckets)
``-> x @ P`` where ``P`` is an ``n_features x dim`` sparse sign matrix with
exactly ``nnz_per_feature`` entries ``+-1/sqrt(nnz_per_feature)`` per hashed
feature (a sparse Johnson-Lindenstrauss transform, Kane & Nelson 2014), then
each row is L2-normalised.

Tokens are the maximal runs of Unicode letters, combining marks, numbers and
``_`` in the lowercased text (RE2 ``[\\pL\\pM\\pN_]+``); a bigram is two
consecutive tokens of one row. Tokenising runs in Arrow's compute kernels over
the whole batch (no Python step per row): each distinct token of a batch is
hashed once with XXH3-64 (of its UTF-8 bytes, seed 0), a bigram's hash is a
SplitMix64 mix of its two tokens' hashes, and a feature's bucket is its hash
modulo ``n_features``.

``P`` is derived from MurmurHash3 of the bucket index seeded by
``random_state`` -- no random-number-generator stream is involved -- so the
vectors are identical across machines and processes (XXH3 and MurmurHash3 are
fixed specifications; which characters are letters follows the Unicode tables
of Arrow's RE2, which change only for newly assigned characters). The embedder
has no state and no fit.

Every hashed feature reaches ``nnz_per_feature`` output coordinates; the very
sparse projections of Li et al. (density ``1/sqrt(n_features)``) would drop
about half the features of a short sentence entirely.

Rows without a single token (emoji, punctuation) are embedded from their
character 1-3-grams instead (scikit-learn's ``HashingVectorizer``), so that
every row gets a unit vector.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
import xxhash
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.utils import murmurhash3_32

from shardguard.mixing import splitmix64

#: What separates tokens: anything but a Unicode letter, combining mark, number or "_".
TOKEN_SEPARATOR = r"[^\pL\pM\pN_]+"

_U = np.uint64
_GOLDEN = _U(0x9E3779B97F4A7C15)
_BIGRAM_SALT = _U(0x632BE59BD9B4E019)


def word_features(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every word unigram and bigram of ``texts``, and the row each belongs to.

    Returns ``(hashes, rows)``: two equal-length arrays, uint64 and int64 (rows index
    ``texts``); a feature that occurs twice in a row appears twice. Nulls count as
    empty text. Runs in Arrow kernels plus one XXH3 call per distinct token.
    """
    lowered = pc.utf8_lower(pc.fill_null(texts, ""))
    tokens = pc.split_pattern_regex(lowered, TOKEN_SEPARATOR)
    flat = pc.list_flatten(tokens)
    rows = pc.list_parent_indices(tokens)
    nonempty = pc.greater(pc.binary_length(flat), 0)  # a split at the row's edges leaves ""
    flat = pc.filter(flat, nonempty)
    rows = pc.filter(rows, nonempty).to_numpy().astype(np.int64)
    encoded = pc.dictionary_encode(flat)
    vocab = encoded.dictionary.cast(pa.large_binary()).to_pylist()
    vocab_hash = np.fromiter((xxhash.xxh3_64_intdigest(t) for t in vocab), dtype=np.uint64, count=len(vocab))
    uni = vocab_hash[encoded.indices.to_numpy()]
    pair = rows[1:] == rows[:-1]  # consecutive tokens of one row
    bi = splitmix64(uni[:-1][pair] * _GOLDEN + (uni[1:][pair] ^ _BIGRAM_SALT))
    return np.concatenate([uni, bi]), np.concatenate([rows, rows[:-1][pair]])


def _text_array(texts: Any) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not isinstance(texts, pa.Array):
        texts = pa.array(list(texts), type=pa.large_string())
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        raise ValueError(f"texts must be strings, got Arrow type {texts.type}")
    return texts


def _texts(batch: pa.RecordBatch) -> pa.Array:
    if "text" not in batch.schema.names:
        raise ValueError("the batch has no 'text' column")
    return batch.column("text")


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

    def embed_texts(self, texts: Any) -> np.ndarray:
        """(len(texts), dim) float32 unit rows; ``texts``: a list of str or an Arrow string array."""
        arr = _text_array(texts)
        n = len(arr)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        hashes, rows = word_features(arr)
        buckets = (hashes % _U(self.n_features)).astype(np.int64)
        X = sp.csr_matrix(
            (np.ones(buckets.size, dtype=np.float32), (rows, buckets)), shape=(n, self.n_features)
        )  # duplicates are summed: raw counts
        E = np.asarray((X @ self._proj).toarray(), dtype=np.float32)
        empty = np.flatnonzero(np.diff(X.indptr) == 0)
        if empty.size:
            fallback = arr.take(pa.array(empty)).fill_null("").to_pylist()
            Xc = self._chars.transform(fallback)
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
                f"hashing-v2(word 1-2-grams {TOKEN_SEPARATOR}-separated, xxh3, n_features={self.n_features}, "
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
