"""Whether near-copies agree on one text: ``consensus_agreement``, which tells a flood of
one edited text from rows that fill one frame with their own content.
"""

from __future__ import annotations

import difflib
import os
from collections import Counter
from typing import Any, Sequence

from shardguard.dedup.normalize import normalize_texts

#: Each text is cut to this many characters of its normalised text (an edited copy's edits are
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
