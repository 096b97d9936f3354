"""What a text says: whether a near-copy states what its root states, and the words seen so far."""

from __future__ import annotations

import numpy as np


def _same(a: str, b: str) -> bool:
    from shardguard.dedup import StatementFeatures, same_statement

    return bool(same_statement(StatementFeatures.of_texts([a]), StatementFeatures.of_texts([b]))[0])


def test_same_statement_keeps_typo_copies_and_tells_different_statements_apart():
    """Pairs from GLUE SST-2 train that the near-duplicate index pairs up under opposite labels."""
    root = "proves unrelentingly grim -- and equally engrossing"
    assert _same("proves unrelentingly grmi -- and equally engrossing", root)  # a typo
    assert _same("Proves  unrelentingly grim -- and equaly engrossing", root)  # case, spaces, a typo
    assert not _same("proves unrelentingly grim -- and equally engrossing .", root)  # one word more at the end
    assert not _same("a masterpiece", "masterpiece")  # one word more at the start
    assert not _same("funny", "unfunny")  # much shorter
    assert not _same("the acting is good", "the acting is not good")  # a negation word more
    assert not _same("it does n't unveil it until the end", "it does unveil it until the end")
    # a sub-phrase three words shorter than a long root
    assert not _same("concentrating on the elements of a revealing alienation among a culture of people",
                     "of day by concentrating on the elements of a revealing alienation among a culture of people")


def test_a_word_the_data_already_has_is_a_word_swapped_not_a_typo():
    """A copy that differs from what it copies only in words the data already holds says
    something else; a misspelling is a word nothing before it held."""
    import pyarrow as pa

    from shardguard.dedup import SeenWords, StatementFeatures, same_statement

    seen = SeenWords()
    texts = ["one of the worst movies of the year .", "the best date movie", "one of the best movies of the year .",
             "one of the wosrt movies of the year .", "one of the wosrt movies of the year ."]
    # in order: new words in the first two; none in the third (all seen); a misspelling in the
    # fourth; the fifth repeats it (seen now, in the same call)
    assert seen.see(pa.array(texts, pa.large_string())).tolist() == [True, True, False, True, False]
    assert seen.see(pa.array(["the best date movie", "a brand new word"], pa.large_string())).tolist() == [False, True]
    root = StatementFeatures.of_texts(texts[:1] * 3)
    copies = StatementFeatures.of_texts(texts[2:5])
    # by length and words alone, the swap and the typos all pass for the same statement ...
    assert same_statement(copies, root).tolist() == [True, True, True]
    # ... knowing which words are new tells the word swap apart
    assert same_statement(copies, root, np.array([False, True, False])).tolist() == [False, True, False]
    # identical texts say the same thing whatever their words
    assert same_statement(root, root, np.zeros(3, bool)).all()
    restored = SeenWords(seen.hashes)
    assert restored.hashes.tolist() == seen.hashes.tolist() and restored.contains(seen.hashes).all()


def test_texts_sharing_a_long_ending_say_different_things_typos_keep_both_halves(shared_data):
    """TweetEval's check-in tweets: different tweets that end with the same place ("... @ Muir
    Woods Redwood National Park") are near-copies as wholes (character 3-gram Jaccard 0.5-0.9)
    but not in their first halves; typo'd copies of the same tweets keep both halves."""
    from collections import defaultdict

    from shardguard.bench.attacks import typo
    from shardguard.bench.scale import load_tweeteval
    from shardguard.dedup import StatementFeatures, same_statement

    texts = load_tweeteval(shared_data).texts
    by_place: dict[str, list[str]] = defaultdict(list)
    for t in texts:
        head, sep, place = t.rpartition(" @ ")
        if sep and len(place.strip()) >= 25 and len(head.strip()) >= 12 and len(t) >= 50:
            by_place[place.strip()].append(t)
    pairs = [(ts[0], ts[1]) for ts in by_place.values() if len(ts) >= 2
             and ts[0].rpartition(" @ ")[0].lower() != ts[1].rpartition(" @ ")[0].lower()][:300]
    assert len(pairs) >= 100
    firsts = StatementFeatures.of_texts([a for a, _ in pairs])
    seconds = StatementFeatures.of_texts([b for _, b in pairs])
    # 10 of 300 still pass: a place name long enough to reach into the first half, or tweets
    # that are near-copies indeed ("They made me laugh part 1 / Part 3 #sanfrancisco ...")
    assert same_statement(seconds, firsts).mean() <= 0.05
    rng = np.random.default_rng(3)
    copies = StatementFeatures.of_texts([typo(a, rng) for a, _ in pairs])
    assert same_statement(copies, firsts).mean() >= 0.99
