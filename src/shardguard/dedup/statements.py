"""What a text says: the features that tell whether a near-copy states what its root states
(``same_statement``), the words seen so far, the features and labels of the rows the
near-duplicate index keeps, and ``index_texts``, which adds a batch to the index judging
every labelled row by what it says. Shared by scan and ``Guard``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from shardguard.dedup.index import Added, NearDuplicateIndex
from shardguard.dedup.minhash import MinHasher, _fmix32
from shardguard.dedup.normalize import normalized
from shardguard.detectors.base import as_labels, label_groups

#: Negation words ("funny" / "not funny"), and "n't" wherever it is written.
NEGATION_RE = re.compile(r"\b(?:not|no|never|nor|none|nothing|nobody|neither|without|cannot|hardly|barely)\b|n't")
#: A label-conflicting copy counts as the same statement only when the shorter of the two
#: normalised texts holds at least this share of the longer one's characters (chosen by
#: measurement on GLUE SST-2 and planted typo copies: see docs/architecture.md).
MIN_LENGTH_RATIO = 0.85
#: ... and when their word counts differ by at most this many words (a sub-phrase drops words;
#: a typo merges two words at most now and then).
MAX_WORD_DIFF = 2
#: Permutations of the MinHash sketch of each half of a text (one byte each).
HALF_PERM = 16
#: A label-conflicting copy of a text of at least ``MIN_HALVES_LENGTH`` characters must share
#: at least ``MIN_HALF_MATCHES`` of the ``HALF_PERM`` sketch bytes of each of its halves with
#: its root (about a Jaccard similarity of 0.25 per half): two different tweets that end with
#: the same check-in place ("Magical Muir Woods. @ Muir Woods Redwood National Park" / "Seelie
#: fae : @user @ Muir Woods ...") are near-copies as wholes, never in their first halves, while
#: a few typos leave both halves alike. Measured: clean TweetEval emoji (95,000 tweets)
#: near_duplicate 500 -> 416 rows at 40 characters, 349 at 24; planted label-flipped typo'd
#: copies found: GLUE SST-2 173/180, SMS Spam 170 -> 169, AG News 173 -> 174 (docs/benchmarks.md).
MIN_HALF_MATCHES = 4
MIN_HALVES_LENGTH = 24
_HALF_HASHER = MinHasher(num_perm=HALF_PERM, ngram=3, seed=7)


def half_sketches(cps: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n, HALF_PERM)`` uint8 b-bit MinHash sketches of the first ``len // 2`` and the
    remaining code points of each normalised text (:func:`normalize_codepoints` output)."""
    n = lens.size
    if n == 0:
        return np.zeros((0, HALF_PERM), np.uint8), np.zeros((0, HALF_PERM), np.uint8)
    lens = lens.astype(np.int64)
    starts = np.cumsum(lens) - lens
    pos = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(starts, lens)
    head = pos < np.repeat(lens // 2, lens)
    out = []
    for part, plens in ((cps[head], lens // 2), (cps[~head], lens - lens // 2)):
        sig = _HALF_HASHER.signatures_codepoints(part, plens)
        out.append((_fmix32(sig) & np.uint32(0xFF)).astype(np.uint8))
    return out[0], out[1]


@dataclass
class StatementFeatures:
    """What :func:`same_statement` compares of two texts, kept per row as plain arrays ``(n,)``.

    Of the normalised text (``normalize_text``): its length in characters (``length``), its
    count of whitespace-separated words (``words``), of negation words (``negations``),
    64-bit hashes of the whole text (``h_full``), of the text without its first word
    (``h_tail``) and without its last word (``h_head``), and ``(n, HALF_PERM)`` uint8
    b-bit MinHash sketches of the character 3-grams of its first and second half
    (``head_sketch``, ``tail_sketch``). 66 bytes a row.
    """

    length: np.ndarray  # int32
    words: np.ndarray  # int32
    negations: np.ndarray  # int16
    h_full: np.ndarray  # uint64
    h_tail: np.ndarray  # uint64
    h_head: np.ndarray  # uint64
    head_sketch: np.ndarray  # uint8 (n, HALF_PERM)
    tail_sketch: np.ndarray  # uint8 (n, HALF_PERM)

    FIELDS = ("length", "words", "negations", "h_full", "h_tail", "h_head", "head_sketch", "tail_sketch")

    @classmethod
    def of_texts(cls, texts: "pa.Array | pa.ChunkedArray | list[str]") -> "StatementFeatures":
        """Features of each text (str sequence or Arrow string array without nulls)."""
        return cls.of_normalized(*normalized(texts))

    @classmethod
    def of_normalized(cls, norm: pa.Array, cps: np.ndarray, lens: np.ndarray) -> "StatementFeatures":
        """Features of normalised texts as :func:`normalized` gives them.

        Lengths and word counts come from the normalised code points (numpy), negations and
        the texts without their first or last word from Arrow's regex kernels; the only
        Python steps per text are the three 64-bit hashes.
        """
        n = len(norm)
        if n == 0:
            return cls.empty()
        ends = np.cumsum(lens)
        spaces = np.zeros(cps.size + 1, np.int64)
        spaces[1:] = np.cumsum(cps == 32)
        words = np.where(lens > 0, spaces[ends] - spaces[ends - lens] + 1, 0).astype(np.int32)
        neg = pc.count_substring_regex(norm, NEGATION_RE.pattern).to_numpy(zero_copy_only=False).astype(np.int16)
        tail = pc.replace_substring_regex(norm, r"^[^ ]*( |$)", "", max_replacements=1).to_pylist()
        head = pc.replace_substring_regex(norm, r"(^| )[^ ]*$", "", max_replacements=1).to_pylist()

        def hashes(strings: list[str]) -> np.ndarray:
            h = xxhash.xxh3_64_intdigest
            return np.fromiter((h(t.encode("utf-8", "surrogatepass")) for t in strings), np.uint64, n)

        head_sk, tail_sk = half_sketches(cps, lens)
        return cls(lens.astype(np.int32), words, neg, hashes(norm.to_pylist()), hashes(tail), hashes(head),
                   head_sk, tail_sk)

    @classmethod
    def empty(cls) -> "StatementFeatures":
        return cls(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int16),
                   np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.uint64),
                   np.zeros((0, HALF_PERM), np.uint8), np.zeros((0, HALF_PERM), np.uint8))

    def take(self, idx: np.ndarray) -> "StatementFeatures":
        return StatementFeatures(*(getattr(self, f)[idx] for f in self.FIELDS))

    @classmethod
    def concat(cls, parts: "list[StatementFeatures]") -> "StatementFeatures":
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.FIELDS))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Plain arrays for a profile, named ``<prefix><field>``."""
        return {prefix + f: getattr(self, f) for f in self.FIELDS}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> "StatementFeatures":
        dtypes = (np.int32, np.int32, np.int16, np.uint64, np.uint64, np.uint64, np.uint8, np.uint8)
        return cls(*(np.asarray(arrays[prefix + f], dt) for f, dt in zip(cls.FIELDS, dtypes)))


def same_statement(copy: StatementFeatures, root: StatementFeatures,
                   copy_has_new_word: np.ndarray | None = None) -> np.ndarray:
    """Whether each copy (a character-level near-copy of its root) says what its root says, ``(n,)`` bool.

    Not the same statement: a length ratio below :data:`MIN_LENGTH_RATIO` or more than
    :data:`MAX_WORD_DIFF` words more or less (a sub-phrase much shorter than its root, or an
    extension of it); one text being the other with one word more at its start or end ("a masterpiece" / "masterpiece", "it is dull ." / "it is
    dull"); or a negation word more or less, as a word of its own ("is funny" / "is not
    funny"); or, for texts of :data:`MIN_HALVES_LENGTH` characters or more, a half unlike the
    other text's same half (texts that share a long ending or opening and say different
    things before or after it). Typo'd copies (a few character edits) keep their words, their
    length and both halves.

    With ``copy_has_new_word`` (bool ``(n,)``: the copy holds a word that no earlier text of
    the data held, see :class:`SeenWords`), a copy that differs from its root only in words
    the data already knows -- a word swapped for another ("the best movie" / "the worst
    movie", "successfully" / "unsuccessfully") -- is not the same statement either: a
    typo'd copy misspells a word, and a misspelling is a word nothing before it held.
    Identical normalised texts always say the same thing.
    """
    lo = np.minimum(copy.length, root.length).astype(np.float64)
    hi = np.maximum(np.maximum(copy.length, root.length), 1).astype(np.float64)
    similar_length = (lo / hi >= MIN_LENGTH_RATIO) & (np.abs(copy.words - root.words) <= MAX_WORD_DIFF)
    one_word_more = ((copy.h_full == root.h_tail) | (copy.h_full == root.h_head)
                     | (root.h_full == copy.h_tail) | (root.h_full == copy.h_head))
    one_word_more &= np.abs(copy.words - root.words) == 1
    negated = (copy.negations != root.negations) & (copy.words != root.words)
    long_enough = lo >= MIN_HALVES_LENGTH
    halves_alike = ((copy.head_sketch == root.head_sketch).sum(axis=1) >= MIN_HALF_MATCHES) & (
        (copy.tail_sketch == root.tail_sketch).sum(axis=1) >= MIN_HALF_MATCHES)
    same = similar_length & ~one_word_more & ~negated & (halves_alike | ~long_enough)
    if copy_has_new_word is not None:
        same &= np.asarray(copy_has_new_word, bool)
    return same | (copy.h_full == root.h_full)


class SeenWords:
    """The words of every text seen so far, as 64-bit xxh3 hashes: 8 bytes a distinct word.

    Sorted runs of distinct hashes, oldest first, the two newest merged while the older
    is at most twice the newer (O(log n) runs, as the near-duplicate index keeps its own).
    """

    def __init__(self, hashes: np.ndarray | None = None) -> None:
        self.runs: list[np.ndarray] = []
        if hashes is not None and len(hashes):
            self.runs = [np.unique(np.asarray(hashes, np.uint64))]

    @property
    def hashes(self) -> np.ndarray:
        """Every distinct word hash, sorted (uint64)."""
        return np.sort(np.concatenate(self.runs)) if self.runs else np.zeros(0, np.uint64)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.runs)

    def contains(self, h: np.ndarray) -> np.ndarray:
        found = np.zeros(h.size, bool)
        for run in self.runs:
            pos = np.minimum(np.searchsorted(run, h), run.size - 1)
            found |= run[pos] == h
        return found

    def see(self, norm: pa.Array) -> np.ndarray:
        """Learn the words of the normalised texts ``norm``, in order; returns, per text
        (bool ``(n,)``), whether it holds a word no earlier text held (this call's earlier
        texts included)."""
        novel = np.zeros(len(norm), bool)
        vocab, first_row = first_words(norm)
        if not vocab.size:
            return novel
        fresh = ~self.contains(vocab)
        novel[first_row[fresh]] = True
        new = np.unique(vocab[fresh])
        if new.size:
            self.runs.append(new)
            while len(self.runs) >= 2 and self.runs[-2].size <= 2 * self.runs[-1].size:
                b, a = self.runs.pop(), self.runs.pop()
                self.runs.append(np.sort(np.concatenate([a, b]), kind="stable"))
        return novel


def first_words(norm: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The distinct words of the normalised texts ``norm`` (split on spaces, the empty text's
    empty "word" left out) as 64-bit xxh3 hashes (uint64 ``(k,)``), and the position of the
    first text holding each (int64 ``(k,)``). What :meth:`SeenWords.see` learns, and what the
    partitioned reduce groups by word (:mod:`shardguard.dedup.components`)."""
    n = len(norm)
    words = pc.split_pattern(norm, " ")
    offsets = words.offsets.to_numpy()
    flat = words.flatten()
    if len(flat) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    row = np.repeat(np.arange(n), np.diff(offsets - offsets[0]))
    enc = pc.dictionary_encode(flat)
    code = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    h = xxhash.xxh3_64_intdigest
    vocab = np.fromiter((h(w.encode("utf-8", "surrogatepass")) for w in enc.dictionary.to_pylist()),
                        np.uint64, len(enc.dictionary))
    # the dictionary holds exactly the words present, so the codes are 0..k-1
    _, at = np.unique(code, return_index=True)  # each word's first token, in text order
    first = row[at].astype(np.int64)
    keep = vocab != h(b"")
    return vocab[keep], first[keep]


def label_hashes(labels: Any, n: int) -> np.ndarray:
    """64-bit xxh3 hashes of labels as strings (:func:`~shardguard.detectors.base.as_labels`),
    ``(n,)`` uint64, 0 for an unlabelled row (or no labels at all): labels kept at 8 bytes each."""
    arr = as_labels(labels, n)
    if arr is None or n == 0:
        return np.zeros(n, np.uint64)
    codes, keys = label_groups(arr)
    # a label whose hash is 0 (odds 2**-64) is still a label: it becomes 1
    h = np.array([0 if k is None else xxhash.xxh3_64_intdigest(k.encode()) or 1 for k in keys], np.uint64)
    return h[codes]


class RootFeatures:
    """:class:`StatementFeatures` and label hashes (:func:`label_hashes`) of the rows the
    near-duplicate index keeps -- its roots and its statements -- looked up by sequence number.

    They arrive in increasing sequence order (scan order), so each field is one sorted,
    growable array (capacity doubles: appending a batch costs the batch, not the store).
    ``seen`` holds the words of every batch with a labelled row so far (``words``: their
    hashes, as :attr:`SeenWords.hashes` gives them), for :func:`same_statement`.
    """

    def __init__(self, seqs: np.ndarray | None = None, features: StatementFeatures | None = None,
                 labels: np.ndarray | None = None, words: np.ndarray | None = None) -> None:
        self.seen = SeenWords(words)
        self._n = 0
        self._seqs = np.zeros(0, np.int64)
        self._labels = np.zeros(0, np.uint64)
        self._feats = StatementFeatures.empty()
        if seqs is not None and features is not None:
            self.add(seqs, features, np.zeros(len(seqs), np.uint64) if labels is None else labels)

    def add(self, seqs: np.ndarray, features: StatementFeatures, labels: np.ndarray) -> None:
        """Remember rows ``seqs`` (increasing, after every row kept so far), their features
        and label hashes."""
        m = len(seqs)
        if not m:
            return
        if self._n + m > self._seqs.size:
            cap = max(2 * self._seqs.size, self._n + m, 1024)

            def grown(old: np.ndarray) -> np.ndarray:
                new = np.zeros((cap,) + old.shape[1:], old.dtype)
                new[: self._n] = old[: self._n]
                return new

            self._seqs, self._labels = grown(self._seqs), grown(self._labels)
            self._feats = StatementFeatures(*(grown(getattr(self._feats, f)) for f in StatementFeatures.FIELDS))
        self._seqs[self._n: self._n + m] = seqs
        self._labels[self._n: self._n + m] = labels
        for f in StatementFeatures.FIELDS:
            getattr(self._feats, f)[self._n: self._n + m] = getattr(features, f)
        self._n += m

    @property
    def seqs(self) -> np.ndarray:
        return self._seqs[: self._n]

    @property
    def labels(self) -> np.ndarray:
        """Label hashes, uint64 ``(n,)`` (0: unlabelled)."""
        return self._labels[: self._n]

    @property
    def nbytes(self) -> int:
        """Bytes held, spare capacity included (it is allocated)."""
        return int(self._seqs.nbytes + self._labels.nbytes
                   + sum(getattr(self._feats, f).nbytes for f in StatementFeatures.FIELDS))

    @property
    def features(self) -> StatementFeatures:
        return self._feats.take(np.arange(self._n))

    def _positions(self, seqs: np.ndarray) -> np.ndarray:
        keys = self.seqs
        seqs = np.asarray(seqs, np.int64)
        pos = np.searchsorted(keys, seqs)
        if pos.size and (pos.max() >= keys.size or np.any(keys[np.minimum(pos, keys.size - 1)] != seqs)):
            raise KeyError("a root's or statement's features are missing")
        return pos

    def lookup(self, seqs: np.ndarray) -> StatementFeatures:
        """Features of the rows with these sequence numbers (each must have been added)."""
        return self._feats.take(self._positions(seqs))

    def label_of(self, seqs: np.ndarray) -> np.ndarray:
        """Label hashes of the rows with these sequence numbers (each must have been added)."""
        return self.labels[self._positions(seqs)]


def index_texts(index: NearDuplicateIndex, kept: RootFeatures, texts: pa.Array | pa.ChunkedArray,
                labels: Any, seqs: np.ndarray | None = None,
                new_word: np.ndarray | None = None) -> tuple[Added, np.ndarray, StatementFeatures]:
    """Add ``texts`` to the near-duplicate index, judging every labelled row by what it says.

    A labelled row *contradicts* an earlier row when it says the same thing
    (:func:`same_statement`, on a pair the index verified as near-copies) as the earliest
    earlier statement it repeats, and that statement carries another label: so a
    label-flipped copy is judged against the row it copies, not only against its
    near-duplicate group's first row (which on phrase-level data is often a sub-phrase,
    a different statement); a labelled row that near-copies no first occurrence but
    repeats a member of a group joins that group (see ``NearDuplicateIndex.add_judged``).
    Unlabelled rows are not judged and contradict nothing. ``kept`` learns the words of
    the texts and the new roots' and statements' features and labels.

    ``seqs`` and ``new_word`` are for a partition of the stream
    (:mod:`shardguard.dedup.components`): the texts' sequence numbers (see
    ``NearDuplicateIndex.add_judged``) and, per text, whether it holds a word no earlier text
    of the whole stream held (computed there as a group-by; ``kept.seen`` is then not used).

    Returns ``(added, contradicts, features)``: the index's answer, bool ``(n,)``, and
    every text's :class:`StatementFeatures`. Shared by scan and Guard.
    """
    n = len(texts)
    norm, cps, lens = normalized(texts)
    feats = StatementFeatures.of_normalized(norm, cps, lens)
    lab = label_hashes(labels, n)
    judge = lab != 0
    if new_word is None:
        new_word = kept.seen.see(norm) if judge.any() else np.zeros(n, bool)
    seq_of = index.n_docs + np.arange(n, dtype=np.int64) if seqs is None else np.asarray(seqs, np.int64)
    first = int(seq_of[0]) if n else index.n_docs

    def says_same(q: np.ndarray, seq: np.ndarray) -> np.ndarray:
        inside = seq >= first  # an earlier text of this very call
        if inside.all():
            other = feats.take(np.searchsorted(seq_of, seq))
        elif not inside.any():
            other = kept.lookup(seq)
        else:
            a, b = np.flatnonzero(inside), np.flatnonzero(~inside)
            other = StatementFeatures.concat([feats.take(np.searchsorted(seq_of, seq[a])), kept.lookup(seq[b])])
            other = other.take(np.argsort(np.concatenate([a, b])))
        return same_statement(feats.take(q), other, new_word[q])

    added = index.add_judged(texts, judge if judge.any() else None, says_same, seqs)
    new = np.flatnonzero(added.new_root | added.statement)
    kept.add(seq_of[new], feats.take(new), lab[new])
    contradicts = np.zeros(n, bool)
    repeats = np.flatnonzero(added.said >= 0)
    if repeats.size:
        contradicts[repeats] = kept.label_of(added.said[repeats]) != lab[repeats]
    return added, contradicts, feats
