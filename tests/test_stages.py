"""Pipeline stages shared by scan and Guard: duplicate-cluster bookkeeping."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from shardguard.scoring import LabelCodes, RootTable
from shardguard.stages import DuplicateClusters


def record_all(clusters, batches):
    for shard, rows, root, labels in batches:
        clusters.record(shard, np.asarray(rows), np.asarray(root), np.linspace(0.5, 1, len(rows)).astype(np.float32),
                        None if labels is None else np.array(labels, dtype=object))


def test_sizes_reference_and_majority_with_ties():
    c = DuplicateClusters(flood_size=3)
    record_all(c, [
        # root 0 (label "a"): copies b, b, a -> a 2 vs b 2: tie goes to the reference "a"
        ("s1", [1, 2, 3, 4], [0, 0, -1, 0], ["b", "b", "x", "a"]),
        # root 3 (label "x"): copies y, y -> y wins 2 to 1
        ("s2", [0, 1, 5], [3, 3, -1], ["y", "y", "z"]),
        # root 7 (label "p"): copies q, r -> tie of three, reference p wins
        ("s2", [8, 9], [7, 7], ["q", "r"]),
    ])
    assert c.all_roots().tolist() == [0, 3, 7]
    c.resolve({0: "a", 3: "x", 7: "p"})
    t = c.table()
    assert t.roots.tolist() == [0, 3, 7]
    assert t.sizes.tolist() == [4, 3, 3]
    assert t.reference.tolist() == ["a", "x", "p"]
    assert t.majority.tolist() == ["a", "y", "p"]
    rows, root, sim, contradicts = c.members("s2")
    assert rows.tolist() == [0, 1, 8, 9] and root.tolist() == [3, 3, 7, 7] and sim.dtype == np.float32
    assert contradicts is None  # recorded without statement judgements: judged by the first occurrence's label
    assert c.members("nowhere")[0].size == 0


def test_released_clusters_keep_the_table_and_members_pass_two_reads():
    """A scan frees the copies' labels and features once resolved; what pass 2 reads stays."""
    c = DuplicateClusters(flood_size=3)
    record_all(c, [("s1", [1, 2, 3, 4], [0, 0, -1, 0], ["b", "b", "x", "a"]), ("s2", [0, 1, 5], [3, 3, -1], ["y", "y", "z"])])
    with pytest.raises(RuntimeError, match="before resolve"):
        c.release_resolved()
    c.resolve({0: "a", 3: "x"})
    table, members = c.table(), [c.members(s) for s in ("s1", "s2")]
    c.release_resolved()
    assert c.table() is table
    for before, s in zip(members, ("s1", "s2")):
        after = c.members(s)
        assert all(a.tolist() == b.tolist() for a, b in zip(after[:3], before[:3]))
    assert c.all_roots().tolist() == [0, 3]
    with pytest.raises(RuntimeError, match="release_resolved"):
        c.copies()  # a guard, which reads them, never releases
    with pytest.raises(RuntimeError, match="release_resolved"):
        c.resolve({0: "a", 3: "x"})  # nothing left to resolve from


def test_root_labels_from_the_scans_root_table():
    """The scan resolves its clusters from its RootTable (labels of the sorted roots), as from a dict."""
    batches = [("s1", [1, 2, 3, 4], [0, 0, -1, 0], ["b", "b", "x", "a"]), ("s2", [0, 1, 5], [3, 3, -1], ["y", "y", "z"])]
    by_dict, by_table = DuplicateClusters(flood_size=3), DuplicateClusters(flood_size=3)
    record_all(by_dict, batches)
    record_all(by_table, batches)
    roots = RootTable(LabelCodes(), ["s1", "s2"])
    roots.append(np.array([0, 3]), pa.array(["s1:0", "s2:3"]), roots.labels.encode(["a", None]),
                 np.array([0, 3]), np.array([0, 1]))
    by_dict.resolve({0: "a", 3: None})
    by_table.resolve(roots.label_of)
    for col in ("roots", "sizes", "reference", "majority", "flood"):
        assert getattr(by_table.table(), col).tolist() == getattr(by_dict.table(), col).tolist()
    assert roots.label_of(np.array([3, 0, 9])).tolist() == [None, "a", None]
    assert [c.tolist() for c in roots.lookup(np.array([3]))] == [["s2:3"], ["s2"], [3], [None]]


def test_a_shards_subset_of_clusters_and_roots_answers_as_the_whole():
    """Pass 2 on Ray sends each shard only the clusters its rows belong to: the subsets must
    answer the same for those keys, and as 'no cluster' for the rest."""
    c = DuplicateClusters(flood_size=3)
    record_all(c, [("s1", [1, 2, 3, 4], [0, 0, -1, 0], ["b", "b", "x", "a"]), ("s2", [0, 1, 5], [3, 3, -1], ["y", "y", "z"]),
                   ("s2", [8, 9], [7, 7], ["q", "r"])])
    c.resolve({0: "a", 3: "x", 7: "p"})
    roots = RootTable(LabelCodes(), ["s1", "s2"])
    roots.append(np.array([0, 3, 7]), pa.array(["s1:0", "s1:3", "s1:7"]), roots.labels.encode(["a", "x", "p"]),
                 np.array([0, 3, 7]), np.array([0, 0, 0]))
    keys = np.array([3, 7])
    table, sub = c.table(), c.table().subset(keys)
    for whole, part in zip(table.lookup(keys), sub.lookup(keys)):  # found, size, reference, majority, flood
        assert whole.tolist() == part.tolist()
    assert sub.lookup(np.array([0]))[0].tolist() == [False]  # not in the subset: no cluster
    small = roots.subset(keys)
    assert len(small) == 2 and small.labels is roots.labels
    assert [col.tolist() for col in small.lookup(keys)] == [col.tolist() for col in roots.lookup(keys)]
    assert small.lookup(np.array([0]))[0].tolist() == [None]


def test_tie_without_the_reference_goes_to_the_smallest_label():
    c = DuplicateClusters(flood_size=3)
    record_all(c, [("s", [1, 2, 3, 4], [0, 0, 0, 0], ["d", "c", "d", "c"])])
    c.resolve({0: "z"})
    assert c.table().majority.tolist() == ["c"]


def test_unlabelled_and_empty():
    c = DuplicateClusters(flood_size=3)
    with pytest.raises(RuntimeError, match="resolve"):
        c.table()
    c.resolve({})
    assert c.table().roots.size == 0 and c.all_roots().size == 0
    record_all(c, [("s", [2, 3], [1, 1], None)])
    c.resolve({1: None})
    t = c.table()
    assert t.sizes.tolist() == [3] and t.reference.tolist() == [None] and t.majority.tolist() == [None]


def test_matches_a_plain_counter_on_random_clusters():
    rng = np.random.default_rng(3)
    c = DuplicateClusters(flood_size=5)
    ref_labels = {r: str(rng.integers(0, 3)) for r in range(0, 400, 4)}
    tally: dict[int, Counter] = {}
    for b in range(6):
        n = 500
        root = np.where(rng.random(n) < 0.6, rng.choice(list(ref_labels), n), -1)
        labels = np.array([str(v) for v in rng.integers(0, 3, n)], dtype=object)
        c.record(f"s{b % 2}", np.arange(n) + 1000 * b, root, np.ones(n, np.float32), labels)
        for r, lab in zip(root.tolist(), labels.tolist()):
            if r >= 0:
                tally.setdefault(r, Counter())[lab] += 1
    c.resolve(ref_labels)
    t = c.table()
    assert t.roots.tolist() == sorted(tally)
    for r, size, maj in zip(t.roots.tolist(), t.sizes.tolist(), t.majority.tolist()):
        counts = tally[r] + Counter({ref_labels[r]: 1})
        best = max(counts.values())
        expected = ref_labels[r] if counts[ref_labels[r]] == best else min(k for k, v in counts.items() if v == best)
        assert size == sum(tally[r].values()) + 1 and maj == expected


def test_floods_need_a_contradiction_or_edited_copies_of_one_text():
    from shardguard.bench.attacks import typo
    from shardguard.dedup import RootFeatures, StatementFeatures

    root_text = "Sorry, I'll call later in meeting."
    rng = np.random.default_rng(0)
    verbatim = [root_text] * 5
    edited = [typo(root_text, rng) for _ in range(5)]
    sub_phrases = ["sorry", "sorry, i'll call", "call later", "i'll call later in meeting today, ok? bye now", "later"]
    # one frame, each row with its own content (real Wikipedia openings of this form)
    filled = [f"{name} is a surname. Notable people with this surname include:"
              for name in ("Samu", "Kowalczyk", "Ferreira", "Halvorsen", "Ishikawa", "Mbeki")]

    def table(texts, labels, root_label="ham", root=root_text):
        c = DuplicateClusters(flood_size=3)
        n = len(texts)
        roots = RootFeatures(np.array([0]), StatementFeatures.of_texts([root]))
        c.record("s", np.arange(1, n + 1), np.zeros(n, np.int64), np.ones(n, np.float32),
                 None if labels is None else np.array(labels, dtype=object), None,
                 StatementFeatures.of_texts(texts), np.arange(1, n + 1))
        every = [root, *texts]
        asked = []

        def fetch(seqs):
            asked.append(seqs.tolist())
            return [every[s] for s in seqs.tolist()]

        c.resolve({0: root_label}, roots, fetch)
        return c.table(), asked

    # a canned reply repeated verbatim under one label or none: not a flood, nothing to align
    for labels, root_label in ((["ham"] * 5, "ham"), (None, None)):
        t, asked = table(verbatim, labels, root_label)
        assert t.flood.tolist() == [False] and asked == [] and np.isnan(t.agreement).all()
    # the same count of edited copies (evading exact dedup), under one label or none: a flood
    for labels, root_label in ((["ham"] * 5, "ham"), (None, None)):
        t, asked = table(edited, labels, root_label)
        assert t.flood.tolist() == [True] and asked == [[0, 1, 2, 3, 4, 5]] and t.agreement[0] >= 0.65
    # rows filling one frame with their own content: distinct, but no one text -- no flood
    t, _ = table(filled[1:], None, None, root=filled[0])
    assert t.flood.tolist() == [False] and t.agreement[0] < 0.65
    # verbatim repeats contradicting the root's label: a flood, whatever their agreement
    t, asked = table(verbatim, ["spam"] * 5)
    assert t.flood.tolist() == [True] and asked == []
    # sub-phrases of different lengths, even under two labels: no core of similar rows, no flood
    t, _ = table(sub_phrases, ["spam"] * 5)
    assert t.flood.tolist() == [False] and t.sizes.tolist() == [6]


def test_flood_flags_wait_for_enough_texts_and_majority_labels_count_weights():
    """The scan's flood rule as the guard applies it to a cluster it grows: edited copies of one
    text under one label are a flood when their texts can be read, and not judged yet (no flood,
    agreement NaN) while fewer than half of the rows the scan would sample have texts."""
    from shardguard.bench.attacks import typo
    from shardguard.dedup import StatementFeatures
    from shardguard.stages import flood_flags, majority_labels

    root = "Reminder: your parcel is waiting at the depot, reply YES to book a delivery slot"
    rng = np.random.default_rng(5)
    texts = [root] + [typo(root, rng) for _ in range(30)]
    f = StatementFeatures.of_texts(texts)
    cl, codes, seq = np.zeros(31, np.int64), np.zeros(31, np.int64), np.arange(31)
    feats = (f.length, f.words, f.h_full)

    def fetch(seqs):
        return [texts[s] for s in seqs.tolist()]

    flood, agreement = flood_flags(cl, 1, codes, -1, feats, 20, 0.65, seq, fetch)
    assert flood.tolist() == [True] and agreement[0] >= 0.65
    few = np.arange(31) < 10  # 10 texts of 31 rows: fewer than half
    flood, agreement = flood_flags(cl, 1, codes, -1, feats, 20, 0.65, seq, fetch, sampled=few)
    assert flood.tolist() == [False] and np.isnan(agreement[0])
    # two labels in the cluster: a contradiction is a flood without reading texts
    flood, _ = flood_flags(cl, 1, np.r_[1, codes[1:]], -1, feats, 20, 0.65, seq, fetch, sampled=few)
    assert flood.tolist() == [True]
    # majority from label counts: cluster 0 holds a x3, b x5; cluster 1 a tie b x2, c x2, reference c
    maj = majority_labels(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 2]), np.array([0, 2]), ["a", "b", "c"],
                          np.array([3, 5, 2, 2]))
    assert maj.tolist() == [1, 2]


def test_reservoir_of_merged_parts_is_the_reservoir_of_one_pass(shared_data):
    """SMS Spam (hashing-embedder vectors, labels, texts) offered to one reservoir batch by batch,
    and to four reservoirs of parts of the stream (the scan's per-shard map, cut at odd places)
    merged in any order: the same rows, in the same (scan) order; a uniform sample."""
    import pyarrow.parquet as pq

    from shardguard.embed.hashing import HashingEmbedder
    from shardguard.stages import ReservoirSample

    t = pq.read_table(shared_data / "sms_spam" / "sms_spam.parquet")
    texts = np.array(t.column("text").to_pylist(), dtype=object)
    y = np.array(t.column("label").to_pylist(), dtype=object)
    X = HashingEmbedder().embed_texts(texts.tolist())
    n, k = len(texts), 500
    one = ReservoirSample(k, random_state=3, keep_text=True)
    held = []
    for i in range(0, n, 256):
        one.add(X[i : i + 256], y[i : i + 256], texts[i : i + 256], np.arange(i, min(i + 256, n)))
        held.append(one._held)
    assert max(held) == k  # a fixed reservoir's rows once full, never more
    cuts = [0, 7, 1500, 1501, n]
    parts = []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        r = ReservoirSample(k, random_state=3, keep_text=True)
        for i in range(lo, hi, 300):
            j = min(i + 300, hi)
            r.add(X[i:j], y[i:j], texts[i:j], np.arange(i, j))
        parts.append(r)
    merged = parts[2].merge(parts[0]).merge(parts[3]).merge(parts[1])
    seqs = one.sample_seqs()
    assert np.array_equal(merged.sample_seqs(), seqs)
    assert seqs.size == k and np.all(np.diff(seqs) > 0)  # distinct rows, in scan order
    (Xa, ya, ta), (Xb, yb, tb) = one.sample(), merged.sample()
    assert np.array_equal(Xa, Xb) and list(ya) == list(yb) and list(ta) == list(tb)
    assert np.array_equal(Xa, X[seqs]) and list(ta) == list(texts[seqs])
    # uniform: each tenth of the stream holds about a tenth of the sample (binomial sd ~6.7)
    per_tenth = np.bincount(seqs * 10 // n, minlength=10)
    assert per_tenth.min() >= 25 and per_tenth.max() <= 75
    # another seed draws another sample
    other = ReservoirSample(k, random_state=4)
    other.add(X, y, None, np.arange(n))
    assert len(set(other.sample_seqs()) & set(seqs)) < 0.3 * k


def test_a_merged_reservoir_leaves_the_one_it_read_as_it_was():
    """Merging hands over the other sample's arrays; the rows that later enter the merged
    sample are written into copies, never into the other reservoir."""
    from shardguard.stages import ReservoirSample

    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 4)).astype(np.float32)
    y = np.array(["a", "b"] * 300, dtype=object)
    part = ReservoirSample(100, random_state=1)
    part.add(X[:300], y[:300], None, np.arange(300))
    before = [a.copy() for a in (part.sample_seqs(), part.sample()[0])]
    whole = ReservoirSample(100, random_state=1).merge(part)
    whole.add(X[300:], y[300:], None, np.arange(300, 600))
    assert np.array_equal(part.sample_seqs(), before[0]) and np.array_equal(part.sample()[0], before[1])
    one = ReservoirSample(100, random_state=1)
    one.add(X, y, None, np.arange(600))
    assert np.array_equal(whole.sample_seqs(), one.sample_seqs())
    assert np.array_equal(whole.sample()[0], X[one.sample_seqs()])


def test_a_sample_is_put_in_scan_order_once_and_read_only():
    """The fit asks for the rows, sequence numbers and responses in turn and keeps what it got:
    the same arrays each time (no copy per call), which nobody may change; rows offered after
    a sample enter a copy."""
    from shardguard.stages import ReservoirSample

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3)).astype(np.float32)
    y = np.array(["a"] * 400, dtype=object)
    r = ReservoirSample(50, random_state=2, keep_text=True)
    r.add(X[:300], y[:300], np.array([f"t{i}" for i in range(300)], dtype=object), np.arange(300),
          np.array([f"r{i}" for i in range(300)], dtype=object))
    first, again = r.sample(), r.sample()
    assert first[0] is again[0] and r.sample_responses() is r.sample_responses()
    with pytest.raises(ValueError):
        first[0][0, 0] = 1.0
    seqs = r.sample_seqs()
    r.add(X[300:], y[300:], np.array([f"t{i}" for i in range(300, 400)], dtype=object), np.arange(300, 400),
          np.array([f"r{i}" for i in range(300, 400)], dtype=object))
    assert np.array_equal(first[0], X[seqs])  # what the fit was given is as it was
    one = ReservoirSample(50, random_state=2)
    one.add(X, y, None, np.arange(400))
    assert np.array_equal(r.sample_seqs(), one.sample_seqs()) and np.array_equal(r.sample()[0], X[one.sample_seqs()])
