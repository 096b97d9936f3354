"""Near-duplicate index: typo recall and no false merges on real sentences, scan-order
semantics, persistence, memory and where it lives, and judged texts (statements)."""

from __future__ import annotations

import json
import random
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import parquet_texts, state_round_trip
from datasketch import MinHash

from shardguard.bench.attacks import typo_copy
from shardguard.dedup import MinHasher, NearDuplicateIndex, RootFeatures, index_texts, normalize_text, shingle_hash, storage


def char_jaccard(a: str, b: str, n: int) -> float:
    a, b = normalize_text(a), normalize_text(b)
    sa = {a[i : i + n] for i in range(len(a) - n + 1)} or {a}
    sb = {b[i : i + n] for i in range(len(b) - n + 1)} or {b}
    return len(sa & sb) / len(sa | sb)


def typo_set(distinct: list[str], n_sentences: int, seed: int):
    """Copies with 1, 2 and 3 edits of ``n_sentences`` random 5-20-word sentences."""
    rng = random.Random(seed)
    pool = [i for i, t in enumerate(distinct) if 5 <= len(t.split()) <= 20]
    copies, orig, edits = [], [], []
    for i in rng.sample(pool, n_sentences):
        for k in (1, 2, 3):
            c = typo_copy(distinct[i], k, rng)
            while normalize_text(c) == distinct[i]:
                c = typo_copy(distinct[i], k, rng)
            copies.append(c)
            orig.append(i)
            edits.append(k)
    return copies, np.array(orig), np.array(edits)


def check_invariants(root: np.ndarray, sim: np.ndarray, first_id: int = 0) -> None:
    ids = first_id + np.arange(root.size)
    assert root.dtype == np.int64 and sim.dtype == np.float32
    assert np.all(root < ids)  # always an EARLIER document
    assert np.all(np.isnan(sim[root < 0]))
    dup = root >= 0
    assert np.all((sim[dup] > 0) & (sim[dup] <= 1.0))


# ---------------------------------------------------------------------------
# detection quality on real data
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["sst2", "sms"])
def test_typo_copies_are_matched(request, dataset):
    """300 real 5-20-word sentences x copies with 1, 2 and 3 character edits,
    added after the whole data set: >= 95% point to their original."""
    distinct = request.getfixturevalue(dataset)
    copies, orig, edits = typo_set(distinct, 300, seed=0)
    idx = NearDuplicateIndex()
    r0, _ = idx.add(distinct)
    r1, s1 = idx.add(copies)
    check_invariants(r1, s1, len(distinct))
    target = np.where(r0[orig] >= 0, r0[orig], orig)  # the original's cluster
    hit = r1 == target
    assert hit.mean() >= 0.95, (hit.mean(), [hit[edits == k].mean() for k in (1, 2, 3)])
    assert hit[edits == 1].mean() >= 0.99
    assert np.all(s1[hit] >= idx.threshold)


@pytest.mark.parametrize("dataset", ["sst2", "sms"])
def test_distinct_sentences_are_not_merged(request, dataset):
    """Distinct real sentences (5,000 SST-2; all 5.2k distinct SMS): every pair
    reported really is a near duplicate (true char-3-gram Jaccard >= threshold
    - 0.1, the slack of a 128-permutation estimate), and on SST-2 pairs are rare
    (SMS holds many genuine template variants of the same spam)."""
    texts = request.getfixturevalue(dataset)[:5000]
    idx = NearDuplicateIndex()
    root, sim = idx.add(texts)
    check_invariants(root, sim)
    pairs = np.flatnonzero(root >= 0)
    true_j = np.array([char_jaccard(texts[d], texts[root[d]], 3) for d in pairs])
    if dataset == "sst2":
        assert pairs.size <= 0.005 * len(texts), pairs.size
    assert np.all(true_j >= idx.threshold - 0.1), sorted(true_j)[:5]
    # the similarity reported is the estimate of the true Jaccard
    assert np.all(np.abs(true_j - sim[pairs]) <= 0.2)


def test_word_level_changes_are_not_typos(sst2):
    """Sentences that share words but differ in content stay apart."""
    idx = NearDuplicateIndex()
    root, _ = idx.add(
        [
            "the movie is a masterpiece of modern cinema and a joy to watch .",
            "the movie is a disaster of modern marketing and a chore to sit through .",
            "a joy to watch .",
        ]
    )
    assert root.tolist() == [-1, -1, -1]


# ---------------------------------------------------------------------------
# semantics
# ---------------------------------------------------------------------------
def test_exact_duplicates_after_normalisation():
    idx = NearDuplicateIndex()
    base = "The Quick Brown Fox jumps over the lazy dog"
    variants = [
        base,
        base.upper(),
        "  the quick\tbrown   fox jumps over the lazy dog \n",
        "ｔｈｅ ｑｕｉｃｋ ｂｒｏｗｎ ｆｏｘ ｊｕｍｐｓ ｏｖｅｒ ｔｈｅ ｌａｚｙ ｄｏｇ",  # fullwidth: NFKC
        unicodedata.normalize("NFD", base),
    ]
    root, sim = idx.add(variants)
    assert root.tolist() == [-1, 0, 0, 0, 0]
    assert sim[1:].tolist() == [1.0, 1.0, 1.0, 1.0]
    root, sim = idx.add(["THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG"])
    assert root.tolist() == [0] and sim.tolist() == [1.0]


def test_scan_order_across_calls(sst2):
    rng = random.Random(3)
    a, b, c = sst2[100], sst2[200], sst2[300]
    a2 = typo_copy(a, 1, rng)
    idx = NearDuplicateIndex()
    r, s = idx.add([a, b])
    assert r.tolist() == [-1, -1]
    r, s = idx.add([c, a2, a.upper()])  # ids 2, 3, 4
    assert r.tolist() == [-1, 0, 0]
    assert s[2] == 1.0 and idx.threshold <= s[1] < 1.0
    r, s = idx.add([a2, b + " ", typo_copy(c, 2, rng)])  # ids 5, 6, 7
    assert r.tolist() == [0, 1, 2]  # an exact copy of a near-duplicate points to ITS root
    assert idx.n_docs == 8 and idx.n_roots == 3
    r, s = idx.add([])
    assert r.shape == (0,) and r.dtype == np.int64 and s.dtype == np.float32
    assert idx.n_docs == 8


def test_duplicates_within_one_call(sst2):
    rng = random.Random(4)
    a, b = sst2[10], sst2[20]
    texts = [b, a, typo_copy(a, 1, rng), a, typo_copy(b, 2, rng), typo_copy(a, 3, rng), "", " "]
    root, sim = NearDuplicateIndex().add(texts)
    assert root.tolist()[:5] == [-1, -1, 1, 1, 0]
    assert root[5] in (-1, 1)  # three edits may fall below the threshold
    assert root.tolist()[6:] == [-1, 6]  # empty texts: exact duplicates of each other
    assert sim[3] == 1.0 and sim[7] == 1.0


def test_flood_in_one_call(sst2):
    """2,000 typo'd copies of one sentence in one call point to its first copy."""
    rng = random.Random(5)
    src = "an astonishing , beautifully crafted film that rewards patience ."
    texts = [src] + [typo_copy(src, rng.randint(1, 2), rng) for _ in range(2000)] + sst2[:500]
    root, sim = NearDuplicateIndex().add(texts)
    check_invariants(root, sim)
    assert np.mean(root[1:2001] == 0) >= 0.99
    assert np.all(root[2001:] != 0)


def test_flood_across_calls(sst2):
    """A flood spread over many calls, interleaved with real sentences."""
    rng = random.Random(6)
    src = sst2[42]
    idx = NearDuplicateIndex()
    for c in range(6):
        texts = [typo_copy(src, rng.randint(1, 2), rng) for _ in range(300)] + sst2[c * 200 : (c + 1) * 200]
        if c == 0:
            texts = [src] + texts
        root, sim = idx.add(texts)
        check_invariants(root, sim, idx.n_docs - len(texts))
        first = 1 if c == 0 else 0
        assert np.mean(root[first : first + 300] == 0) >= 0.98  # the first copy, id 0


def test_long_and_odd_texts():
    h = MinHasher()
    long_text = "the quick brown fox jumps over the lazy dog " * 2000  # one text > a chunk
    texts = [long_text, "a\ud800b", "x", long_text[:30000]]
    sig = h.signatures(texts)
    for text, row in zip(texts, sig):
        m = MinHash(num_perm=128, seed=1, hashfunc=shingle_hash)
        m.update_batch(h.shingles(text))
        np.testing.assert_array_equal(row, m.hashvalues)
    root, sim = NearDuplicateIndex().add(texts + [long_text.upper(), "A\ud800B"])
    assert root.tolist() == [-1, -1, -1, 0, 0, 1]


def test_answers_do_not_depend_on_batching(sst2):
    copies, _, _ = typo_set(sst2, 100, seed=1)
    texts = sst2[:3000] + copies + sst2[:50]
    whole = NearDuplicateIndex().add(texts)
    for step in (1000, 257):
        idx = NearDuplicateIndex()
        parts = [idx.add(texts[i : i + step]) for i in range(0, len(texts), step)]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole[0])
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole[1])


def test_persistence_round_trip(sst2, sms):
    copies, _, _ = typo_set(sst2, 100, seed=2)
    first, second = sst2[:3000] + sms[:1000], copies + sst2[2500:3500] + sms[900:1100]
    idx = NearDuplicateIndex()
    for i in range(0, len(first), 700):  # several LSM runs
        idx.add(first[i : i + 700])
    meta2, arrays2 = state_round_trip(*idx.get_state())  # JSON + npz, no pickle anywhere
    restored = NearDuplicateIndex.from_state(meta2, arrays2)
    assert restored.n_docs == idx.n_docs and restored.n_roots == idx.n_roots
    assert (restored.bands, restored.rows, restored.threshold) == (idx.bands, idx.rows, idx.threshold)
    assert all(a.dtype != object for a in arrays2.values())
    for i in range(0, len(second), 500):
        r1, s1 = idx.add(second[i : i + 500])
        r2, s2 = restored.add(second[i : i + 500])
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(s1, s2)
    assert np.any(r1 >= 0)
    with pytest.raises(ValueError):
        NearDuplicateIndex.from_state({**meta2, "version": 99}, arrays2)
    with pytest.raises(ValueError):
        NearDuplicateIndex.from_state(meta2, {**arrays2, "sketches": arrays2["sketches"][:-1]})


def test_lsh_weights_favour_recall_and_persist(sst2):
    idx = NearDuplicateIndex(lsh_weights=(0.2, 0.8))
    assert (idx.bands, idx.rows) == (30, 4)  # datasketch's optimum for those weights
    idx.add(sst2[:500])
    meta, arrays = idx.get_state()
    restored = NearDuplicateIndex.from_state(json.loads(json.dumps(meta)), arrays)
    assert (restored.bands, restored.rows, restored.lsh_weights) == (30, 4, (0.2, 0.8))
    copies, _, _ = typo_set(sst2[:500], 50, seed=9)
    np.testing.assert_array_equal(idx.add(copies)[0], restored.add(copies)[0])


def test_index_memory_per_document(shared_data):
    """<= 500 bytes of index per document at 128 permutations (25k real texts)."""
    texts = parquet_texts(shared_data / "sst2_glue" / "train.parquet")[:15000]
    texts += parquet_texts(shared_data / "ag_news_thunlp" / "train.parquet")[:10000]
    idx = NearDuplicateIndex(num_perm=128)
    for i in range(0, len(texts), 8192):
        idx.add(texts[i : i + 8192])
    assert idx.n_docs == 25000
    assert idx.nbytes / idx.n_docs <= 500, idx.nbytes / idx.n_docs
    meta, arrays = idx.get_state()
    assert sum(a.nbytes for a in arrays.values()) / idx.n_docs <= 500


def test_judged_index_memory_per_document(shared_data):
    """Judging labelled rows indexes at most one entry per distinct text (a root, or a
    statement that is not one): <= 500 bytes per document still, on 25k real texts of which
    15k are GLUE SST-2 phrases (nearly every phrase a statement of its own)."""
    a = pq.read_table(shared_data / "sst2_glue" / "train.parquet", columns=["text", "label"]).slice(0, 15000)
    b = pq.read_table(shared_data / "ag_news_thunlp" / "train.parquet", columns=["text", "label"]).slice(0, 10000)
    texts = a.column("text").to_pylist() + b.column("text").to_pylist()
    labels = np.array([str(v) for v in a.column("label").to_pylist() + b.column("label").to_pylist()], dtype=object)
    _, idx, _ = _judged(texts, labels, 8192)
    assert idx.n_roots + idx.n_statements - int(idx._root_stmt.view.sum()) <= idx.n_docs
    assert idx.nbytes / idx.n_docs <= 500, idx.nbytes / idx.n_docs
    meta, arrays = idx.get_state()
    assert sum(a.nbytes for a in arrays.values()) / idx.n_docs <= 500


def _add_in_steps(idx: NearDuplicateIndex, texts: list[str], step: int) -> tuple[np.ndarray, np.ndarray]:
    parts = [idx.add(texts[i : i + step]) for i in range(0, len(texts), step)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def test_storage_layouts_answer_alike(sst2, monkeypatch):
    """Band runs split one array per band (merged band by band, inputs let go) and
    memory-mapped storage give exactly the answers, state and nbytes of small
    ``(bands, m)`` runs on the heap; the split layout survives a round trip."""
    copies, _, _ = typo_set(sst2, 100, seed=4)
    texts = sst2[:3000] + copies + sst2[:50]
    monkeypatch.setattr(storage, "_MMAP_MIN_BYTES", 1 << 40)
    monkeypatch.setattr(storage, "_SPLIT", 1 << 40)
    heap = NearDuplicateIndex()
    r_heap, s_heap = _add_in_steps(heap, texts, 300)
    assert all(isinstance(r, np.ndarray) for r in heap._bands.runs)
    assert storage._map_of(heap._sketch.data) is None
    monkeypatch.setattr(storage, "_MMAP_MIN_BYTES", 1024)
    monkeypatch.setattr(storage, "_SPLIT", 128)
    mapped = NearDuplicateIndex()
    r_map, s_map = _add_in_steps(mapped, texts, 300)
    assert any(isinstance(r, list) for r in mapped._bands.runs)  # the split layout was merged into
    assert storage._map_of(mapped._sketch.data) is not None
    np.testing.assert_array_equal(r_map, r_heap)
    np.testing.assert_array_equal(s_map, s_heap)
    assert mapped.nbytes == heap.nbytes
    (m1, a1), (m2, a2) = heap.get_state(), mapped.get_state()
    assert m1 == m2 and a1.keys() == a2.keys()
    for k in a1:
        np.testing.assert_array_equal(a1[k], a2[k])
    restored = NearDuplicateIndex.from_state(m2, a2)
    assert isinstance(restored._bands.runs[0], list)
    more = sst2[3000:3600] + copies[:100]
    np.testing.assert_array_equal(_add_in_steps(restored, more, 200)[0], _add_in_steps(heap, more, 200)[0])


def test_invalid_parameters():
    with pytest.raises(ValueError):
        NearDuplicateIndex(threshold=0.0)
    with pytest.raises(ValueError):
        MinHasher(ngram=0)
    with pytest.raises(ValueError):
        MinHasher().lean_minhash(np.zeros(5, np.uint32))


# ---------------------------------------------------------------------------
# statements: judged texts and what they say (label-flipped copies, issue 13)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def glue(shared_data) -> tuple[list[str], np.ndarray]:
    """GLUE SST-2 train, phrase-level: every sub-phrase of a sentence is a row of its own."""
    t = pq.read_table(shared_data / "sst2_glue" / "train.parquet", columns=["text", "label"])
    return t.column("text").to_pylist(), np.array([str(v) for v in t.column("label").to_pylist()], dtype=object)


def _judged(texts: list[str], labels: np.ndarray, step: int, idx=None, kept=None):
    """Texts through the real path (``dedup.index_texts``) in calls of ``step``."""
    idx = NearDuplicateIndex() if idx is None else idx
    kept = RootFeatures() if kept is None else kept
    parts = [index_texts(idx, kept, pa.array(texts[i : i + step]), labels[i : i + step])
             for i in range(0, len(texts), step)]
    cat = lambda f: np.concatenate([getattr(a, f) for a, _, _ in parts])  # noqa: E731
    out = {f: cat(f) for f in ("root", "sim", "new_root", "said", "said_sim", "statement")}
    out["contradicts"] = np.concatenate([c for _, c, _ in parts])
    return out, idx, kept


def _flipped_copies_of_members(texts, labels, n: int, seed: int):
    """Typo'd copies, under the other label, of ``n`` sentences (>= 6 words) of GLUE SST-2
    whose near-duplicate group's first row is a different statement (a sub-phrase, or a
    sentence a fifth shorter or longer): the case a group's first row cannot judge."""
    from shardguard.bench.attacks import typo

    res, _, _ = _judged(texts, labels, 8192)
    lens = np.array([len(normalize_text(t)) for t in texts])
    root = res["root"]
    member = np.flatnonzero((root >= 0) & np.array([len(t.split()) >= 6 for t in texts]))
    unlike = member[np.abs(lens[member] - lens[root[member]]) > 0.2 * lens[member]]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(unlike, n, replace=False)
    copies = [typo(texts[i], rng) for i in chosen]
    flipped = np.array([{"0": "1", "1": "0"}[labels[i]] for i in chosen], dtype=object)
    return chosen, copies, flipped


def test_a_copy_is_judged_by_the_member_that_says_what_it_says(glue):
    """A label-flipped typo'd copy of a GLUE SST-2 sentence whose group starts with another
    statement (a sub-phrase) repeats the sentence itself (``said``): >= 90% are found to
    contradict it, where the group's first row could judge none of them."""
    texts, labels = glue
    chosen, copies, flipped = _flipped_copies_of_members(texts, labels, 60, seed=3)
    res, idx, kept = _judged(texts + copies, np.concatenate([labels, flipped]), 8192)
    n = len(texts)
    said, root, contradicts = res["said"][n:], res["root"][n:], res["contradicts"][n:]
    assert np.mean(contradicts & (root >= 0)) >= 0.9
    # what they repeat is what the copied sentence says (itself, or the earlier statement it
    # repeats) or, where a typo hides the word that tells them apart, an earlier phrase of
    # the same sentence with a word more or less
    source_says = np.where(res["said"][chosen] >= 0, res["said"][chosen], chosen)
    assert np.mean(said == source_says) >= 0.6
    # the group's first row is not what they say: judged by it alone, none would be found
    assert not np.any((said == root) & (said >= 0))
    check_invariants(res["root"], res["sim"])
    assert np.all(res["said"] < np.arange(res["said"].size))  # always an earlier row
    said_sim = res["said_sim"][n:][said >= 0]  # NaN for a copy that is some row verbatim
    assert np.all(said_sim[np.isfinite(said_sim)] >= idx.threshold)


def test_clean_phrases_contradict_almost_nothing(glue):
    """Sub-phrases, negations and word swaps of one GLUE SST-2 sentence under opposite labels
    ("one of the best movies" / "one of the worst movies", "successfully" /
    "unsuccessfully") are different statements: <= 0.05% of the clean rows contradict an
    earlier one (the rows left are the same phrase under two labels)."""
    texts, labels = glue
    res, idx, _ = _judged(texts, labels, 8192)
    flagged = np.flatnonzero(res["contradicts"] & (res["root"] >= 0))
    assert flagged.size <= 0.0005 * len(texts), [(texts[i], texts[res["said"][i]]) for i in flagged[:10]]
    # every row is judged: each is a statement, or repeats an earlier one
    assert np.all(res["statement"] | (res["said"] >= 0))
    assert idx.n_statements == int(res["statement"].sum())


def test_judged_answers_do_not_depend_on_batching(glue):
    texts, labels = glue
    chosen, copies, flipped = _flipped_copies_of_members(texts[:6000], labels[:6000], 40, seed=5)
    t = texts[:6000] + copies + texts[:30]  # exact repeats too
    y = np.concatenate([labels[:6000], flipped, labels[:30][::-1]])
    whole, _, _ = _judged(t, y, len(t))
    for step in (1000, 257):
        parts, _, _ = _judged(t, y, step)
        for k in whole:
            np.testing.assert_array_equal(parts[k], whole[k], err_msg=f"{k}, step {step}")
    assert whole["contradicts"].any()


def test_unjudged_texts_are_answered_as_add_answers(glue):
    """Without labels (or ``judge``) nothing is judged and no statement is indexed: the answers
    are ``add``'s, and unlabelled rows among labelled ones contradict nothing."""
    texts, labels = glue
    t = texts[:3000]
    plain = NearDuplicateIndex().add(t)
    idx = NearDuplicateIndex()
    added = idx.add_judged(t)
    np.testing.assert_array_equal(added.root, plain[0])
    np.testing.assert_array_equal(added.sim, plain[1])
    assert np.all(added.said == -1) and not added.statement.any() and idx.n_statements == 0
    none = np.full(len(t), None, dtype=object)
    res, idx, _ = _judged(t, none, 1000)
    assert idx.n_statements == 0 and not res["contradicts"].any()
    np.testing.assert_array_equal(res["root"], plain[0])


def test_persistence_round_trip_with_statements(glue):
    import copy

    texts, labels = glue
    chosen, copies, flipped = _flipped_copies_of_members(texts[:5000], labels[:5000], 30, seed=8)
    first, more = texts[:5000], copies + texts[4000:6000]
    y_more = np.concatenate([flipped, labels[4000:6000]])
    _, idx, kept = _judged(first, labels[:5000], 700)  # several LSM runs
    kept2 = copy.deepcopy(kept)
    meta, arrays = state_round_trip(*idx.get_state())
    restored = NearDuplicateIndex.from_state(meta, arrays)
    assert restored.n_statements == idx.n_statements > restored.n_roots / 2
    a, _, _ = _judged(more, y_more, 500, idx, kept)
    b, _, _ = _judged(more, y_more, 500, restored, kept2)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert a["contradicts"].sum() >= 25
    with pytest.raises(ValueError):
        NearDuplicateIndex.from_state(meta, {**arrays, "statement_roots": arrays["statement_roots"][:-1]})
