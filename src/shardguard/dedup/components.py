"""The near-duplicate reduce split into independent partitions, for an engine that spreads it.

Why the split is exact. :class:`~shardguard.dedup.index.NearDuplicateIndex` answers for a text
from the texts it meets in its LSH buckets (band, 32-bit key): candidate roots and statements
come from the text's buckets (the ``MAX_BUCKET`` earliest of each), in-call pairs from the
call's members of its buckets (the ``MAX_BUCKET_CALL`` earliest), exact copies share every
bucket, and ``says_same`` is asked only of pairs found that way. So the answers for the texts of
one connected component of "shares a bucket" depend on that component's texts alone, and on
where the stream's ``add`` calls split it. Replaying any union of whole components in scan
order, with each text's global sequence number and the same calls (one per work-file batch),
gives each text the answer the whole replay gives it. A text that shares no bucket is a root of
nothing and is not replayed at all. (One exception, by odds: two different texts whose 64-bit
normalised-text hashes collide are exact copies to the index without sharing a bucket; for n
distinct texts the odds of any such pair are about n**2 / 2**65, 3% at a billion.)

Fewer links suffice. In a bucket of at most :data:`SMALL_BUCKET` texts neither cap can bind,
so a text meets every other text of it, and one it does not verify as a near-copy (the b-bit
estimate below the threshold, :meth:`NearDuplicateIndex.verified`) changes nothing of its
answer. Such a bucket links only its verified pairs; a larger bucket links all its texts. On
real text the unverified links are most of them, and they chain: on the scale benchmark's
corpus one component of "shares a bucket" held most rows, which one replay would have had to
take alone.

The one global thing outside the buckets is :class:`~shardguard.dedup.statements.SeenWords`,
"the text holds a word no earlier text held": the earliest sequence number per word, a
min-group-by over the words of the calls that judge a row.

The stages, each a plain function over Arrow tables so that any engine can place them. A
group-by is a shuffle: each map splits its output by a hash of the key into ``partitions``
pieces (:func:`split_by`), and each partition's reduce gets its piece from every map, so it
holds whole groups and works on them vectorised (the Ray engine passes the pieces through the
object store; :func:`reduce_in_process` chains the stages in one process, which the tests
compare with the sequential replay):

1. map, per shard: :func:`shard_keys` -- every valid row's buckets and b-bit sketch, and each
   labelled call's words with their first row;
2. group by bucket: :func:`bucket_links` -- a large bucket's rows linked to its earliest row
   (edges), a small bucket's pairs (candidates);
2b. join the candidates with the sketches of their first row (:func:`candidates_with_first`),
   then of their second (:func:`verified_edges`), which keeps the verified ones as edges;
3. :func:`components` -- connected components of the edges (scipy), named by their earliest
   row, hashed into ``partitions``; on the driver, which holds only the edges (each reduce
   sends a spanning forest of its own, :func:`forest`);
4. group by word: :func:`first_word_rows` -- the smallest sequence number of each word, the
   rows that hold a word no earlier row held;
5. map, per shard: :func:`shard_partition_rows` -- the rows of some component, with their
   partition, call, text and label;
6. per partition: :func:`replay_partition` -- the index and ``index_texts`` over the
   partition's rows in scan order, one call per original call; it returns the copies and the
   roots they copy (:data:`RESULT_SCHEMA`);
7. :func:`record_results` -- the driver records them into the clusters and root features in
   scan order, as the sequential replay would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shardguard.dedup.index import MAX_BUCKET, MAX_BUCKET_CALL, NearDuplicateIndex
from shardguard.dedup.normalize import normalize_codepoints, normalized
from shardguard.dedup.storage import _expand
from shardguard.dedup.statements import (
    HALF_PERM,
    RootFeatures,
    StatementFeatures,
    first_words,
    index_texts,
    label_hashes,
)
from shardguard.io import workfile
from shardguard.mixing import splitmix64

if TYPE_CHECKING:  # the clusters live a layer up (stages imports dedup)
    from shardguard.stages import DuplicateClusters

__all__ = [
    "IndexParams",
    "RESULT_SCHEMA",
    "bucket_links",
    "candidates_with_first",
    "components",
    "concat",
    "first_join_of",
    "first_word_rows",
    "first_words_of",
    "forest",
    "links_of",
    "partition_of",
    "record_results",
    "reduce_in_process",
    "replay_of",
    "replay_partition",
    "shard_keys",
    "shard_keys_split",
    "shard_partition_rows",
    "shard_rows_split",
    "split_by",
    "verified_edges",
    "verified_of",
]

#: A bucket of at most this many texts links only its verified pairs (see the module docstring).
SMALL_BUCKET = min(MAX_BUCKET, MAX_BUCKET_CALL)
BUCKETS_SCHEMA = pa.schema([("bucket", pa.int64()), ("seq", pa.int64())])
EDGES_SCHEMA = pa.schema([("src", pa.int64()), ("dst", pa.int64())])
WORDS_SCHEMA = pa.schema([("word", pa.int64()), ("seq", pa.int64())])
ROWS_SCHEMA = pa.schema([("seq", pa.int64()), ("part", pa.int64()), ("call", pa.int64()),
                         ("row", pa.int64()), ("text", pa.string()), ("label", pa.string()),
                         ("new_word", pa.bool_())])
#: What a partition's replay returns: its copies (``root >= 0``) and the roots they copy
#: (``cluster_root``), with what the clusters record of each (``record``) and what the flood
#: test reads of a root (its :class:`StatementFeatures` and label hash).
RESULT_SCHEMA = pa.schema([
    ("seq", pa.int64()), ("row", pa.int64()), ("label", pa.string()), ("root", pa.int64()),
    ("sim", pa.float32()), ("contradicts", pa.bool_()), ("cluster_root", pa.bool_()),
    ("label_hash", pa.uint64()), ("length", pa.int32()), ("words", pa.int32()), ("negations", pa.int16()),
    ("h_full", pa.uint64()), ("h_tail", pa.uint64()), ("h_head", pa.uint64()),
    ("head_sketch", pa.binary(HALF_PERM)), ("tail_sketch", pa.binary(HALF_PERM)),
])
_PART_SEED = 0x5F3759DF


@dataclass(frozen=True)
class IndexParams:
    """The near-duplicate index's parameters (``near_duplicates`` config), picklable for workers."""

    threshold: float = 0.5
    num_perm: int = 128
    ngram: int = 3
    seed: int = 1

    @classmethod
    def of(cls, index: NearDuplicateIndex) -> "IndexParams":
        return cls(index.threshold, index.num_perm, index.ngram, index.seed)

    def index(self) -> NearDuplicateIndex:
        return NearDuplicateIndex(self.threshold, self.num_perm, self.ngram, self.seed)


def _valid_batches(path: Path) -> Iterable[tuple[int, pa.RecordBatch]]:
    """``(batch index, valid rows)`` of a work file: the calls the sequential replay makes."""
    with workfile.WorkFileReader(path) as reader:
        for b, batch in enumerate(reader):
            vb = batch.filter(batch.column("detail").is_null())
            if vb.num_rows:
                yield b, vb


def _sketch_table(seqs: np.ndarray, sk: np.ndarray) -> pa.Table:
    return pa.table({"seq": seqs, "sketch": _binary(sk)})


def _sketches(t: pa.Table, column: str = "sketch") -> np.ndarray:
    """A fixed-size binary column as a ``(n, width)`` uint8 array."""
    col = t.column(column).combine_chunks()
    width = col.type.byte_width
    if not len(col):
        return np.zeros((0, width), np.uint8)
    return np.frombuffer(col.buffers()[1], np.uint8, len(col) * width, col.offset * width).reshape(-1, width)


def shard_keys(path: Path, seq_start: int, params: IndexParams,
               judged: bool) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Map stage 1 over one shard's work file: ``(buckets, words, sketches)``.

    ``buckets`` (:data:`BUCKETS_SCHEMA`): ``bands`` rows per valid row, its LSH bucket
    (``band << 32 | key``) and sequence number. ``words`` (:data:`WORDS_SCHEMA`, word hashes
    as int64 bits): with ``judged`` (labels are judged: ``near_duplicates.copies`` is
    "conflicting"), each call with a labelled row contributes its distinct words with the first
    row holding each -- what :meth:`SeenWords.see` learns from that call; empty otherwise.
    ``sketches``: each valid row's sequence number and b-bit sketch (``num_perm`` bytes).
    """
    index = params.index()
    buckets, words, sketches = [], [], []
    seq = seq_start
    for _, vb in _valid_batches(path):
        n = vb.num_rows
        seqs = seq + np.arange(n, dtype=np.int64)
        # the normalised texts as strings (a Python step per text) only where their words count
        words_count = judged and bool((label_hashes(vb.column("label").to_numpy(zero_copy_only=False), n) != 0).any())
        if words_count:
            norm, cps, lens = normalized(vb.column("text"))
        else:
            cps, lens = normalize_codepoints(vb.column("text"))
        b, sk = index.buckets(cps, lens)  # (bands, n), (n, num_perm)
        buckets.append(pa.table({"bucket": b.ravel().view(np.int64), "seq": np.tile(seqs, b.shape[0])},
                                schema=BUCKETS_SCHEMA))
        sketches.append(_sketch_table(seqs, sk))
        if words_count:
            vocab, first = first_words(norm)
            words.append(pa.table({"word": vocab.view(np.int64), "seq": seqs[first]}, schema=WORDS_SCHEMA))
        seq += n
    empty_sk = _sketch_table(np.zeros(0, np.int64), np.zeros((0, params.num_perm), np.uint8))
    return (pa.concat_tables(buckets) if buckets else BUCKETS_SCHEMA.empty_table(),
            pa.concat_tables(words) if words else WORDS_SCHEMA.empty_table(),
            pa.concat_tables(sketches) if sketches else empty_sk)


def _sorted_buckets(buckets: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bucket entries sorted by (bucket, seq): ``(seq, group start of each entry, group sizes
    per entry)``."""
    key = buckets.column("bucket").to_numpy()
    seq = buckets.column("seq").to_numpy()
    o = np.lexsort((seq, key))
    key, seq = key[o], seq[o]
    start = np.r_[True, key[1:] != key[:-1]] if key.size else np.zeros(0, bool)
    idx = np.arange(key.size)
    gstart = np.maximum.accumulate(np.where(start, idx, 0)) if key.size else idx
    starts = np.flatnonzero(start)
    sizes = np.diff(np.append(starts, key.size))
    return seq, gstart, np.repeat(sizes, sizes)


def bucket_links(buckets: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Group by bucket, into ``(edges, candidates)`` (both :data:`EDGES_SCHEMA`, ``src`` the
    earlier row): a bucket of more than :data:`SMALL_BUCKET` rows links every row to its
    earliest (edges); a smaller one gives every pair of its rows as a candidate, to be
    verified. Candidates are distinct (a pair sharing several bands is listed once)."""
    seq, gstart, size = _sorted_buckets(buckets)
    idx = np.arange(seq.size)
    big = (size > SMALL_BUCKET) & (gstart != idx)
    edges = pa.table({"src": seq[gstart[big]], "dst": seq[big]}, schema=EDGES_SCHEMA)
    small = np.flatnonzero((size <= SMALL_BUCKET) & (gstart != idx))  # each pairs with its earlier entries
    owner, pos = _expand(gstart[small], idx[small] - gstart[small], int((idx[small] - gstart[small]).sum()))
    src, dst = seq[pos], seq[small[owner]]
    if src.size:
        pairs = np.unique(np.stack([src, dst], axis=1), axis=0)
        src, dst = pairs[:, 0], pairs[:, 1]
    return edges, pa.table({"src": src, "dst": dst}, schema=EDGES_SCHEMA)


def _lookup_sketch(sketches: pa.Table, seqs: np.ndarray) -> np.ndarray:
    """The sketches (``(m, num_perm)`` uint8) of rows ``seqs``, all in ``sketches``."""
    have = sketches.column("seq").to_numpy()
    order = np.argsort(have, kind="stable")
    pos = order[np.searchsorted(have[order], seqs)]
    if pos.size and not np.array_equal(have[pos], seqs):
        raise KeyError("a candidate's sketch is missing from its partition")
    return _sketches(sketches)[pos]


def candidates_with_first(sketches: pa.Table, candidates: pa.Table, partitions: int) -> list[pa.Table]:
    """First join of the verification: the candidates whose ``src`` is in this partition
    (``sketches``: that partition's rows) with ``src``'s sketch, split by ``dst`` for the
    second join."""
    src = candidates.column("src").to_numpy()
    with_first = candidates.append_column("sketch", _binary(_lookup_sketch(sketches, src)))
    return split_by(with_first, "dst", partitions)


def verified_edges(params: IndexParams, sketches: pa.Table, candidates: pa.Table) -> pa.Table:
    """Second join: the candidates whose ``dst`` is in this partition, with ``src``'s sketch
    (:func:`candidates_with_first`), kept where the pair verifies as the index verifies it."""
    dst = candidates.column("dst").to_numpy()
    ok = params.index().verified(_sketches(candidates), _lookup_sketch(sketches, dst))
    return pa.table({"src": candidates.column("src").to_numpy()[ok], "dst": dst[ok]}, schema=EDGES_SCHEMA)


def forest(edges: pa.Table) -> pa.Table:
    """A spanning forest of ``edges``: each component as edges from its earliest row, at most
    one per row -- what a reduce sends the driver."""
    seqs, comp = components(edges.column("src").to_numpy(), edges.column("dst").to_numpy())
    other = seqs != comp
    return pa.table({"src": comp[other], "dst": seqs[other]}, schema=EDGES_SCHEMA)


def components(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the edges ``src -> dst`` (int64 sequence numbers):
    ``(seqs, comp)``, the sorted rows in some edge and, for each, its component's earliest
    row. Rows in no edge are components of their own and are not listed."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes = np.unique(np.concatenate([src, dst]).astype(np.int64))
    if not nodes.size:
        return nodes, nodes.copy()
    a, b = np.searchsorted(nodes, src), np.searchsorted(nodes, dst)
    graph = coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(nodes.size, nodes.size))
    _, label = connected_components(graph, directed=False)
    earliest = np.full(label.max() + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(earliest, label, nodes)
    return nodes, earliest[label]


def partition_of(key: np.ndarray, partitions: int) -> np.ndarray:
    """The partition (0..partitions-1) of each key (int64: a component's earliest row, a
    bucket, a word hash), by a 64-bit mix of it."""
    h = splitmix64(np.asarray(key, np.int64).view(np.uint64) ^ np.uint64(_PART_SEED))
    return (h % np.uint64(partitions)).astype(np.int64)


def split_by(table: pa.Table, column: str, partitions: int, hashed: bool = True) -> list[pa.Table]:
    """The shuffle's map side: ``table``'s rows in ``partitions`` pieces by the partition of
    ``column`` (:func:`partition_of`; with ``hashed`` False the column is the partition)."""
    key = table.column(column).to_numpy()
    part = partition_of(key, partitions) if hashed else key
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(partitions + 1))
    table = table.take(pa.array(order))
    return [table.slice(int(a), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])]


def first_word_rows(words: pa.Table) -> np.ndarray:
    """Group by word (:data:`WORDS_SCHEMA` rows holding whole words): the sorted rows that
    are the earliest to hold some word -- the rows with a word no earlier row held."""
    if not words.num_rows:
        return np.zeros(0, np.int64)
    first = words.group_by("word").aggregate([("seq", "min")]).column("seq_min").to_numpy()
    return np.unique(first.astype(np.int64))


def shard_partition_rows(path: Path, seq_start: int, position: int, seqs: np.ndarray, parts: np.ndarray,
                         new_word: np.ndarray) -> pa.Table:
    """Map stage 5 over one shard's work file: its rows among ``seqs`` (sorted sequence numbers
    of this shard's rows in some component; ``parts`` their partitions; ``new_word`` bool)
    as :data:`ROWS_SCHEMA` rows, each with its call (``position << 32 | batch index``: the
    shard's place in scan order and the work-file batch the sequential replay adds it with)."""
    out = []
    seq = seq_start
    for b, vb in _valid_batches(path):
        n = vb.num_rows
        i, j = np.searchsorted(seqs, [seq, seq + n])
        if j > i:
            local = seqs[i:j] - seq
            take = pa.array(local)
            out.append(pa.table({
                "seq": seqs[i:j], "part": parts[i:j], "call": np.full(j - i, (position << 32) | b, np.int64),
                "row": vb.column("row").take(take), "text": vb.column("text").take(take),
                "label": vb.column("label").take(take), "new_word": new_word[i:j],
            }, schema=ROWS_SCHEMA))
        seq += n
    return pa.concat_tables(out) if out else ROWS_SCHEMA.empty_table()


def _binary(a: np.ndarray) -> pa.Array:
    a = np.ascontiguousarray(a, np.uint8)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(a.shape[1]), a.shape[0], [None, pa.py_buffer(a.tobytes())])


def replay_partition(rows: pa.Table, params: IndexParams, judged: bool) -> pa.Table:
    """Stage 6: the sequential reduce (``index_texts`` into a fresh index) over one partition's
    rows (:data:`ROWS_SCHEMA`, any order), in scan order with one call per original call.
    ``judged``: labels are judged (``near_duplicates.copies`` is "conflicting").

    Returns :data:`RESULT_SCHEMA` rows: the copies and the roots they copy, in scan order."""
    if rows.num_rows == 0:  # no component fell in this partition (one large component, or none)
        return RESULT_SCHEMA.empty_table()
    rows = rows.sort_by("seq")
    index, kept = params.index(), RootFeatures()
    calls = rows.column("call").to_numpy()
    bounds = np.flatnonzero(np.r_[True, calls[1:] != calls[:-1], True])
    seqs_all = rows.column("seq").to_numpy()
    nw_all = rows.column("new_word").to_numpy(zero_copy_only=False)
    parts: list[dict[str, np.ndarray]] = []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        call = rows.slice(a, b - a)
        y = call.column("label").to_numpy(zero_copy_only=False)
        judged_y = y if judged else None
        added, contradicts, feats = index_texts(index, kept, call.column("text"), judged_y, seqs_all[a:b], nw_all[a:b])
        parts.append({"root": added.root, "sim": added.sim, "contradicts": contradicts,
                      "label_hash": label_hashes(judged_y, b - a),
                      **{f: getattr(feats, f) for f in StatementFeatures.FIELDS}})
    if not parts:
        return RESULT_SCHEMA.empty_table()
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    copy = cat["root"] >= 0
    is_root = np.isin(seqs_all, cat["root"][copy])
    keep = np.flatnonzero(copy | is_root)
    take = pa.array(keep)
    return pa.table({
        "seq": seqs_all[keep], "row": rows.column("row").take(take), "label": rows.column("label").take(take),
        "root": cat["root"][keep], "sim": cat["sim"][keep], "contradicts": cat["contradicts"][keep],
        "cluster_root": is_root[keep], "label_hash": cat["label_hash"][keep],
        **{f: cat[f][keep] for f in ("length", "words", "negations", "h_full", "h_tail", "h_head")},
        "head_sketch": _binary(cat["head_sketch"][keep]), "tail_sketch": _binary(cat["tail_sketch"][keep]),
    }, schema=RESULT_SCHEMA)


def _features(t: pa.Table) -> StatementFeatures:
    return StatementFeatures(*(t.column(f).to_numpy() for f in StatementFeatures.FIELDS[:6]),
                             _sketches(t, "head_sketch"), _sketches(t, "tail_sketch"))


def record_results(results: Sequence[pa.Table], shard_names: Sequence[str], seq_starts: Sequence[int],
                   clusters: "DuplicateClusters", root_features: RootFeatures) -> None:
    """Stage 7, on the driver: every partition's :func:`replay_partition` rows recorded into
    ``clusters`` (``stages.DuplicateClusters``, one ``record`` per shard in scan order) and
    the cluster roots' features and labels into ``root_features`` -- what the sequential
    replay records of them, in the same order."""
    t = pa.concat_tables([r for r in results if r.num_rows] or [RESULT_SCHEMA.empty_table()]).sort_by("seq")
    roots = t.filter(t.column("cluster_root"))
    root_features.add(roots.column("seq").to_numpy(), _features(roots), roots.column("label_hash").to_numpy())
    copies = t.filter(pc.greater_equal(t.column("root"), 0))
    seq = copies.column("seq").to_numpy()
    bounds = np.searchsorted(seq, np.append(np.asarray(seq_starts, np.int64), np.iinfo(np.int64).max))
    feats = _features(copies)
    for k, name in enumerate(shard_names):
        a, b = int(bounds[k]), int(bounds[k + 1])
        if b <= a:
            continue
        part = copies.slice(a, b - a)
        clusters.record(name, part.column("row").to_numpy(), part.column("root").to_numpy(),
                        part.column("sim").to_numpy(), part.column("label").to_numpy(zero_copy_only=False),
                        part.column("contradicts").to_numpy(zero_copy_only=False),
                        feats.take(np.arange(a, b)), seq[a:b])


def shard_keys_split(path: Path, seq_start: int, params: IndexParams, judged: bool,
                     partitions: int) -> list[pa.Table]:
    """:func:`shard_keys` split for the shuffles: ``partitions`` pieces each of buckets (by
    bucket), words (by word) and sketches (by row)."""
    buckets, words, sketches = shard_keys(path, seq_start, params, judged)
    return (split_by(buckets, "bucket", partitions) + split_by(words, "word", partitions)
            + split_by(sketches, "seq", partitions))


def shard_rows_split(path: Path, seq_start: int, position: int, seqs: np.ndarray, parts: np.ndarray,
                     new_word: np.ndarray, partitions: int) -> list[pa.Table]:
    """:func:`shard_partition_rows` split by partition, for the replays."""
    return split_by(shard_partition_rows(path, seq_start, position, seqs, parts, new_word), "part", partitions,
                    hashed=False)


def links_of(partitions: int, *pieces: pa.Table) -> list[pa.Table]:
    """Reduce of the bucket group-by over one partition's pieces: the forest of its edges,
    then its candidates split by ``src`` (``1 + partitions`` tables)."""
    edges, candidates = bucket_links(pa.concat_tables(pieces))
    return [forest(edges)] + split_by(candidates, "src", partitions)


def concat(*pieces: pa.Table) -> pa.Table:
    """One partition's pieces from every map (the shuffle's reduce side)."""
    return pa.concat_tables(pieces)


def first_join_of(partitions: int, sketches: pa.Table, *pieces: pa.Table) -> list[pa.Table]:
    """:func:`candidates_with_first` over one partition's candidate pieces."""
    return candidates_with_first(sketches, pa.concat_tables(pieces), partitions)


def verified_of(params: IndexParams, sketches: pa.Table, *pieces: pa.Table) -> pa.Table:
    """:func:`verified_edges` over one partition's pieces, as a forest."""
    return forest(verified_edges(params, sketches, pa.concat_tables(pieces)))


def first_words_of(*pieces: pa.Table) -> np.ndarray:
    """Reduce of the word group-by: :func:`first_word_rows` of one partition's pieces."""
    return first_word_rows(pa.concat_tables(pieces))


def replay_of(params: IndexParams, judged: bool, *pieces: pa.Table) -> pa.Table:
    """Reduce of the partition group-by: :func:`replay_partition` of one partition's pieces."""
    return replay_partition(pa.concat_tables(pieces), params, judged)


def reduce_in_process(paths: Sequence[Path], seq_starts: Sequence[int], shard_names: Sequence[str],
                      params: IndexParams, judged: bool, partitions: int, clusters: "DuplicateClusters",
                      root_features: RootFeatures) -> dict[str, int]:
    """Stages 1-7 in this process, with the same maps, splits and reduces the Ray engine
    places on a cluster. Used to check the split against the sequential replay. Returns sizes
    (rows in a component, edges, the largest partition's rows)."""
    P = partitions
    keys = [shard_keys_split(p, s, params, judged, P) for p, s in zip(paths, seq_starts)]
    links = [links_of(P, *(k[j] for k in keys)) for j in range(P)]
    sketches = [concat(*(k[2 * P + j] for k in keys)) for j in range(P)]
    firsts = [first_join_of(P, sketches[j], *(lk[1 + j] for lk in links)) for j in range(P)]
    verified = [verified_of(params, sketches[j], *(f[j] for f in firsts)) for j in range(P)]
    edges = pa.concat_tables([lk[0] for lk in links] + verified)
    first = np.unique(np.concatenate([first_words_of(*(k[P + j] for k in keys)) for j in range(P)]))
    seqs, comp = components(edges.column("src").to_numpy(), edges.column("dst").to_numpy())
    parts = partition_of(comp, P)
    new_word = np.isin(seqs, first)
    bounds = np.searchsorted(seqs, np.append(np.asarray(seq_starts, np.int64), np.iinfo(np.int64).max))
    rows = [shard_rows_split(p, s, k, *(a[bounds[k]:bounds[k + 1]] for a in (seqs, parts, new_word)), P)
            for k, (p, s) in enumerate(zip(paths, seq_starts))]
    results = [replay_of(params, judged, *(r[j] for r in rows)) for j in range(P)]
    record_results(results, shard_names, seq_starts, clusters, root_features)
    return {"component_rows": int(seqs.size), "edges": int(edges.num_rows),
            "largest_partition_rows": int(np.bincount(parts, minlength=P).max()) if parts.size else 0}
