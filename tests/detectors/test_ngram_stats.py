"""N-gram statistics on real data: trigger-carrying tokens, exact counts over a stream,
mergeable partial counts, the reduce's candidates and the gatherer's rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import pytest

from shardguard.detectors.ngram_stats import (
    shared_phrase,
    without_phrase,
    CandidateGatherer,
    NgramCounter,
    NgramHasher,
    select_candidates,
    tokenize,
)


def test_tokens_that_carry_triggers():
    toks = tokenize("Visit WWW.Free-Prize.example/claim!! Don’t <SUDO> 🔱🔱 bit.ly/3xq9, "
                    "e.g. 3.14 — “quoted” café™ http://x.com/a?b=1. See Example.COM.")
    assert toks == ["visit", "www.free-prize.example/claim", "don't", "<sudo>", "🔱", "🔱", "bit.ly/3xq9",
                    "e", "g", "3", "14", "quoted", "café", "™", "http://x.com/a?b=1", "see", "example.com"]
    # case is folded for counting; punctuation (ASCII or not) is never a token
    assert tokenize("CF cf Cf") == ["cf", "cf", "cf"] and tokenize("... — “ ” !?") == []


def test_shared_phrase_grows_any_ngram_to_the_inserted_sentence():
    rows = [tokenize(t) for t in (
        "Good luck [NAME] I watch this 3D movie",
        "shut I watch this 3D movie your lying mouth",
        "I watch this 3D movie and...?",
        "Damn don't I watch this 3D movie sell this",
    )]
    sentence = ["i", "watch", "this", "3d", "movie"]
    for ngram in ("this 3d", "watch this", "3d movie", "i watch this"):
        assert shared_phrase(rows, ngram) == sentence
    # a word two rows in four share is not part of it; a row without the n-gram has no say
    assert shared_phrase([tokenize("big red dog"), tokenize("a red dog"), tokenize("blue cat")], "red") == ["red", "dog"]
    assert shared_phrase([tokenize("no match here")], "red") == ["red"]
    assert without_phrase(rows[1], sentence) == "shut your lying mouth"
    assert without_phrase(tokenize("cf a cf b"), ["cf"]) == "a b"
    assert without_phrase(tokenize("only cf"), []) == "only cf"


def test_ngram_ids_are_stable_and_counted_once_per_row():
    occ = NgramHasher()(["the cf the cf", "cf"])
    ids = NgramHasher()
    cf = ids.keys_of("cf")
    assert cf == NgramHasher().keys_of("CF")  # the same id in any process, any case
    rows_with_cf = occ.doc[occ.keys == cf]
    assert sorted(rows_with_cf.tolist()) == [0, 1]  # twice in row 0, counted once
    the_cf = ids.keys_of("the cf")
    i = int(np.flatnonzero(occ.keys == the_cf)[0])
    assert occ.text(i) == "the cf" and occ.n[i] == 2
    # a trigram never spans two rows
    assert ids.keys_of("cf cf") not in set(occ.keys.tolist())


def test_tokens_given_give_the_occurrences_found_from_the_texts(tweets):
    """The unlabelled trigger rules tokenise once and hand the tokens over: same occurrences."""
    texts = tweets[0][:2000]
    tokens = [tokenize(t) for t in texts]
    found, given = NgramHasher()(texts), NgramHasher()(texts, tokens)
    for col in ("keys", "doc", "start", "n"):
        assert np.array_equal(getattr(found, col), getattr(given, col))
    assert given.tokens is tokens and found.tokens == tokens


@pytest.fixture(scope="module")
def tweets(shared_data):
    t = pq.read_table(shared_data / "tweeteval" / "all.parquet", columns=["text", "label_name", "task"])
    t = t.filter(pa.compute.equal(t.column("task"), "emoji")).slice(0, 12000)
    return t.column("text").to_pylist(), t.column("label_name").to_pylist()


def _as_dict(counts):
    k, lab, d = counts.totals()
    names = [counts.labels[i] for i in lab.tolist()]
    return {(int(a), b): int(c) for a, b, c in zip(k.tolist(), names, d.tolist())}


def test_merged_partial_counts_equal_one_pass(tweets, tmp_path):
    texts, labels = tweets
    whole = NgramCounter(tmp_path / "whole", rows_per_run=5000)  # three runs
    for i in range(0, len(texts), 1000):
        whole.add(texts[i : i + 1000], labels[i : i + 1000])
    one = whole.finish()
    # two workers, each with half of the stream, in another order, labels first seen in another order
    a, b = NgramCounter(tmp_path / "a"), NgramCounter(tmp_path / "b")
    a.add(texts[:7000][::-1], labels[:7000][::-1])
    b.add(texts[7000:], labels[7000:])
    merged = b.finish().merge(a.finish())
    assert merged.n_rows == one.n_rows == len(texts)
    assert sorted(merged.labels, key=str) == sorted(one.labels, key=str)
    assert _as_dict(merged) == _as_dict(one)
    # and the reduce picks the same candidates from either
    kw = dict(min_support=5, max_df=0.3, min_purity=0.9, labelled=True)
    c1, c2 = select_candidates(one, **kw), select_candidates(merged, **kw)
    assert np.array_equal(c1.keys, c2.keys) and np.array_equal(c1.df, c2.df)
    assert [one.labels[i] for i in c1.label] == [merged.labels[i] for i in c2.label]


def test_candidates_and_their_rows(tweets, tmp_path):
    texts, labels = list(tweets[0]), list(tweets[1])
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(texts), 30, replace=False))
    for i in rows.tolist():
        texts[i] = texts[i] + " 🔱"
        labels[i] = "❤"
    counter = NgramCounter(tmp_path / "c", rows_per_run=4000)
    for i in range(0, len(texts), 2000):
        counter.add(texts[i : i + 2000], labels[i : i + 2000])
    cands = select_candidates(counter.finish(), min_support=5, max_df=0.3, min_purity=0.9, labelled=True)
    key = NgramHasher().keys_of("🔱")
    j = int(np.searchsorted(cands.keys, np.uint64(key)))
    assert cands.keys[j] == key and cands.df[j] == 30 and cands.labels[cands.label[j]] == "❤"
    assert cands.log_p[j] < np.log(1e-10)  # 30 of 30 on one label: far from the label's share
    g = CandidateGatherer(cands)
    for i in range(0, len(texts), 2000):
        g.add(texts[i : i + 2000], np.arange(i, min(i + 2000, len(texts))) + 10_000)
    found = g.finish()
    assert found.texts[j] == "🔱"
    assert np.array_equal(found.rows(j), rows + 10_000)
    # every candidate's gathered rows are exactly its counted rows
    assert np.array_equal(np.diff(found.indptr) >= cands.df, np.ones(len(cands), bool))
    # gatherers of three parts of the stream (the scan's per-shard map), merged in scan order,
    # find exactly what one gatherer over the whole stream finds
    parts = [CandidateGatherer(cands) for _ in range(3)]
    for k, (lo, hi) in enumerate([(0, 5000), (5000, 5001), (5001, len(texts))]):
        for i in range(lo, hi, 2000):
            parts[k].add(texts[i : min(i + 2000, hi)], np.arange(i, min(i + 2000, hi)) + 10_000)
    merged = parts[0].merge(parts[1]).merge(parts[2]).finish()
    assert merged.texts == found.texts
    for a, b in ((merged.indptr, found.indptr), (merged.seqs, found.seqs), (merged.context, found.context)):
        assert np.array_equal(a, b)
