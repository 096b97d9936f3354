"""MinHash signatures: datasketch compatibility, shingles of short texts, LSH parameters."""

from __future__ import annotations

import random

import numpy as np
import pytest

from conftest import TRICKY
from datasketch import LeanMinHash, MinHash, MinHashLSH

from shardguard.bench.attacks import typo_copy
from shardguard.dedup import MinHasher, NearDuplicateIndex, shingle_hash


def test_shingles_and_short_texts():
    h = MinHasher(ngram=3)
    assert h.shingles("Hello") == ["hel", "ell", "llo"]
    assert h.shingles("Ab") == ["ab"]  # shorter than n: the whole text
    assert h.shingles("") == [""]
    sig = h.signatures(["", "a", "ab", "abc"])
    assert sig.shape == (4, 128) and sig.dtype == np.uint32
    assert h.signatures([]).shape == (0, 128)


@pytest.mark.parametrize("ngram", [2, 3, 5])
def test_signatures_equal_datasketch(sst2, sms, ngram):
    """Row i == datasketch MinHash(num_perm, seed, hashfunc=shingle_hash) updated
    with the same shingles (update_batch), for real and tricky texts."""
    rng = random.Random(ngram)
    texts = TRICKY + rng.sample(sst2, 150) + rng.sample(sms, 150)
    for num_perm, seed in ((128, 1), (64, 7)):
        h = MinHasher(num_perm=num_perm, ngram=ngram, seed=seed)
        sig = h.signatures(texts)
        assert sig.shape == (len(texts), num_perm)
        for text, row in zip(texts, sig):
            m = MinHash(num_perm=num_perm, seed=seed, hashfunc=shingle_hash)
            m.update_batch(h.shingles(text))
            np.testing.assert_array_equal(row, m.hashvalues)
            lean = h.lean_minhash(row)
            assert lean == LeanMinHash(m)
            assert lean.scheme == "affine32" and lean.seed == seed
    # one more: estimated Jaccard through datasketch objects
    h = MinHasher()
    a, b = h.signatures([texts[20], typo_copy(texts[20], 1, rng)])
    assert h.lean_minhash(a).jaccard(h.lean_minhash(b)) > 0.5


def test_lsh_parameters_are_datasketchs():
    for t in (0.3, 0.5, 0.8):
        idx = NearDuplicateIndex(threshold=t)
        lsh = MinHashLSH(threshold=t, num_perm=128)
        assert (idx.bands, idx.rows) == (lsh.b, lsh.r)
