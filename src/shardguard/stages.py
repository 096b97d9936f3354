"""Small pipeline stages shared by ``scan`` (pipeline.py) and the library ``Guard``.

Each class has one job: keep a seeded reservoir sample, track near-duplicate
clusters, turn scores into verdicts.
"""

from __future__ import annotations

import difflib
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from shardguard.detectors.base import as_labels, label_groups
from shardguard.detectors.near_duplicates import Added, NearDuplicateIndex, normalize_codepoints

#: Reasons written by the near-duplicate stage and the validator.
INVALID = "invalid"
NEAR_DUPLICATE = "near_duplicate"
DUPLICATE_FLOOD = "duplicate_flood"


def id_hashes(ids: list[str]) -> np.ndarray:
    """64-bit xxh3 hashes of row ids, ``(n,)`` uint64: ids kept at 8 bytes each instead of as strings."""
    return np.fromiter((xxhash.xxh3_64_intdigest(i.encode()) for i in ids), dtype=np.uint64, count=len(ids))


#: Negation words ("funny" / "not funny"), and "n't" wherever it is written.
NEGATION_RE = re.compile(r"\b(?:not|no|never|nor|none|nothing|nobody|neither|without|cannot|hardly|barely)\b|n't")
#: A label-conflicting copy counts as the same statement only when the shorter of the two
#: normalised texts holds at least this share of the longer one's characters (chosen by
#: measurement on GLUE SST-2 and planted typo copies: see docs/architecture.md).
MIN_LENGTH_RATIO = 0.85
#: ... and when their word counts differ by at most this many words (a sub-phrase drops words;
#: a typo merges two words at most now and then).
MAX_WORD_DIFF = 2


def normalized(texts: "pa.Array | pa.ChunkedArray | list[str]") -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """The texts normalised (``normalize_text``) as an Arrow large-string array, with their
    code points and lengths as :func:`~shardguard.detectors.near_duplicates.normalize_codepoints`
    gives them."""
    cps, lens = normalize_codepoints(texts)
    big = cps.tobytes().decode("utf-32-le", "surrogatepass")
    ends = np.cumsum(lens)
    norm = pa.array([big[e - ln: e] for e, ln in zip(ends.tolist(), lens.tolist())], pa.large_string())
    return norm, cps, lens


@dataclass
class StatementFeatures:
    """What :func:`same_statement` compares of two texts, kept per row as plain arrays ``(n,)``.

    Of the normalised text (``normalize_text``): its length in characters (``length``), its
    count of whitespace-separated words (``words``), of negation words (``negations``), and
    64-bit hashes of the whole text (``h_full``), of the text without its first word
    (``h_tail``) and without its last word (``h_head``). 34 bytes a row.
    """

    length: np.ndarray  # int32
    words: np.ndarray  # int32
    negations: np.ndarray  # int16
    h_full: np.ndarray  # uint64
    h_tail: np.ndarray  # uint64
    h_head: np.ndarray  # uint64

    FIELDS = ("length", "words", "negations", "h_full", "h_tail", "h_head")

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

        return cls(lens.astype(np.int32), words, neg, hashes(norm.to_pylist()), hashes(tail), hashes(head))

    @classmethod
    def empty(cls) -> "StatementFeatures":
        return cls(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int16),
                   np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.uint64))

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
        dtypes = (np.int32, np.int32, np.int16, np.uint64, np.uint64, np.uint64)
        return cls(*(np.asarray(arrays[prefix + f], dt) for f, dt in zip(cls.FIELDS, dtypes)))


def same_statement(copy: StatementFeatures, root: StatementFeatures,
                   copy_has_new_word: np.ndarray | None = None) -> np.ndarray:
    """Whether each copy (a character-level near-copy of its root) says what its root says, ``(n,)`` bool.

    Not the same statement: a length ratio below :data:`MIN_LENGTH_RATIO` or more than
    :data:`MAX_WORD_DIFF` words more or less (a sub-phrase much shorter than its root, or an
    extension of it); one text being the other with one word more at its start or end ("a masterpiece" / "masterpiece", "it is dull ." / "it is
    dull"); or a negation word more or less, as a word of its own ("is funny" / "is not
    funny"). Typo'd copies (a few character edits) keep their words and their length.

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
    same = similar_length & ~one_word_more & ~negated
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
        n = len(norm)
        novel = np.zeros(n, bool)
        words = pc.split_pattern(norm, " ")
        offsets = words.offsets.to_numpy()
        flat = words.flatten()
        if len(flat) == 0:
            return novel
        row = np.repeat(np.arange(n), np.diff(offsets - offsets[0]))
        enc = pc.dictionary_encode(flat)
        code = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        h = xxhash.xxh3_64_intdigest
        vocab = np.fromiter((h(w.encode("utf-8", "surrogatepass")) for w in enc.dictionary.to_pylist()),
                            np.uint64, len(enc.dictionary))
        fresh = ~self.contains(vocab)
        fresh &= vocab != h(b"")  # the empty text's "word"
        _, first = np.unique(code, return_index=True)  # each word's first token, in text order
        first_row = row[first]
        novel[first_row[fresh]] = True
        new = np.unique(vocab[fresh])
        if new.size:
            self.runs.append(new)
            while len(self.runs) >= 2 and self.runs[-2].size <= 2 * self.runs[-1].size:
                b, a = self.runs.pop(), self.runs.pop()
                self.runs.append(np.sort(np.concatenate([a, b]), kind="stable"))
        return novel


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


#: A cluster without a label contradiction is a flood only if its copies agree on one text
#: (:func:`consensus_agreement`) from its first this many rows of about the median length ...
FLOOD_SAMPLE = 64
#: ... each cut to this many characters of its normalised text (an edited copy's edits are
#: spread over the text, so its start shows them as well as the whole does).
FLOOD_CHARS = 500
#: Positions this close to a cut are not judged: a copy's insertions and deletions shift
#: where the cut falls.
_CUT_MARGIN = 16


def _alignment_votes(ref: str, texts: Sequence[str]) -> tuple[dict[int, Counter], dict[int, Counter]]:
    """Where each text departs from ``ref``, as ``(at, before)``: position -> counts of variants.

    ``at[p]`` counts ``(start, s)``: the block of ``ref`` starting at ``start`` that covers ``p``
    is replaced by ``s`` ("" for a deletion); ``before[p]`` counts the strings inserted before
    ``ref[p]`` (``p`` up to ``len(ref)``). A text missing from a position's counts holds ``ref``
    there. difflib places a deletion or insertion inside a run of one repeated character
    anywhere in the run; it is moved to the run's start, so that copies which all drop one "n"
    of "nn" vote alike.
    """
    at: dict[int, Counter] = {}
    before: dict[int, Counter] = {}
    sm = difflib.SequenceMatcher(None, autojunk=False)
    for t in texts:
        # only what lies between the common start and end is aligned (difflib's time grows with
        # the square of the lengths it aligns)
        head = len(os.path.commonprefix([t, ref]))
        tail = len(os.path.commonprefix([t[head:][::-1], ref[head:][::-1]]))
        sm.set_seqs(t[head: len(t) - tail], ref[head: len(ref) - tail])
        changed: dict[int, tuple[int, str]] = {}
        added: dict[int, str] = {}
        for tag, i1, i2, j1, j2 in sm.get_opcodes():
            if tag == "equal":
                continue
            i1, i2, j1, j2 = i1 + head, i2 + head, j1 + head, j2 + head
            v = t[i1:i2]  # "" when t lacks ref[j1:j2] (tag "insert")
            if tag == "delete":  # t holds v before ref[j1]
                while j1 > 0 and ref[j1 - 1] == v[-1] and j1 - 1 not in changed and j1 - 1 not in added:
                    v, j1 = ref[j1 - 1] + v[:-1], j1 - 1
                added[j1] = added.get(j1, "") + v
                continue
            if tag == "insert":
                while j1 > 0 and ref[j1 - 1] == ref[j2 - 1] and j1 - 1 not in changed and j1 - 1 not in added:
                    j1, j2 = j1 - 1, j2 - 1
            for p in range(j1, j2):
                changed[p] = (j1, v)
        for p, h in changed.items():
            at.setdefault(p, Counter())[h] += 1
        for p, v in added.items():
            before.setdefault(p, Counter())[v] += 1
    return at, before


def _majority(departures: Counter | None, k: int, kept: Any) -> tuple[Any, int]:
    """The variant most of ``k`` texts hold at a position, and how many hold it; ``kept``
    stands for the texts that do not depart from the reference there."""
    if not departures:
        return kept, k
    v, n = departures.most_common(1)[0]
    stay = k - sum(departures.values())
    return (kept, stay) if stay >= n else (v, n)


def consensus_agreement(texts: Sequence[str]) -> float:
    """How far near-copies agree on one text: the least share of ``texts`` that hold the most
    common variant at any position of their consensus text, in (0, 1].

    The normalised texts (``normalize_text``, cut to :data:`FLOOD_CHARS` characters) are
    aligned character by character (difflib) to the one whose character 3-grams are closest
    to the 3-grams at least half of them share; the variant most texts hold at each position
    (the character, another string in its place, an insertion before it) makes the consensus
    text, and the texts are aligned to that once more.

    Copies of one text with a few edits each, anywhere, agree at every position: an edit
    touches a position in few copies (0.758 and more for 50-200 copies with 1-3 letter edits
    of texts of two words and 12 characters or more, measured on Wikipedia, Alpaca, TweetEval,
    GoEmotions and a FLAN-style templated corpus; a text of 36 repeated "@user" mentions, whose
    edits align with any repeat, 0.5). Rows that fill one frame with their own content ("<name> is a surname. Notable
    people with this surname include:", "The list of shipwrecks in <month> <year> includes
    ...") disagree where each fills it in (0.531 at most over the clean corpora's clusters).
    See docs/benchmarks.md, "Floods in unlabelled data".
    """
    from shardguard.detectors.near_duplicates import normalize_texts

    norm = normalize_texts(list(texts))
    k = len(norm)
    if k < 2:
        return 1.0
    cut = any(len(t) > FLOOD_CHARS for t in norm)
    norm = [t[:FLOOD_CHARS] for t in norm]
    grams = [{t[i: i + 3] for i in range(max(1, len(t) - 2))} for t in norm]
    shared_by = Counter(g for s in grams for g in s)
    consensus = {g for g, c in shared_by.items() if 2 * c >= k}
    ref = norm[min(range(k), key=lambda i: len(grams[i] ^ consensus))]
    at, before = _alignment_votes(ref, norm)
    # the consensus text: each position's majority variant, a replaced block written once
    parts: list[str] = []
    for p, c in enumerate(ref):
        parts.append(_majority(before.get(p), k, "")[0])
        v = _majority(at.get(p), k, c)[0]
        if isinstance(v, str):
            parts.append(v)
        elif p == v[0] or _majority(at.get(p - 1), k, ref[p - 1])[0] != v:
            parts.append(v[1])
    parts.append(_majority(before.get(len(ref)), k, "")[0])
    ref = "".join(parts)
    at, before = _alignment_votes(ref, norm)
    judged = len(ref) - _CUT_MARGIN if cut else len(ref) + 1
    least = min((_majority(c, k, None)[1] for p, c in (*at.items(), *before.items()) if p < judged), default=k)
    return least / k


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
                new = np.zeros(cap, old.dtype)
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
                labels: Any) -> tuple[Added, np.ndarray, StatementFeatures]:
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

    Returns ``(added, contradicts, features)``: the index's answer, bool ``(n,)``, and
    every text's :class:`StatementFeatures`. Shared by scan and Guard.
    """
    n = len(texts)
    norm, cps, lens = normalized(texts)
    feats = StatementFeatures.of_normalized(norm, cps, lens)
    lab = label_hashes(labels, n)
    judge = lab != 0
    new_word = kept.seen.see(norm) if judge.any() else np.zeros(n, bool)
    first = index.n_docs

    def says_same(q: np.ndarray, seq: np.ndarray) -> np.ndarray:
        inside = seq >= first  # an earlier text of this very call
        if inside.all():
            other = feats.take(seq - first)
        elif not inside.any():
            other = kept.lookup(seq)
        else:
            a, b = np.flatnonzero(inside), np.flatnonzero(~inside)
            other = StatementFeatures.concat([feats.take(seq[a] - first), kept.lookup(seq[b])])
            other = other.take(np.argsort(np.concatenate([a, b])))
        return same_statement(feats.take(q), other, new_word[q])

    added = index.add_judged(texts, judge if judge.any() else None, says_same)
    new = np.flatnonzero(added.new_root | added.statement)
    kept.add(first + new, feats.take(new), lab[new])
    contradicts = np.zeros(n, bool)
    repeats = np.flatnonzero(added.said >= 0)
    if repeats.size:
        contradicts[repeats] = kept.label_of(added.said[repeats]) != lab[repeats]
    return added, contradicts, feats


def _reservoir_keys(random_state: int, seqs: np.ndarray) -> np.ndarray:
    """(n,) uint64 pseudo-random keys of the rows with global sequence numbers ``seqs``:
    splitmix64 of (seq, random_state). A row's key depends on nothing else, so any split of
    the stream draws the same key for it."""
    with np.errstate(over="ignore"):
        z = seqs.astype(np.uint64) + np.uint64((random_state * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class ReservoirSample:
    """Uniform fixed-size sample of a stream by random keys (bottom-k), seeded, mergeable.

    Every row gets a key from its global sequence number and ``random_state``
    (:func:`_reservoir_keys`); the sample is the ``size`` rows with the smallest
    keys, returned in scan order. Because a row's key does not depend on which
    worker saw it, :meth:`merge` of the samples of disjoint parts of the stream is
    exactly the sample of their union (in any order): the scan's statistics map runs
    per shard and the partial samples reduce into the one a single pass keeps.

    Holds at most ``2 * size`` rows of embeddings (float32, ``(rows, dim)``),
    labels and, with ``keep_text``, texts (for detectors that read the text) and
    responses; it cuts back to ``size`` when it reaches that.
    """

    def __init__(self, size: int, random_state: int = 0, keep_text: bool = False):
        self.size = size
        self.random_state = random_state
        self.keep_text = keep_text
        self.seen = 0
        self._parts: list[dict[str, Any]] = []
        self._held = 0
        #: the largest key kept once ``size`` rows are held: a larger key can never enter
        self._bound: np.uint64 | None = None

    def add(self, X: np.ndarray, y: np.ndarray, texts: np.ndarray | None = None,
            seqs: np.ndarray | None = None, responses: np.ndarray | None = None) -> None:
        """Offer one batch: ``X`` (n, dim), ``y`` (n,), ``texts`` (n,) when kept, ``seqs`` (n,)
        the rows' global sequence numbers (default: their position in the stream) and
        ``responses`` (n,) (kept with the texts when given)."""
        n = X.shape[0]
        if n == 0:
            return
        seqs = self.seen + np.arange(n, dtype=np.int64) if seqs is None else np.asarray(seqs, dtype=np.int64)
        self.seen += n
        keys = _reservoir_keys(self.random_state, seqs)
        take = np.flatnonzero(keys <= self._bound) if self._bound is not None else np.arange(n)
        if take.size == 0:
            return
        part: dict[str, Any] = {"key": keys[take], "seq": seqs[take],
                                "X": np.asarray(X[take], dtype=np.float32), "y": np.asarray(y, dtype=object)[take]}
        if self.keep_text:
            part["texts"] = np.asarray(texts, dtype=object)[take]
            if responses is not None:
                part["responses"] = np.asarray(responses, dtype=object)[take]
        self._append(part)

    def _append(self, part: dict[str, Any]) -> None:
        self._parts.append(part)
        self._held += part["key"].size
        if self._held >= 2 * self.size:
            self._cut()

    def _cut(self) -> None:
        """Keep the ``size`` smallest keys (ties, impossible in practice, by sequence number)."""
        if len(self._parts) == 0:
            return
        names = set(self._parts[0])
        for p in self._parts[1:]:
            names &= set(p)
        cat = {k: np.concatenate([p[k] for p in self._parts]) for k in names}
        order = np.lexsort((cat["seq"], cat["key"]))[: self.size]
        order.sort()  # keeps the arrival order: cheap for the next cut, and no meaning attached
        self._parts = [{k: v[order] for k, v in cat.items()}]
        self._held = order.size
        if order.size >= self.size:
            self._bound = cat["key"][order].max()

    def merge(self, other: "ReservoirSample") -> "ReservoirSample":
        """Add the sample of a disjoint part of the stream (same ``size`` and ``random_state``):
        the result is the sample of both parts."""
        if other.size != self.size or other.random_state != self.random_state:
            raise ValueError("cannot merge reservoirs of different sizes or seeds")
        self.seen += other.seen
        for p in other._parts:
            self._append(dict(p))
        return self

    def _final(self) -> dict[str, np.ndarray] | None:
        self._cut()
        if not self._parts:
            return None
        part = self._parts[0]
        order = np.argsort(part["seq"], kind="stable")  # scan order: the same for any split
        self._parts = [{k: v[order] for k, v in part.items()}]
        return self._parts[0]

    def sample_responses(self) -> np.ndarray | None:
        """(k,) the responses of the rows :meth:`sample` returns, or None when none were given."""
        part = self._final()
        return None if part is None or "responses" not in part else part["responses"]

    def sample_seqs(self) -> np.ndarray:
        """(k,) int64: the global sequence number of each row :meth:`sample` returns."""
        part = self._final()
        return np.zeros(0, np.int64) if part is None else part["seq"].copy()

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(X, y, texts) of the rows kept, in scan order; texts is None unless ``keep_text``."""
        part = self._final()
        if part is None:
            return np.zeros((0, 0), np.float32), np.zeros(0, dtype=object), None
        return part["X"], part["y"], part.get("texts") if self.keep_text else None


def text_kwargs(detector: Any, texts: np.ndarray | None, responses: np.ndarray | None = None) -> dict[str, Any]:
    """``{"texts": texts}`` for detectors that declare ``needs_text = True``, else nothing; with
    ``responses`` (``input.response_column``), also ``{"responses": responses}`` for detectors
    that declare ``reads_responses = True``."""
    if not getattr(detector, "needs_text", False):
        return {}
    if responses is not None and getattr(detector, "reads_responses", False):
        return {"texts": texts, "responses": responses}
    return {"texts": texts}


class DuplicateClusters:
    """Near-duplicate bookkeeping over a run, in scan order.

    ``roots`` are global sequence numbers (over valid rows, in scan order) of
    first occurrences that something duplicates; members point at them.
    Memory grows with the number of copies, not with the data: 57 bytes a copy with
    statement features and sequence numbers, in numpy arrays (no Python object per copy or
    per cluster while a scan streams; label strings are kept once each, as small integer
    codes).

    After pass 1b, :meth:`resolve` is given the roots' labels and fixes each
    cluster's reference label (its first occurrence's) and majority label (the
    label most of its rows carry; ties go to the reference, then to the
    smallest label as a string), and whether it is a flood, which
    :func:`duplicate_flags` turns into verdicts through :meth:`table`.

    A flood is a cluster whose core -- its rows of about the cluster's median length
    (length ratio >= :data:`MIN_LENGTH_RATIO`, at most :data:`MAX_WORD_DIFF` words apart)
    -- holds more than ``flood_size`` rows, and that is poison-like: its rows carry two
    labels or more (a contradiction), or -- under one label or none -- its core is copies of
    one text edited to evade exact deduplication: mostly distinct texts rather than verbatim
    repeats, that agree on one text (:func:`consensus_agreement` of the core's first
    :data:`FLOOD_SAMPLE` rows at least ``flood_agreement``). Not floods: a reply or a heading
    repeated verbatim ("Sorry, I'll call later" sent 37 times, "History." heading 2,793
    Wikipedia paragraphs), rows that fill one frame with their own content ("<name> is a
    surname. ...", "<text> @ Los Angeles, California"), a phrase-level dataset's overlapping
    sub-phrases of different lengths. Without statement features (``record`` without
    ``features``) every row is core and distinct; without the rows' texts (``resolve``
    without ``texts``) the agreement is not measured.
    """

    def __init__(self, flood_size: int, flood_agreement: float = 0.65) -> None:
        self.flood_size = flood_size
        self.flood_agreement = flood_agreement
        self._seqs: list[np.ndarray | None] = []  # sequence number of every copy, when given
        self._shard_chunks: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self._roots: list[np.ndarray] = []  # root of every copy, a chunk per batch
        self._codes: list[np.ndarray] = []  # label code of every copy
        self._feats: list[StatementFeatures | None] = []  # the copies' length, words, text hash
        self._code_of: dict[Any, int] = {}  # label -> code
        self._table: ClusterTable | None = None

    def _encode(self, labels: list[Any]) -> np.ndarray:
        return np.array([self._code_of.setdefault(lab, len(self._code_of)) for lab in labels], dtype=np.int32)

    def record(self, shard: str, rows: np.ndarray, root: np.ndarray, sim: np.ndarray,
               labels: np.ndarray | None = None, contradicts: np.ndarray | None = None,
               features: StatementFeatures | None = None, seqs: np.ndarray | None = None) -> None:
        """Keep the copies among ``rows`` (root >= 0) of one shard, with their labels.

        All arrays ``(n,)``: ``rows`` (row numbers in the shard), ``root`` (sequence
        number of the first occurrence, -1 for none), ``sim``, ``labels`` (object),
        ``contradicts`` (bool: the row contradicts the label of an earlier row that says
        the same thing, see :func:`index_texts`; None: not judged, the copy is judged by
        its first occurrence's label); ``features``: every row's :class:`StatementFeatures`
        (for floods; 20 bytes a copy are kept); ``seqs``: every row's sequence number (8
        bytes a copy), with which :meth:`resolve` fetches a flood's texts.
        """
        dup = np.flatnonzero(np.asarray(root) >= 0)
        if not dup.size:
            return
        self._table = None
        ro = np.asarray(root, dtype=np.int64)[dup]
        self._shard_chunks.setdefault(shard, []).append(
            (np.asarray(rows, dtype=np.int64)[dup], ro, np.asarray(sim, dtype=np.float32)[dup],
             None if contradicts is None else np.asarray(contradicts, bool)[dup])
        )
        self._roots.append(ro)
        self._seqs.append(None if seqs is None else np.asarray(seqs, dtype=np.int64)[dup])
        self._feats.append(None if features is None else StatementFeatures(
            features.length[dup], features.words[dup], np.zeros(0, np.int16), features.h_full[dup],
            np.zeros(0, np.uint64), np.zeros(0, np.uint64)))
        if labels is None:
            self._codes.append(np.full(dup.size, self._encode([None])[0], dtype=np.int32))
        else:
            codes, keys = label_groups(as_labels(np.asarray(labels, dtype=object)[dup], dup.size))
            self._codes.append(self._encode(keys)[codes])

    def members(self, shard: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """``(rows, root, sim, contradicts)`` of one shard's copies, sorted by row
        (``contradicts`` None where :meth:`record` was given none)."""
        chunks = self._shard_chunks.get(shard)
        if not chunks:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, bool)
        rows, root, sim = (np.concatenate(c) for c in list(zip(*chunks))[:3])
        judged = [c[3] for c in chunks]
        contradicts = None if any(j is None for j in judged) else np.concatenate(judged)
        order = np.argsort(rows, kind="stable")
        return rows[order], root[order], sim[order], None if contradicts is None else contradicts[order]

    def all_roots(self) -> np.ndarray:
        """Sorted roots of every cluster so far (int64)."""
        return np.unique(np.concatenate(self._roots)) if self._roots else np.zeros(0, np.int64)

    def resolve(self, root_labels: Mapping[int, Any], root_features: "RootFeatures | None" = None,
                texts: Callable[[np.ndarray], Sequence[str]] | None = None) -> None:
        """Fix every cluster's size, reference and majority label from its root's label, and
        whether it is a flood (with ``root_features``: from its rows' lengths and texts).

        ``texts`` returns the texts of the rows with the given sequence numbers (sorted
        int64), in that order; it is asked once, for at most :data:`FLOOD_SAMPLE` rows of each
        cluster whose agreement decides whether it is a flood (the copies' ``seqs`` must have
        been recorded).
        """
        if not self._roots:
            self._table = ClusterTable(np.zeros(0, np.int64), np.zeros(0, np.int64),
                                       np.zeros(0, dtype=object), np.zeros(0, dtype=object), np.zeros(0, bool),
                                       np.zeros(0))
            return
        roots, inv = np.unique(np.concatenate(self._roots), return_inverse=True)
        k = roots.size
        ref_codes = self._encode([root_labels.get(r) for r in roots.tolist()])
        labels = list(self._code_of)  # code -> label
        K = len(labels)
        # rows per (cluster, label) pair, the root's own row included
        key = np.concatenate([inv.ravel() * K + np.concatenate(self._codes), np.arange(k) * K + ref_codes])
        pairs, count = np.unique(key, return_counts=True)
        cluster, code = pairs // K, pairs % K
        best = np.zeros(k, np.int64)
        np.maximum.at(best, cluster, count)
        tied = count == best[cluster]
        # among tied labels: the reference's if it is one, else the smallest as a string
        rank = np.empty(K, np.int64)
        rank[sorted(range(K), key=lambda c: str(labels[c]))] = np.arange(K)
        prefer = np.where(code == ref_codes[cluster], -1, rank[code])
        cand = np.flatnonzero(tied)
        order = cand[np.lexsort((prefer[cand], cluster[cand]))]
        first = order[np.r_[True, cluster[order][1:] != cluster[order][:-1]]]
        majority_codes = np.empty(k, np.int64)
        majority_codes[cluster[first]] = code[first]
        label_arr = np.array(labels + [None], dtype=object)[:-1]
        inv = inv.ravel()
        flood, agreement = self._floods(roots, inv, ref_codes, K, root_features, texts)
        self._table = ClusterTable(roots, np.bincount(inv, minlength=k) + 1,
                                   label_arr[ref_codes], label_arr[majority_codes], flood, agreement)

    def _floods(self, roots: np.ndarray, inv: np.ndarray, ref_codes: np.ndarray, K: int,
                root_features: "RootFeatures | None",
                texts: Callable[[np.ndarray], Sequence[str]] | None) -> tuple[np.ndarray, np.ndarray]:
        """Which clusters are floods (see the class docstring), bool ``(k,)``, and the agreement
        of the clusters it was measured on (float64 ``(k,)``, NaN elsewhere)."""
        k = roots.size
        cl = np.concatenate([inv, np.arange(k)])  # every row's cluster: copies, then roots
        codes = np.concatenate([np.concatenate(self._codes), ref_codes])
        have = root_features is not None and all(f is not None for f in self._feats)
        if have:
            rf = root_features.lookup(roots)
            length = np.concatenate([f.length for f in self._feats] + [rf.length]).astype(np.int64)
            words = np.concatenate([f.words for f in self._feats] + [rf.words]).astype(np.int64)
            text = np.concatenate([f.h_full for f in self._feats] + [rf.h_full])
            order = np.lexsort((length, cl))
            starts = np.searchsorted(cl[order], np.arange(k))
            counts = np.bincount(cl, minlength=k)
            med_len = length[order][starts + counts // 2]
            order_w = np.lexsort((words, cl))
            med_words = words[order_w][starts + counts // 2]
            ml, mw = med_len[cl], med_words[cl]
            core = ((np.minimum(length, ml) / np.maximum(np.maximum(length, ml), 1) >= MIN_LENGTH_RATIO)
                    & (np.abs(words - mw) <= MAX_WORD_DIFF))
            n_core = np.bincount(cl, weights=core, minlength=k).astype(np.int64)
            distinct_pairs = np.unique(np.stack([cl[core].astype(np.uint64), text[core]]), axis=1)
            n_distinct = np.bincount(distinct_pairs[0].astype(np.int64), minlength=k)
        else:
            core = np.ones(cl.size, bool)
            n_core = n_distinct = np.bincount(cl, minlength=k)
        none_code = self._code_of.get(None, -1)
        pairs = np.unique(cl * K + codes)
        p_cluster, p_code = pairs // K, pairs % K
        labelled = p_code != none_code
        contradiction = np.bincount(p_cluster[labelled], minlength=k) >= 2
        flood = (n_core > self.flood_size) & (contradiction | (2 * n_distinct >= n_core))
        agreement = np.full(k, np.nan)
        # one label or none: edited variants are a flood only when they are copies of one text
        judge = flood & ~contradiction
        if texts is not None and self.flood_agreement > 0 and judge.any():
            if any(s is None for s in self._seqs):
                raise ValueError("DuplicateClusters.resolve(texts=...) needs the copies' seqs in record()")
            seq = np.concatenate([*self._seqs, roots])  # every row's sequence number: copies, then roots
            rows = np.flatnonzero(core & judge[cl])
            rows = rows[np.lexsort((seq[rows], cl[rows]))]  # by cluster, then scan order
            first = np.searchsorted(cl[rows], cl[rows], side="left")
            rows = rows[np.arange(rows.size) - first < FLOOD_SAMPLE]
            want = np.unique(seq[rows])
            fetched = np.empty(want.size, dtype=object)
            fetched[:] = list(texts(want))
            where = np.searchsorted(want, seq[rows])
            bounds = np.flatnonzero(np.r_[True, cl[rows][1:] != cl[rows][:-1], True])
            for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
                agreement[cl[rows[a]]] = consensus_agreement(fetched[where[a:b]].tolist())
            flood[judge] &= agreement[judge] >= self.flood_agreement
        return flood, agreement

    def table(self) -> "ClusterTable":
        """The clusters as sorted arrays, for vectorised lookups (after :meth:`resolve`)."""
        if self._table is None:
            raise RuntimeError("DuplicateClusters.table() before resolve()")
        return self._table


@dataclass
class ClusterTable:
    """Duplicate clusters as arrays of shape ``(k,)``, sorted by root sequence number."""

    roots: np.ndarray  # int64
    sizes: np.ndarray  # int64: rows in the cluster, root included
    reference: np.ndarray  # object: the root's label
    majority: np.ndarray  # object: the label most rows of the cluster carry
    flood: np.ndarray  # bool: a flood (see DuplicateClusters)
    agreement: np.ndarray | None = None  # float64: consensus_agreement where measured, else NaN

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(found, size, reference, majority, flood) for cluster keys (root sequence numbers);
        size 1, labels None and no flood where ``keys`` is no cluster's root (negative keys included)."""
        keys = np.asarray(keys, dtype=np.int64)
        n = keys.size
        size = np.ones(n, np.int64)
        ref = np.full(n, None, dtype=object)
        maj = np.full(n, None, dtype=object)
        found = np.zeros(n, bool)
        flood = np.zeros(n, bool)
        if self.roots.size and n:
            pos = np.minimum(np.searchsorted(self.roots, keys), self.roots.size - 1)
            found = self.roots[pos] == keys
            p = pos[found]
            size[found], ref[found], maj[found] = self.sizes[p], self.reference[p], self.majority[p]
            flood[found] = self.flood[p]
        return found, size, ref, maj, flood


def duplicate_flags(copies: str, is_member: np.ndarray, labels: np.ndarray, in_flood: np.ndarray,
                    reference: np.ndarray, majority: np.ndarray,
                    contradicts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``near_duplicate`` and ``duplicate_flood`` flags, bool arrays of shape ``(n,)``.

    Inputs, all ``(n,)``: ``is_member`` (a later copy of an earlier row), each
    row's own ``labels``, and of the row's cluster (its own when it is a root,
    none when it is in none) whether it is a flood (``in_flood``, see
    :class:`DuplicateClusters`), the ``reference`` label (the first occurrence's)
    and the ``majority`` label; ``contradicts``: whether a row contradicts the label of an
    earlier row that says the same thing (:func:`index_texts`; when None, a copy is judged
    by the label of its first occurrence, ``reference``).

    * duplicate_flood: a row of a flood that carries the cluster's majority label
      (every row when unlabelled).
    * near_duplicate: a copy, when ``copies`` is ``"all"``; when ``"conflicting"``, a
      copy that contradicts (both labelled: an unlabelled row contradicts nothing),
      except a flood's rows outside its majority label; never when ``"none"``.

    So the genuine sentence an attacker copied under another label stays clean
    whether it comes before its flood in scan order or after it.
    """
    labels = np.asarray(labels, dtype=object)
    reference = np.asarray(reference, dtype=object)
    in_flood = np.asarray(in_flood, bool)
    with_majority = np.asarray(labels == majority, bool)
    flood = in_flood & with_majority
    if copies == "all":
        near = np.asarray(is_member, bool).copy()
    elif copies == "conflicting":
        if contradicts is None:
            both_labelled = np.asarray(labels != None, bool) & np.asarray(reference != None, bool)  # noqa: E711
            contradicts = both_labelled & np.asarray(labels != reference, bool)
        near = np.asarray(is_member, bool) & np.asarray(contradicts, bool) & ~(in_flood & ~with_majority)
    else:
        near = np.zeros(labels.size, bool)
    return near, flood


def reasons_column(flags: Mapping[str, np.ndarray], n: int) -> pa.ListArray:
    """Per-row list of reasons, in the order of ``flags``, built without a per-row Python loop."""
    names = list(flags)
    if not names:
        return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string()))
    mat = np.stack([np.asarray(flags[k], dtype=bool) for k in names], axis=1)  # (n, k)
    counts = mat.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    values = np.array(names, dtype=object)[np.nonzero(mat)[1]]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.tolist(), pa.string()))


@dataclass
class DuplicateVerdict:
    """Near-duplicate findings for the rows of one batch, each array of shape ``(n,)``."""

    is_member: np.ndarray  # bool: a later copy flagged near_duplicate (see duplicate_flags)
    score: np.ndarray  # float64: estimated Jaccard to the root for every copy, NaN elsewhere
    duplicate_of: np.ndarray  # object: the root's id for every copy (flagged or not), None elsewhere
    flood: np.ndarray  # bool: flagged duplicate_flood (see duplicate_flags)
    duplicate_of_shard: np.ndarray | None = None  # object: the root's shard, None elsewhere / unknown
    duplicate_of_row: np.ndarray | None = None  # object: the root's row in its shard


def verdict_table(
    batch: pa.RecordBatch | pa.Table,
    valid: np.ndarray,
    duplicates: DuplicateVerdict | None,
    detector_scores: Mapping[str, np.ndarray],
    thresholds: Mapping[str, float],
    columns: list[str],
    allowed: np.ndarray | None = None,
    text_chars: int = 200,
) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Turn one batch's findings into every row's verdict, and the flags by reason.

    ``batch`` has ``id``, ``row``, ``label`` and ``detail`` columns, and ``text``
    where known; ``valid`` is a bool mask of shape ``(n,)``; ``detector_scores``
    holds float64 scores of shape ``(n,)`` (NaN for rows not scored); a row is
    flagged by a detector when its score is above that detector's threshold.
    ``allowed`` (bool ``(n,)``) marks ids a person confirmed clean: a valid flagged
    row among them is ``allowed``, not quarantined. The table has the quarantine
    list's columns (``text`` cut at ``text_chars`` characters) plus ``status``
    (clean, quarantined, invalid or allowed); the flags by reason leave allowed rows out.
    """
    n = batch.num_rows
    flags: dict[str, np.ndarray] = {INVALID: ~valid}
    scores: dict[str, np.ndarray] = {}
    dup_of = np.full(n, None, dtype=object)
    of_shard = np.full(n, None, dtype=object)
    of_row = np.full(n, None, dtype=object)
    if duplicates is not None:
        flags[NEAR_DUPLICATE] = duplicates.is_member & valid
        flags[DUPLICATE_FLOOD] = duplicates.flood & valid
        dup_of = np.where(valid, duplicates.duplicate_of, None)
        if duplicates.duplicate_of_shard is not None:
            of_shard = np.where(valid, duplicates.duplicate_of_shard, None)
            of_row = np.where(valid, duplicates.duplicate_of_row, None)
        scores[f"{NEAR_DUPLICATE}_score"] = duplicates.score
    for name, s in detector_scores.items():
        scores[f"{name}_score"] = s
        with np.errstate(invalid="ignore"):
            flags[name] = valid & (s > thresholds[name])
    flagged = np.zeros(n, bool)
    for f in flags.values():
        flagged |= f
    is_allowed = flagged & valid & (np.zeros(n, bool) if allowed is None else np.asarray(allowed, bool))
    if is_allowed.any():
        flags = {k: f & ~is_allowed for k, f in flags.items()}
    status = np.where(~valid, "invalid", np.where(is_allowed, "allowed", np.where(flagged, "quarantined", "clean")))
    if "text" in batch.column_names and text_chars > 0:
        text = pc.utf8_slice_codeunits(batch.column("text"), 0, text_chars)
    else:
        text = pa.nulls(n, pa.string())
    table = pa.table(
        {
            "id": batch.column("id"),
            "row": batch.column("row"),
            "status": pa.array(status.tolist(), pa.string()),
            "reasons": reasons_column(flags, n),
            "duplicate_of": pa.array(dup_of.tolist(), pa.string()),
            "duplicate_of_shard": pa.array(of_shard.tolist(), pa.string()),
            "duplicate_of_row": pa.array(of_row.tolist(), pa.int64()),
            "label": batch.column("label"),
            "detail": batch.column("detail"),
            "text": text,
            **{c: pa.array(scores.get(c, np.full(n, np.nan)), pa.float64(), from_pandas=True) for c in columns},
        }
    )
    return table, flags
