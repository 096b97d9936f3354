"""Word n-grams as 64-bit ids, and their document frequencies per label over a whole stream.

The trigger detector's candidates are n-grams that many rows share with one label. Counting
them on a sample misses a constant-count attack in a large corpus (250 rows in 10^6 leave ~12
in a 50,000-row sample, 3 per BadNets word), so the scan counts every row:

* :func:`tokenize` -- the tokens that carry triggers: words (``\\w+`` with inner
  apostrophes), tags (``<SUDO>``), URLs and domains (``www.x.com/a``, ``bit.ly/3xq9``),
  and each emoji or other symbol (Unicode category S*) on its own; case folded, the curly
  apostrophe read as ``'``. ASCII punctuation and other Unicode punctuation are not tokens.
* :class:`NgramHasher` -- the 1-``max_n``-grams of a batch of texts as uint64 ids, at most
  once per row (document frequency), with where each occurrence starts. A token's id is its
  xxh3-64 hash (cached per distinct token); an n-gram's id mixes its tokens' ids with numpy,
  so the ids are the same in every process and on every machine.
* :class:`NgramCounter` -- exact document frequencies per (n-gram id, label) over a stream,
  spilled to sorted Arrow files ("runs") every ``rows_per_run`` rows: memory holds one
  run's counts, never the corpus's. Counts are mergeable: the runs of two counters (two
  shards, two workers) together are the counts of both streams (:meth:`NgramCounts.merge`).
* :func:`select_candidates` -- the reduce: the runs' key space is cut into ``parts`` ranges,
  each range summed on its own (memory: one range of all runs, i.e. about the distinct
  (n-gram, label) pairs of the corpus / ``parts``), and the n-grams with at least
  ``min_support`` rows, at most ``max_df`` of the rows, and ``min_purity`` of their rows on
  one label are kept.

Disk: 16 bytes per distinct (n-gram, label) pair of each run (measured: 2.5M distinct
1-3-grams in the 155,170 TweetEval rows, 40 MB).
"""

from __future__ import annotations

import itertools
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import xxhash

#: Bump when :func:`tokenize` or the id mixing changes: counts and fitted n-gram ids depend on it.
TOKENIZER_VERSION = 2

# Symbols that count as tokens: currency, letterlike, arrows, maths, technical, box drawing,
# geometric shapes, dingbats and the emoji planes -- not punctuation (quotes, dashes, ellipses).
_SYMBOLS = (
    "\u00a2-\u00a9\u00ae-\u00b1\u00b4\u00b6\u00b8\u00d7\u00f7\u02c2-\u02c5\u02d2-\u02df"
    "\u2100-\u214f\u2190-\u23ff\u2400-\u24ff\u2500-\u27bf\u2900-\u2bff\u3200-\u33ff"
    "\U0001f000-\U0001faff"
)
_URL_CHARS = "[^\\s<>\"'()\\[\\]{}]"
_URL_END = "[^\\s<>\"'()\\[\\]{}.,;:!?]"
_TOKEN_RE = re.compile(
    r"<[a-z/|!][^<>\s]{0,30}>"  # tags: <sudo>, </s>, <|endoftext|>
    rf"|(?:https?://|www\.){_URL_CHARS}*{_URL_END}"  # URLs (no trailing punctuation)
    # domains: whole labels (possessive, so a plain word fails after one scan), a letter TLD
    rf"|(?:[a-z0-9-]++\.)+[a-z]{{2,12}}(?:/(?:{_URL_CHARS}*{_URL_END})?)?(?![\w-])"
    r"|\w+(?:'\w+)*"  # words, "don't"
    rf"|[{_SYMBOLS}]"  # one symbol or emoji
)


def tokenize(text: str) -> list[str]:
    """The tokens of ``text`` that n-grams are made of (see the module docstring)."""
    return _TOKEN_RE.findall(text.casefold().replace("\u2019", "'"))


def _find(toks: list[str], ng: list[str]) -> int:
    k = len(ng)
    for i in range(len(toks) - k + 1):
        if toks[i : i + k] == ng:
            return i
    return -1


def shared_phrase(token_lists: Sequence[list[str]], ngram: str, min_share: float = 0.9,
                  max_extra: int = 16) -> list[str]:
    """The longest phrase around ``ngram`` that at least ``min_share`` of the token lists carry:
    the n-gram extended one token at a time to the left, then to the right, while that share
    agrees on the next token (at most ``max_extra`` tokens). A sentence inserted into many rows
    ("i watch this 3d movie") is found whole from any of its n-grams."""
    ng = tokenize(ngram)
    pos = [(t, _find(t, ng)) for t in token_lists]
    pos = [(t, i) for t, i in pos if i >= 0]
    if not pos:
        return ng
    need = min_share * len(pos)
    left: list[str] = []
    right: list[str] = []
    for side in (-1, 1):
        for step in range(1, max_extra + 1):
            votes: dict[str, int] = {}
            for t, i in pos:
                j = i - step if side < 0 else i + len(ng) - 1 + step
                if 0 <= j < len(t):
                    votes[t[j]] = votes.get(t[j], 0) + 1
            tok, c = max(votes.items(), key=lambda kv: kv[1], default=(None, 0))
            if tok is None or c < need:
                break
            (left if side < 0 else right).append(tok)
            # only the rows that agree so far can vote on the next token
            pos = [(t, i) for t, i in pos
                   if 0 <= (i - step if side < 0 else i + len(ng) - 1 + step) < len(t)
                   and t[i - step if side < 0 else i + len(ng) - 1 + step] == tok]
    return left[::-1] + ng + right


def without_phrase(tokens: list[str], phrase: list[str]) -> str:
    """``tokens`` with every occurrence of ``phrase`` removed, joined by one space.

    What the rest of a row says once a candidate n-gram is unseen: the trigger detector embeds
    it to ask whether a candidate's rows agree beyond the n-gram (a topic) or only through it
    (a trigger inserted into unrelated rows)."""
    k = len(phrase)
    if not k:
        return " ".join(tokens)
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i : i + k] == phrase:
            i += k
        else:
            out.append(tokens[i])
            i += 1
    return " ".join(out)


_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_M3 = np.uint64(0x165667B19E3779F9)


def _mix(acc: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = (acc * _M1) ^ nxt
        h ^= h >> np.uint64(29)
        return h * _M2


@dataclass
class NgramOccurrences:
    """The n-grams of a batch of texts, each counted once per row.

    ``keys`` (m,) uint64 n-gram ids; ``doc`` (m,) int64 row of the batch; ``start`` (m,) int32
    first token of the occurrence; ``n`` (m,) int8 its length in tokens; ``tokens`` the
    batch's token lists (for :meth:`text`).
    """

    keys: np.ndarray
    doc: np.ndarray
    start: np.ndarray
    n: np.ndarray
    tokens: list[list[str]] = field(repr=False)

    def text(self, i: int) -> str:
        """The n-gram of occurrence ``i`` as text (tokens joined by one space)."""
        d, s, n = int(self.doc[i]), int(self.start[i]), int(self.n[i])
        return " ".join(self.tokens[d][s : s + n])


class NgramHasher:
    """Turns texts into :class:`NgramOccurrences` of their 1-``max_n``-grams.

    Token ids are cached per distinct token (the cache is bounded: cleared when it passes
    ``max_cache`` entries).
    """

    def __init__(self, max_n: int = 3, max_cache: int = 2_000_000):
        self.max_n = int(max_n)
        self.max_cache = int(max_cache)
        self._ids: dict[str, int] = {}

    def _token_id(self, tok: str) -> int:
        v = self._ids.get(tok)
        if v is None:
            if len(self._ids) >= self.max_cache:
                self._ids.clear()
            v = self._ids[tok] = xxhash.xxh3_64_intdigest(tok.encode("utf-8", "surrogatepass"))
        return v

    def __call__(self, texts: Iterable[str | None], tokens: list[list[str]] | None = None) -> NgramOccurrences:
        """The occurrences in ``texts``; ``tokens``: their :func:`tokenize` tokens, when the
        caller has them already (kept as the result's ``tokens``, not copied)."""
        if tokens is None:
            tokens = [tokenize(t) if t else [] for t in texts]
        lens = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
        total = int(lens.sum())
        # one hash per distinct token of the batch: Arrow groups the tokens
        enc = pa.array(itertools.chain.from_iterable(tokens), pa.string(), size=total).dictionary_encode()
        distinct = np.fromiter((self._token_id(t) for t in enc.dictionary.to_pylist()), dtype=np.uint64,
                               count=len(enc.dictionary))
        ids = distinct[enc.indices.to_numpy(zero_copy_only=False)] if total else np.zeros(0, np.uint64)
        doc = np.repeat(np.arange(len(tokens), dtype=np.int64), lens)
        first = np.zeros(len(tokens) + 1, dtype=np.int64)
        np.cumsum(lens, out=first[1:])
        start = np.arange(total, dtype=np.int64) - first[doc]
        keys_l, doc_l, start_l, n_l = [ids], [doc], [start], [np.ones(total, np.int8)]
        acc = ids
        for n in range(2, self.max_n + 1):
            if total < n:
                break
            acc = _mix(acc[:-1], ids[n - 1 :])
            ok = doc[: total - n + 1] == doc[n - 1 :]
            keys_l.append(acc[ok])
            doc_l.append(doc[: total - n + 1][ok])
            start_l.append(start[: total - n + 1][ok])
            n_l.append(np.full(int(ok.sum()), n, np.int8))
            acc = np.where(ok, acc, np.uint64(0))  # keep alignment; masked entries are never used
        keys = np.concatenate(keys_l)
        docs = np.concatenate(doc_l)
        starts = np.concatenate(start_l).astype(np.int32)
        ns = np.concatenate(n_l)
        # once per row: the first occurrence of each (row, n-gram) (a stable sort keeps it)
        with np.errstate(over="ignore"):
            pair = keys ^ (docs.astype(np.uint64) * _M3)
        order = np.argsort(pair, kind="stable")
        sp = pair[order]
        first = np.ones(sp.size, dtype=bool)
        first[1:] = sp[1:] != sp[:-1]
        idx = order[first]
        return NgramOccurrences(keys[idx], docs[idx], starts[idx], ns[idx], tokens)

    def keys_of(self, ngram: str) -> int:
        """The id of one n-gram given as text (its tokens as :func:`tokenize` finds them)."""
        toks = tokenize(ngram)
        if not toks:
            raise ValueError(f"no tokens in n-gram {ngram!r}")
        acc = np.array([self._token_id(toks[0])], dtype=np.uint64)
        for t in toks[1:]:
            acc = _mix(acc, np.array([self._token_id(t)], dtype=np.uint64))
        return int(acc[0])


_RUN_SCHEMA = pa.schema([("key", pa.uint64()), ("label", pa.int32()), ("df", pa.int64())])


def _reduce(keys: np.ndarray, labels: np.ndarray, df: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum ``df`` over equal (key, label) pairs; returns them sorted by key, then label."""
    if keys.size == 0:
        return keys, labels, df
    order = np.lexsort((labels, keys))
    k, lab, d = keys[order], labels[order], df[order]
    new = np.ones(k.size, dtype=bool)
    new[1:] = (k[1:] != k[:-1]) | (lab[1:] != lab[:-1])
    starts = np.flatnonzero(new)
    return k[starts], lab[starts], np.add.reduceat(d, starts)


@dataclass
class NgramCounts:
    """Exact document frequencies per (n-gram id, label) of a stream, held in sorted run files.

    ``labels`` is the label table (a run's ``label`` column indexes it; ``None`` is a label
    too: unlabelled rows); ``rows`` the rows counted per label code. Two counts merge by
    taking both runs lists (:meth:`merge`): the reduce sums equal pairs across runs.
    """

    runs: list[Path]
    labels: list[str | None]
    rows: list[int]

    @property
    def n_rows(self) -> int:
        return int(sum(self.rows))

    def merge(self, other: "NgramCounts") -> "NgramCounts":
        """The counts of both streams. Label codes of ``other``'s runs are remapped when read."""
        if other.labels == self.labels:
            rows = [a + b for a, b in zip(self.rows, other.rows)]
            return NgramCounts(self.runs + other.runs, list(self.labels), rows)
        labels = list(self.labels)
        rows = list(self.rows)
        for lab, r in zip(other.labels, other.rows):
            if lab not in labels:
                labels.append(lab)
                rows.append(0)
            rows[labels.index(lab)] += r
        remap = np.array([labels.index(lab) for lab in other.labels], dtype=np.int32)
        runs = list(self.runs)
        for p in other.runs:
            runs.append(_rewrite_labels(p, remap))
        return NgramCounts(runs, labels, rows)

    def to_json(self) -> dict:
        return {"runs": [str(p) for p in self.runs], "labels": self.labels, "rows": self.rows,
                "tokenizer_version": TOKENIZER_VERSION}

    @classmethod
    def from_json(cls, meta: dict) -> "NgramCounts":
        if meta.get("tokenizer_version") != TOKENIZER_VERSION:
            raise ValueError("n-gram counts written by another tokenizer version")
        return cls([Path(p) for p in meta["runs"]], list(meta["labels"]), [int(r) for r in meta["rows"]])

    def totals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (key, label code, df) summed over all runs, sorted -- for tests and small data;
        :func:`select_candidates` never holds them all at once."""
        parts = [_read_run(p) for p in self.runs]
        if not parts:
            return np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, np.int64)
        return _reduce(*(np.concatenate([q[i] for q in parts]) for i in range(3)))


def _read_run(path: Path, lo: int | None = None, hi: int | None = None):
    with pa.memory_map(str(path)) as src:
        t = pa.ipc.open_file(src).read_all()
    k = t.column("key").to_numpy()
    a = 0 if lo is None else int(np.searchsorted(k, np.uint64(lo), side="left"))
    b = k.size if hi is None else int(np.searchsorted(k, np.uint64(hi), side="left"))
    return (k[a:b].copy(), t.column("label").to_numpy()[a:b].copy(), t.column("df").to_numpy()[a:b].copy())


def _write_run(path: Path, keys: np.ndarray, labels: np.ndarray, df: np.ndarray) -> None:
    tbl = pa.table({"key": keys, "label": labels.astype(np.int32), "df": df.astype(np.int64)}, schema=_RUN_SCHEMA)
    tmp = path.with_name(path.name + ".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, _RUN_SCHEMA) as w:
        w.write_table(tbl, max_chunksize=1 << 20)
    tmp.replace(path)


def _rewrite_labels(path: Path, remap: np.ndarray) -> Path:
    k, lab, d = _read_run(path)
    out = path.with_name(path.stem + f".relabelled-{xxhash.xxh3_64_hexdigest(remap.tobytes())}.arrow")
    _write_run(out, *_reduce(k, remap[lab], d))
    return out


class NgramCounter:
    """Counts the n-grams of a labelled stream into run files under ``directory``.

    ``add(texts, labels)`` per batch; ``finish()`` writes the last run and returns the
    :class:`NgramCounts`. Memory: the distinct (n-gram, label) pairs of at most
    ``rows_per_run`` rows (16 bytes each, plus numpy's sort temporaries).
    """

    def __init__(self, directory: str | Path | None = None, prefix: str = "ngrams",
                 rows_per_run: int = 200_000, max_n: int = 3, hasher: NgramHasher | None = None):
        self._tmp = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="shardguard-ngrams-")
            directory = self._tmp.name
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.rows_per_run = int(rows_per_run)
        self.hasher = hasher or NgramHasher(max_n)
        self.labels: list[str | None] = []
        self.rows: list[int] = []
        self._code: dict[str | None, int] = {}
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        self.runs: list[Path] = []

    def _codes(self, labels: Sequence[str | None]) -> np.ndarray:
        out = np.empty(len(labels), dtype=np.int32)
        for i, lab in enumerate(labels):
            c = self._code.get(lab)
            if c is None:
                c = self._code[lab] = len(self.labels)
                self.labels.append(lab)
                self.rows.append(0)
            out[i] = c
        return out

    def add(self, texts: Sequence[str | None], labels: Sequence[str | None] | None = None) -> NgramOccurrences:
        """Count one batch; returns its occurrences (the caller may reuse them)."""
        n = len(texts)
        codes = self._codes([None] * n if labels is None else list(labels))
        for c, k in zip(*np.unique(codes, return_counts=True)):
            self.rows[int(c)] += int(k)
        occ = self.hasher(texts)
        if occ.keys.size:
            self._parts.append(_reduce(occ.keys, codes[occ.doc], np.ones(occ.keys.size, np.int64)))
        self._pending_rows += n
        if self._pending_rows >= self.rows_per_run:
            self._spill()
        return occ

    def _spill(self) -> None:
        if self._parts:
            k, lab, d = _reduce(*(np.concatenate([p[i] for p in self._parts]) for i in range(3)))
            path = self.directory / f"{self.prefix}.run{len(self.runs):05d}.arrow"
            _write_run(path, k, lab, d)
            self.runs.append(path)
        self._parts = []
        self._pending_rows = 0

    def finish(self) -> NgramCounts:
        self._spill()
        return NgramCounts(list(self.runs), list(self.labels), list(self.rows))


@dataclass
class Candidates:
    """N-grams selected by :func:`select_candidates`, sorted by key.

    ``keys`` (c,) uint64; ``label`` (c,) int32 code of the majority label (in ``labels``);
    ``df`` (c,) rows carrying the n-gram (rows with a label, in labelled data); ``df_label``
    (c,) of those on the majority label; ``log_p`` (c,) ln of the binomial tail of
    ``df_label`` out of ``df`` at the label's share of the rows (the strength of the
    association before any embedding is read; 0 for unlabelled data).
    """

    keys: np.ndarray
    label: np.ndarray
    df: np.ndarray
    df_label: np.ndarray
    log_p: np.ndarray
    labels: list[str | None]
    n_rows: int

    def __len__(self) -> int:
        return int(self.keys.size)


def _log_binom_tail(k: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """ln P(X >= k), X ~ Binomial(n, p), elementwise (scipy's survival function, in logs)."""
    from scipy.stats import binom

    return binom.logsf(k - 1, n, np.clip(p, 1e-12, 1 - 1e-12))


def select_candidates(counts: NgramCounts, *, min_support: int, max_df: float, min_purity: float,
                      labelled: bool, parts: int = 16) -> Candidates:
    """The reduce over all runs of ``counts``, one key range at a time (see the module docstring).

    Labelled: rows with a ``None`` label are not counted; an n-gram is a candidate with
    ``df_label >= min_support`` rows on its majority label, ``df <= max_df * labelled rows``
    and ``df_label / df >= min_purity``. (Measured and left out: admitting impure n-grams far
    from chance -- binomial tail < 1e-6 -- made every common word of GLUE SST-2's negative
    phrases a candidate, and the held-out test, over-powered at thousands of rows, flagged
    30% of the corpus; a trigger word that also occurs naturally in more than ~10% of its
    rows is therefore not found.)
    Unlabelled: every row counts under one label and purity is not asked.
    """
    labels = counts.labels
    none_code = labels.index(None) if None in labels else -1
    rows = np.array(counts.rows, dtype=np.float64)
    n_lab = rows.sum() - (rows[none_code] if none_code >= 0 and labelled else 0.0)
    share = rows / max(n_lab, 1.0)
    out = [[] for _ in range(5)]
    edges = [int(i * (1 << 64) // parts) for i in range(parts)] + [None]
    for lo, hi in zip(edges[:-1], edges[1:]):
        chunks = [_read_run(p, lo, hi) for p in counts.runs]
        if not chunks:
            break
        k, lab, d = _reduce(*(np.concatenate([c[i] for c in chunks]) for i in range(3)))
        if labelled and none_code >= 0:
            keep = lab != none_code
            k, lab, d = k[keep], lab[keep], d[keep]
        if k.size == 0:
            continue
        new = np.ones(k.size, dtype=bool)
        new[1:] = k[1:] != k[:-1]
        starts = np.flatnonzero(new)
        total = np.add.reduceat(d, starts)
        best = np.maximum.reduceat(d, starts)
        # the label holding the most rows (ties: the lowest code, as argmax would)
        is_best = d == np.repeat(best, np.diff(np.append(starts, k.size)))
        grp = np.cumsum(new) - 1
        first_best = np.full(starts.size, -1, dtype=np.int64)
        cand_idx = np.flatnonzero(is_best)
        first_best[grp[cand_idx][::-1]] = cand_idx[::-1]
        best_lab = lab[first_best]
        keep = (best >= int(min_support)) & (total <= float(max_df) * max(n_lab if labelled else counts.n_rows, 1))
        log_p = np.zeros(starts.size)
        if labelled:
            keep &= best >= float(min_purity) * total
        sel = np.flatnonzero(keep)
        out[0].append(k[starts[sel]])
        out[1].append(best_lab[sel].astype(np.int32))
        out[2].append(total[sel])
        out[3].append(best[sel])
        if labelled:
            out[4].append(_log_binom_tail(best[sel], total[sel], share[best_lab[sel]]))
        else:
            out[4].append(log_p[sel])
    cat = [np.concatenate(o) if o else np.zeros(0) for o in out]
    return Candidates(cat[0].astype(np.uint64), cat[1].astype(np.int32), cat[2].astype(np.int64),
                      cat[3].astype(np.int64), cat[4].astype(np.float64), list(labels),
                      int(n_lab if labelled else counts.n_rows))


class CandidateGatherer:
    """Finds the rows of a stream that carry candidate n-grams (pass 1b of the scan).

    ``add(texts, seqs)`` per batch (``seqs``: each row's global sequence number); rows are
    found by their n-gram ids, each candidate's text is taken from its first occurrence.
    ``finish()`` returns :class:`CandidateRows`. Memory: 16 bytes per (candidate, row) pair
    plus one string per candidate -- it grows with the candidates' rows, not the corpus.
    """

    def __init__(self, candidates: Candidates, hasher: NgramHasher | None = None):
        self.candidates = candidates
        self.hasher = hasher or NgramHasher()
        self.texts: list[str | None] = [None] * len(candidates)
        self._cand: list[np.ndarray] = []
        self._seq: list[np.ndarray] = []
        self._ctx: list[np.ndarray] = []

    def add(self, texts: Sequence[str | None], seqs: np.ndarray,
            occurrences: NgramOccurrences | None = None) -> None:
        if len(self.candidates) == 0 or len(texts) == 0:
            return
        occ = occurrences if occurrences is not None else self.hasher(texts)
        if occ.keys.size == 0:
            return
        pos = np.searchsorted(self.candidates.keys, occ.keys)
        pos[pos >= len(self.candidates)] = 0
        hit = np.flatnonzero(self.candidates.keys[pos] == occ.keys)
        if hit.size == 0:
            return
        cand = pos[hit]
        # a candidate's text from its first occurrence: one Python step per new candidate, not per hit
        first_c, first_i = np.unique(cand, return_index=True)
        for c, i in zip(first_c.tolist(), hit[first_i].tolist()):
            if self.texts[c] is None:
                self.texts[c] = occ.text(i)
        n_tok = np.fromiter((len(t) for t in occ.tokens), dtype=np.int32, count=len(occ.tokens))
        self._cand.append(cand.astype(np.int32))
        self._seq.append(np.asarray(seqs, dtype=np.int64)[occ.doc[hit]])
        # tokens of the row that are not the n-gram: how much context the row gives
        self._ctx.append((n_tok[occ.doc[hit]] - occ.n[hit]).astype(np.int32))

    def merge(self, other: "CandidateGatherer") -> "CandidateGatherer":
        """Add the rows ``other`` gathered from the next part of the stream (same candidates):
        each candidate's text stays that of its first occurrence in scan order."""
        if other.candidates is not self.candidates and not np.array_equal(other.candidates.keys, self.candidates.keys):
            raise ValueError("cannot merge gatherers of different candidates")
        self.texts = [a if a is not None else b for a, b in zip(self.texts, other.texts)]
        self._cand += other._cand
        self._seq += other._seq
        self._ctx += other._ctx
        return self

    def finish(self) -> "CandidateRows":
        c = np.concatenate(self._cand) if self._cand else np.zeros(0, np.int32)
        s = np.concatenate(self._seq) if self._seq else np.zeros(0, np.int64)
        x = np.concatenate(self._ctx) if self._ctx else np.zeros(0, np.int32)
        order = np.lexsort((s, c))
        c, s, x = c[order], s[order], x[order]
        indptr = np.zeros(len(self.candidates) + 1, dtype=np.int64)
        np.cumsum(np.bincount(c, minlength=len(self.candidates)), out=indptr[1:])
        return CandidateRows(self.candidates, [t or "" for t in self.texts], indptr, s, x)


@dataclass
class CandidateRows:
    """Each candidate's rows: ``seqs[indptr[j]:indptr[j+1]]`` (sorted global sequence numbers)
    with ``context[...]`` (the row's token count minus the n-gram's), and its ``texts[j]``."""

    candidates: Candidates
    texts: list[str]
    indptr: np.ndarray
    seqs: np.ndarray
    context: np.ndarray

    def rows(self, j: int) -> np.ndarray:
        return self.seqs[self.indptr[j] : self.indptr[j + 1]]

    def context_of(self, j: int) -> np.ndarray:
        return self.context[self.indptr[j] : self.indptr[j + 1]]


def binomial_strength(log_p: np.ndarray) -> np.ndarray:
    """-log10 of a natural-log p-value, for logs and reports."""
    return -np.asarray(log_p) / math.log(10)


@dataclass
class StreamCandidates:
    """What a scan hands the trigger detector's ``fit`` besides the sample.

    ``rows``: every candidate's rows in the whole stream; ``sample_seqs`` (n,) the global
    sequence number of each sample row given to ``fit``; ``fetch(seqs)`` returns
    ``(X (k, d) float32, labels (k,), texts (k,))`` of the rows with those sorted sequence
    numbers.
    """

    rows: CandidateRows
    sample_seqs: np.ndarray
    fetch: "Callable[[np.ndarray], tuple[np.ndarray, list[str | None], list[str]]]"
