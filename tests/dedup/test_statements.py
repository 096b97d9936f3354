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
