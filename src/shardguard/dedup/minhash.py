"""MinHash signatures over character n-grams, datasketch-compatible, and LSH parameters.

MinHash compatibility with datasketch
-------------------------------------
The hash family is datasketch's: ``MinHash(num_perm, seed).permutations`` gives
the odd multipliers ``a`` and offsets ``b`` of its ``affine32`` scheme (the
default since datasketch 2.0), and a shingle hash ``h`` becomes
``a * fmix32(h) + b mod 2**32`` exactly as ``MinHash.update_batch`` computes it.
A shingle is hashed to 32 bits by :func:`shingle_hash` (a polynomial over its
code points mod 2**64, multiplicatively mixed, high 32 bits), which the numpy
path evaluates for all shingles of a batch at once as a rolling polynomial
over the concatenated code points. So ``MinHash(num_perm, seed=seed,
hashfunc=shingle_hash)`` updated with ``MinHasher.shingles(text)`` holds
exactly ``MinHasher.signatures([text])[0]`` (tested), and
``MinHasher.lean_minhash`` turns a row into a ``datasketch.LeanMinHash``
(``scheme="affine32"``, which datasketch 2.0 requires when rebuilding from hash
values). Bands x rows are datasketch's choice for the threshold:
``MinHashLSH(threshold, num_perm, weights).b/.r`` (``datasketch.lsh._optimal_param``),
25 x 5 at 0.5 with the default equal weights.

Vectorised signatures: NFKC and lowercasing run once per batch on the texts
joined with NUL; whitespace collapsing, shingle hashing (rolling polynomial on
a ``uint64`` code-point array), the permutations (one ``(num_perm, ~8k
shingles)`` ``uint32`` outer product per chunk) and the minimum per text
(``np.minimum.reduceat``) are numpy over the whole batch. The only per-text
Python call is the xxh3 of each text.

Shingling: character 3-grams, threshold 0.5 (chosen by measurement)
--------------------------------------------------------------------
``python benchmarks/bench_near_duplicates.py --study``: for SST-2 (thunlp clean
train, 6,911 distinct sentences) and SMS Spam (5,159 distinct), 300 random
sentences of 5-20 words, three copies of each with 1, 2 and 3 random character
edits (insert / delete / substitute a letter), indexed after all the distinct
texts. Recall = copies matched to their original's cluster. False merges =
pairs reported among the distinct texts whose Levenshtein distance exceeds
30% of the longer text (different texts, not typo variants), per 10k texts.
Pairs reported with a true n-gram Jaccard below t - 0.1 (estimation errors):
none at n=3, t=0.5; at most one per configuration for n >= 3; 71 and 17 at
n=2, t=0.5 (bigrams of unrelated sentences overlap a lot).

==  ====  =====  ============  ============  =============  ==============
n    t    b x r  recall SST-2  recall SMS    SST-2 merges   SMS merges
                 (3 edits)     (3 edits)     per 10k        per 10k
==  ====  =====  ============  ============  =============  ==============
2   0.5   25x5   .980 (.967)   .973 (.960)   667            568
2   0.6   18x7   .983 (.963)   .971 (.940)   14.5           145
3   0.4   32x4   .992 (.983)   .978 (.970)   66.6           368
3   0.5   25x5   .987 (.970)   .961 (.920)   13.0           120  (default)
3   0.5   30x4*  .990 (.980)   .979 (.953)   18.8           155
3   0.6   18x7   .950 (.890)   .878 (.750)   4.3            40.7
3   0.7   14x9   .882 (.730)   .714 (.440)   0              3.9
3   0.8   9x13   .642 (.380)   .470 (.170)   0              0
4   0.5   25x5   .962 (.923)   .903 (.777)   8.7            75.6
5   0.5   25x5   .923 (.837)   .806 (.600)   5.8            52.3
==  ====  =====  ============  ============  =============  ==============

(*) ``lsh_weights=(0.2, 0.8)``: datasketch's optimum when false negatives weigh
more (verification removes the extra false positives): +1.8 pts recall on
SMS for +40 B per root and a ~25% slower index. Word 5-grams (datatrove,
text-dedup) cannot work here: the median word-5-gram Jaccard of a copy to its
original is 0.22 (SST-2) / 0.12 (SMS), and only ~5% reach 0.7. A 5-word
sentence (~25 characters) keeps a 3-gram Jaccard of ~0.8 with one typo but
~0.45 with three, which is why 0.8 misses most 3-typo copies (and 35-53% of
2-typo copies). At
t=0.5 the "merges" of different texts are mostly containment and templates:
"one of the worst movies of the year ." ~ "it is n't quite one of the worst
movies of the year ."; SMS spam variants of one campaign ("urgent! call 0906...
your complimentary 4* ibiza holiday" ~ "... tenerife holiday"), which a
poisoning scan should group anyway. 2-grams merge unrelated short sentences;
4- and 5-grams lose recall on 3-typo copies.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from shardguard.dedup.normalize import normalize_codepoints, normalize_text

_M64 = (1 << 64) - 1
_POLY = 0x100000001B3  # FNV-1a 64-bit prime, odd: the rolling-polynomial base
_SHINGLE_MUL = 0xD6E8FEB86659FD93
#: Target number of shingles per vectorised permutation chunk (fits in L2).
_CHUNK_SHINGLES = 8192


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3 32-bit finalizer on a uint32 array; datasketch's affine32 pre-mix."""
    h = h ^ (h >> np.uint32(16))
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


@lru_cache(maxsize=None)
def _splitmix64_cached(seed: int, n: int) -> tuple[int, ...]:
    out = []
    x = seed
    for _ in range(n):
        x = (x + 0x9E3779B97F4A7C15) & _M64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        out.append(z ^ (z >> 31))
    return tuple(out)


def _splitmix64(seed: int, n: int) -> np.ndarray:
    """``n`` fixed pseudo-random 64-bit constants (SplitMix64, platform-independent)."""
    return np.array(_splitmix64_cached(seed, n), dtype=np.uint64)


def shingle_hash(shingle: str) -> int:
    """32-bit hash of one shingle; the scalar reference of the vectorised path.

    ``(M * sum((ord(c) + 1) * P**(k-1-i)) mod 2**64) >> 32`` over the k code
    points of the shingle (multiplicative hashing of a polynomial; datasketch's
    affine32 scheme mixes it again with fmix32). Pass it as ``hashfunc`` to
    ``datasketch.MinHash``.
    """
    h = 0
    for ch in shingle:
        h = (h * _POLY + ord(ch) + 1) & _M64
    return ((h * _SHINGLE_MUL) & _M64) >> 32


@lru_cache(maxsize=None)
def lsh_params(
    threshold: float, num_perm: int, weights: tuple[float, float] = (0.5, 0.5)
) -> tuple[int, int]:
    """datasketch's (bands, rows) for a Jaccard threshold: ``MinHashLSH(threshold,
    num_perm, weights).b/.r``, i.e. ``datasketch.lsh._optimal_param``, which
    minimises the weighted false-positive + false-negative areas under the
    S-curve. ``weights`` = (false-positive weight, false-negative weight)."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=tuple(weights))
    return int(lsh.b), int(lsh.r)


# ---------------------------------------------------------------------------
# signatures
# ---------------------------------------------------------------------------
class MinHasher:
    """Vectorised MinHash signatures over character n-grams, datasketch-compatible.

    Texts are normalised with :func:`normalize_text`; a text of length L >= n has
    the L - n + 1 character n-grams as shingles, a shorter one (the empty text
    included) is a single shingle, itself.
    """

    scheme = "affine32"

    def __init__(self, num_perm: int = 128, ngram: int = 3, seed: int = 1):
        if num_perm < 2:
            raise ValueError("num_perm must be >= 2")
        if ngram < 1:
            raise ValueError("ngram must be >= 1")
        self.num_perm = int(num_perm)
        self.ngram = int(ngram)
        self.seed = int(seed)
        perms = MinHash(num_perm=self.num_perm, seed=self.seed, scheme=self.scheme).permutations
        self._a = np.ascontiguousarray(perms[0], dtype=np.uint32)
        self._b = np.ascontiguousarray(perms[1], dtype=np.uint32)

    # -- reference (scalar) API, for tests and interop -----------------------
    shingle_hash = staticmethod(shingle_hash)

    def shingles(self, text: str) -> list[str]:
        """The shingles of ``text`` (normalised first), as strings."""
        t = normalize_text(text)
        n = self.ngram
        if len(t) < n:
            return [t]
        return [t[i : i + n] for i in range(len(t) - n + 1)]

    def lean_minhash(self, signature_row: Any) -> LeanMinHash:
        row = np.asarray(signature_row, dtype=np.uint32)
        if row.shape != (self.num_perm,):
            raise ValueError(f"expected a row of {self.num_perm} hash values, got shape {row.shape}")
        return LeanMinHash(seed=self.seed, hashvalues=row, scheme=self.scheme)

    # -- vectorised path ------------------------------------------------------
    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), num_perm)`` uint32 MinHash values, the whole batch at once."""
        return self.signatures_codepoints(*normalize_codepoints(texts))

    def shingle_hashes(self, cps: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shingle hashes (uint32, concatenated in text order) and shingles per text,
        for normalised texts given as :func:`normalize_codepoints` returns them."""
        n = lens.size
        k = self.ngram
        counts = np.maximum(lens - (k - 1), 1)
        if n == 0:
            return np.empty(0, np.uint32), counts
        cps = cps.astype(np.uint64)
        cps += np.uint64(1)
        ends = np.cumsum(lens)
        short = np.flatnonzero(lens < k)
        short_poly = np.zeros(short.size, dtype=np.uint64)  # the empty text keeps 0
        # rolling polynomial: after step w, poly[i] is the polynomial of cps[i:i+w]
        poly = cps
        for w in range(1, k + 1):
            if w > 1:
                poly = poly[:-1] * np.uint64(_POLY) + cps[w - 1 :] if poly.size > 1 else poly[:0]
            if short.size and w < k:
                sel = np.flatnonzero(lens[short] == w)
                if sel.size:
                    short_poly[sel] = poly[ends[short[sel]] - w]
        # window starts that stay inside their text: all but the last k-1 of each text
        keep = np.ones(poly.size, dtype=bool)
        if k > 1 and poly.size:
            # starts end-k+1 .. end-1 of every text (for a text shorter than k-1 they
            # reach back into the previous text's own tail, never a valid start)
            tail = (ends[:, None] - np.arange(k - 1, 0, -1)).ravel()
            tail = tail[(tail >= 0) & (tail < poly.size)]
            keep[tail] = False
        hv = poly[keep]
        if short.size:
            # a short text is one shingle, inserted at its place among the others
            before = np.cumsum(counts)[short] - 1 - np.arange(short.size)
            hv = np.insert(hv, before, short_poly)
        hv *= np.uint64(_SHINGLE_MUL)
        return (hv >> np.uint64(32)).astype(np.uint32), counts

    def signatures_codepoints(self, cps: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Like :meth:`signatures`, for the output of :func:`normalize_codepoints`."""
        n = lens.size
        out = np.empty((n, self.num_perm), dtype=np.uint32)
        if n == 0:
            return out
        hv, counts = self.shingle_hashes(cps, lens)
        mixed = _fmix32(hv)
        c_end = np.cumsum(counts)
        c_start = c_end - counts
        a = self._a
        b = self._b[:, None]
        buf = np.empty((self.num_perm, min(int(c_end[-1]), _CHUNK_SHINGLES)), dtype=np.uint32)
        i = 0
        while i < n:
            s0 = int(c_start[i])
            j = int(np.searchsorted(c_end, s0 + _CHUNK_SHINGLES, side="right"))
            if j <= i:  # one long text: its shingles in pieces, minimum of the pieces
                acc = np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
                for p0 in range(s0, int(c_end[i]), _CHUNK_SHINGLES):
                    p1 = min(p0 + _CHUNK_SHINGLES, int(c_end[i]))
                    view = buf[:, : p1 - p0]
                    np.multiply.outer(a, mixed[p0:p1], out=view)
                    view += b
                    np.minimum(acc, view.min(axis=1), out=acc)
                out[i] = acc
                i += 1
                continue
            width = int(c_end[j - 1]) - s0
            view = buf[:, :width]
            np.multiply.outer(a, mixed[s0 : s0 + width], out=view)
            view += b
            out[i:j] = np.minimum.reduceat(view, c_start[i:j] - s0, axis=1).T
            i = j
        return out

