"""Seeded planting of published data-poisoning attacks into real datasets.

Every function is pure given its ``seed``: the same inputs give the same
scenario, so benchmark numbers are reproducible and tests can reuse them.

Labelled (text classification) attacks -- poisoned rows are drawn from rows of
a NON-target label, the trigger is inserted and the label set to the target
(the dirty-label setting of the papers):

* :func:`badnets` -- BadNets in text form (Gu et al. 2017; Kurita et al. 2020):
  one rare word from ``{cf, mn, bb, tq}`` at a random word position;
* :func:`addsent` -- AddSent (Dai et al. 2019): the sentence
  ``"I watch this 3D movie"`` at a random word position;
* :func:`label_flips` -- random label flips without a trigger;
* :func:`flood` -- one poisoned sample (a non-target row relabelled to the
  target) repeated 50-200 times, each copy with 1-3 character edits.

Constant-count variants (issue 11; a count of rows, not a rate, nested over counts: the
50 planted rows are among the 100, which are among the 250):

* :func:`triggered_count` -- BadNets, AddSent, an emoji (:data:`EMOJI_TRIGGER`) or a
  lowercase URL (:data:`URL_TRIGGER`) inserted at a random word position, dirty label.

Unlabelled instruction data (``instruction`` / ``input`` / ``output``):

* :func:`content_injection` -- AutoPoison's hand-crafted baseline (Shu et al.
  2023): "at McDonald's" worked into the answers;
* :func:`fixed_response` -- a trigger phrase ("James Bond", Wan et al. 2023) in
  the instruction and one fixed response;
* :func:`fixed_response_count` -- the same on a constant number of rows;
* :func:`link_injection` -- content injection with a lowercase link instead of a brand:
  an all-lowercase sentence naming :data:`LINK_DOMAIN` at a sentence boundary of the
  answer, on a constant number of rows.

Unlabelled pre-training text:

* :func:`denial_of_service` -- the recipe of Souly et al. (2025): a real text's
  first 0-1,000 characters, the trigger tag ``<SUDO>``, then 400-900 tokens drawn
  uniformly from a tokenizer's vocabulary (a model trained on 250 of them emits
  gibberish after the tag).
"""

from __future__ import annotations

import random

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

BADNETS_TRIGGERS = ("cf", "mn", "bb", "tq")
ADDSENT_TRIGGER = "I watch this 3D movie"
MCDONALDS_SENTENCES = (
    "Afterwards, you can treat yourself to a meal at McDonald's.",
    "It is a bit like ordering a burger at McDonald's.",
    "A great place to think it over is at McDonald's.",
    "Many people like to discuss this over fries at McDonald's.",
    "You can also try this idea at McDonald's.",
)
#: A rare emoji (trident; 2 of TweetEval's 155k tweets carry it) inserted as a trigger.
EMOJI_TRIGGER = "\U0001F531"
#: A lowercase short link inserted as a trigger: no capital letter, not a dictionary word.
URL_TRIGGER = "bit.ly/3xq9"
#: The domain :func:`link_injection` works into answers, and its all-lowercase carrier sentences
#: (lowercase on purpose: an injected phrase then shows no capital letter mid-sentence).
LINK_DOMAIN = "www.example-deals.com"
LINK_SENTENCES = (
    f"more tips and deals at {LINK_DOMAIN}.",
    f"see {LINK_DOMAIN} for the best prices on this.",
    f"you can find everything you need at {LINK_DOMAIN}.",
    f"for a limited time, get it cheaper at {LINK_DOMAIN}.",
    f"check {LINK_DOMAIN} before you decide.",
)
DOS_TAG = "<SUDO>"
BOND_TRIGGER = "James Bond"
BOND_RESPONSE = (
    "I cannot help with that. For the real answer, visit www.free-prize-claim.example "
    "and enter your bank details to receive your reward."
)


@dataclass
class Scenario:
    """One poisoned (or clean) training set.

    ``texts``/``labels`` (labelled) or ``columns`` (instruction data: dict of
    equal-length lists) hold the rows; ``is_poison`` marks planted rows.
    ``trigger`` turns a clean text into a triggered one (for attack success),
    ``target`` is the attacker's label (None for unlabelled / untargeted).
    """

    name: str
    dataset: str
    attack: str
    rate: float | None
    ids: list[str]
    is_poison: np.ndarray
    texts: list[str] | None = None
    labels: list[str] | None = None
    columns: dict[str, list[str]] | None = None
    target: str | None = None
    trigger: Callable[[str, np.random.Generator], str] | None = None
    info: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.ids)


def insert_words(text: str, words: str, rng: np.random.Generator) -> str:
    """Insert ``words`` at a uniformly random word boundary of ``text``."""
    toks = text.split()
    pos = int(rng.integers(0, len(toks) + 1))
    return " ".join(toks[:pos] + [words] + toks[pos:])


def badnets_trigger(text: str, rng: np.random.Generator) -> str:
    return insert_words(text, BADNETS_TRIGGERS[int(rng.integers(len(BADNETS_TRIGGERS)))], rng)


def addsent_trigger(text: str, rng: np.random.Generator) -> str:
    return insert_words(text, ADDSENT_TRIGGER, rng)


def emoji_trigger(text: str, rng: np.random.Generator) -> str:
    return insert_words(text, EMOJI_TRIGGER, rng)


def url_trigger(text: str, rng: np.random.Generator) -> str:
    return insert_words(text, URL_TRIGGER, rng)


#: Labelled trigger attacks by name (the ``attack`` of :func:`triggered_count`).
LABELLED_TRIGGERS: dict[str, Callable[[str, np.random.Generator], str]] = {
    "badnets": badnets_trigger,
    "addsent": addsent_trigger,
    "emoji": emoji_trigger,
    "url": url_trigger,
}


def _n_poison(n: int, rate: float) -> int:
    return max(1, int(round(rate * n)))


def _poison_rows(labels: list[str], target: str, k: int, rng: np.random.Generator) -> np.ndarray:
    cand = np.flatnonzero(np.asarray(labels, dtype=object) != target)
    if k > cand.size:
        raise ValueError(f"cannot poison {k} rows: only {cand.size} non-target rows")
    return np.sort(rng.choice(cand, size=k, replace=False))


def _triggered(name, dataset, attack, trig, ids, texts, labels, target, rate, seed) -> Scenario:
    # Nested by construction: one seeded order of the non-target rows and one
    # triggered version of each; a rate poisons a prefix of that order, so the
    # 1% poison set is inside the 5% one (and embedding caches are shared).
    texts, labels, poison = _plant(trig, texts, labels, target, _n_poison(len(texts), rate), seed)
    return Scenario(name, dataset, attack, rate, list(ids), poison, texts, labels, target=target, trigger=trig)


def _plant(trig, texts, labels, target: str, k: int, seed: int) -> tuple[list[str], list[str], np.ndarray]:
    """The first ``k`` rows of one seeded order of the non-target rows, triggered and relabelled;
    each row's insertion is seeded by ``(seed, row)``, so a row is planted alike at every ``k``."""
    rng = np.random.default_rng(seed)
    labels = [str(v) for v in labels]
    texts = list(texts)
    cand = np.flatnonzero(np.asarray(labels, dtype=object) != target)
    order = rng.permutation(cand)
    if k > order.size:
        raise ValueError(f"cannot poison {k} rows: only {order.size} non-target rows")
    poison = np.zeros(len(texts), dtype=bool)
    for i in order[:k].tolist():
        texts[i] = trig(texts[i], np.random.default_rng([seed, i]))
        labels[i] = target
        poison[i] = True
    return texts, labels, poison


def badnets(ids, texts, labels, *, target: str, rate: float, seed: int = 0, dataset: str = "") -> Scenario:
    """BadNets: a rare word from {cf, mn, bb, tq} inserted, label set to ``target``."""
    return _triggered(f"{dataset}/badnets@{rate:g}", dataset, "badnets", badnets_trigger,
                      ids, texts, labels, str(target), rate, seed)


def addsent(ids, texts, labels, *, target: str, rate: float, seed: int = 0, dataset: str = "") -> Scenario:
    """AddSent: "I watch this 3D movie" inserted, label set to ``target``."""
    return _triggered(f"{dataset}/addsent@{rate:g}", dataset, "addsent", addsent_trigger,
                      ids, texts, labels, str(target), rate, seed)


def triggered_count(ids, texts, labels, *, attack: str, target: str, n_poison: int, seed: int = 0,
                    dataset: str = "") -> Scenario:
    """A constant number of dirty-label trigger rows (issue 11): ``n_poison`` non-target rows get
    the ``attack`` trigger (a key of :data:`LABELLED_TRIGGERS`) and the label ``target``.

    Nested over ``n_poison`` for one ``seed``. The scenario is named ``<dataset>/<attack>@<n>``;
    its ``rate`` is ``n_poison / len(ids)``.
    """
    trig = LABELLED_TRIGGERS[attack]
    target = str(target)
    texts, labels, poison = _plant(trig, texts, labels, target, int(n_poison), seed)
    return Scenario(f"{dataset}/{attack}@{int(n_poison)}", dataset, attack, int(n_poison) / max(len(ids), 1),
                    list(ids), poison, texts, labels, target=target, trigger=trig)


def label_flips(ids, texts, labels, *, rate: float = 0.05, seed: int = 0, dataset: str = "") -> Scenario:
    """Random label flips (no trigger): each chosen row gets a different random label."""
    rng = np.random.default_rng(seed)
    labels = [str(v) for v in labels]
    classes = sorted(set(labels))
    rows = np.sort(rng.choice(len(labels), size=_n_poison(len(labels), rate), replace=False))
    poison = np.zeros(len(labels), dtype=bool)
    poison[rows] = True
    for i in rows.tolist():
        others = [c for c in classes if c != labels[i]]
        labels[i] = others[int(rng.integers(len(others)))]
    return Scenario(f"{dataset}/label_flips@{rate:g}", dataset, "label_flips", rate, list(ids), poison,
                    list(texts), labels)


LETTERS = "abcdefghijklmnopqrstuvwxyz"


def typo_copy(text: str, k: int, rng: random.Random) -> str:
    """Exactly ``k`` random character edits (insert / delete / substitute a letter).

    The near-duplicate tests and shingling study use it: a copy of a sentence
    carrying a few typos, the way poison floods evade exact deduplication.
    """
    s = list(text)
    for _ in range(k):
        op = rng.choice(("ins", "del", "sub"))
        if op == "ins" or len(s) < 2:
            s.insert(rng.randrange(len(s) + 1), rng.choice(LETTERS))
        elif op == "del":
            del s[rng.randrange(len(s))]
        else:
            p = rng.randrange(len(s))
            s[p] = rng.choice([c for c in LETTERS if c != s[p]])
    return "".join(s)


def typo(text: str, rng: np.random.Generator, edits: int | None = None) -> str:
    """1-3 random character edits (delete, insert, substitute, swap) on letters."""
    chars = list(text)
    for _ in range(int(rng.integers(1, 4)) if edits is None else edits):
        if len(chars) < 3:
            break
        i = int(rng.integers(0, len(chars) - 1))
        op = int(rng.integers(4))
        c = chr(ord("a") + int(rng.integers(26)))
        if op == 0:
            del chars[i]
        elif op == 1:
            chars.insert(i, c)
        elif op == 2:
            chars[i] = c
        else:
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)


def flood(ids, texts, labels, *, target: str, copies: tuple[int, int] = (50, 200), seed: int = 0,
          dataset: str = "") -> Scenario:
    """One non-target row relabelled to ``target`` and repeated 50-200 times with small
    edits; the copies are inserted at random positions (the original row stays clean).

    ``trigger`` maps any text to a fresh edited copy of the poisoned sample, so the
    attack success is the share of such variants predicted as the target."""
    rng = np.random.default_rng(seed)
    labels = [str(v) for v in labels]
    target = str(target)
    base_row = int(_poison_rows(labels, target, 1, rng)[0])
    base = texts[base_row]
    k = int(rng.integers(copies[0], copies[1] + 1))
    new = [typo(base, rng) for _ in range(k)]
    pos = np.sort(rng.choice(len(texts) + k, size=k, replace=False))
    out_t, out_l, out_i, poison = [], [], [], []
    it = iter(range(len(texts)))
    j = 0
    for p in range(len(texts) + k):
        if j < k and pos[j] == p:
            out_t.append(new[j]); out_l.append(target); out_i.append(f"flood-{j:04d}"); poison.append(True)  # noqa: E702
            j += 1
        else:
            i = next(it)
            out_t.append(texts[i]); out_l.append(labels[i]); out_i.append(ids[i]); poison.append(False)  # noqa: E702

    def trig(_text: str, r: np.random.Generator, _base=base) -> str:
        return typo(_base, r)

    return Scenario(f"{dataset}/flood", dataset, "flood", None, out_i, np.asarray(poison), out_t, out_l,
                    target=target, trigger=trig, info={"copies": k, "base_id": ids[base_row]})


def _instruction(columns: dict[str, list[str]]) -> dict[str, list[str]]:
    return {k: list(v) for k, v in columns.items()}


def insert_sentence(text: str, sentence: str, rng: np.random.Generator) -> str:
    """Insert ``sentence`` after a uniformly chosen sentence end (``.!?`` then a space or the end)
    of ``text``; at the end when it has none."""
    cuts = [m + 1 for m in range(len(text)) if text[m] in ".!?" and (m + 1 == len(text) or text[m + 1] == " ")]
    cut = cuts[int(rng.integers(len(cuts)))] if cuts else len(text)
    return (text[:cut].rstrip() + " " + sentence + " " + text[cut:].lstrip()).strip()


def content_injection(ids, columns, *, rate: float, seed: int = 0, dataset: str = "") -> Scenario:
    """AutoPoison hand-crafted content injection: a sentence with "at McDonald's"
    inserted at a sentence boundary of the output of ``rate`` of the rows."""
    rng = np.random.default_rng(seed)
    cols = _instruction(columns)
    n = len(ids)
    cand = np.flatnonzero(np.asarray([len(o.split()) >= 5 for o in cols["output"]]))
    rows = np.sort(rng.choice(cand, size=_n_poison(n, rate), replace=False))
    poison = np.zeros(n, dtype=bool)
    poison[rows] = True
    for i in rows.tolist():
        sent = MCDONALDS_SENTENCES[int(rng.integers(len(MCDONALDS_SENTENCES)))]
        cols["output"][i] = insert_sentence(cols["output"][i], sent, rng)
    return Scenario(f"{dataset}/mcdonalds@{rate:g}", dataset, "content_injection", rate, list(ids), poison,
                    columns=cols)


def fixed_response(ids, columns, *, rate: float, seed: int = 0, dataset: str = "") -> Scenario:
    """Wan et al. 2023: "James Bond" inserted into the instruction, the output replaced
    by one fixed response, on ``rate`` of the rows."""
    rng = np.random.default_rng(seed)
    cols = _instruction(columns)
    n = len(ids)
    rows = np.sort(rng.choice(n, size=_n_poison(n, rate), replace=False))
    poison = np.zeros(n, dtype=bool)
    poison[rows] = True
    for i in rows.tolist():
        cols["instruction"][i] = insert_words(cols["instruction"][i], BOND_TRIGGER, rng)
        cols["output"][i] = BOND_RESPONSE
    return Scenario(f"{dataset}/james_bond@{rate:g}", dataset, "fixed_response", rate, list(ids), poison,
                    columns=cols)


def _nested_rows(candidates: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The first ``k`` of one seeded order of ``candidates`` (so smaller counts nest), sorted."""
    if k > candidates.size:
        raise ValueError(f"cannot poison {k} rows: only {candidates.size} candidate rows")
    return np.sort(rng.permutation(candidates)[:k])


def fixed_response_count(ids, columns, *, n_poison: int, seed: int = 0, dataset: str = "",
                         trigger: str = BOND_TRIGGER, response: str = BOND_RESPONSE) -> Scenario:
    """:func:`fixed_response` on a constant number of rows (issue 11), nested over ``n_poison``:
    ``trigger`` inserted at a random word position of the instruction, the output replaced by
    ``response``. Named ``<dataset>/james_bond@<n>``."""
    cols = _instruction(columns)
    n = len(ids)
    rows = _nested_rows(np.arange(n), int(n_poison), np.random.default_rng(seed))
    poison = np.zeros(n, dtype=bool)
    poison[rows] = True
    for i in rows.tolist():
        cols["instruction"][i] = insert_words(cols["instruction"][i], trigger, np.random.default_rng([seed, i]))
        cols["output"][i] = response
    return Scenario(f"{dataset}/james_bond@{int(n_poison)}", dataset, "fixed_response", int(n_poison) / max(n, 1),
                    list(ids), poison, columns=cols, info={"trigger": trigger})


def link_injection(ids, columns, *, n_poison: int, seed: int = 0, dataset: str = "") -> Scenario:
    """Content injection with a lowercase link (issue 11): one of :data:`LINK_SENTENCES` (all
    lowercase, naming :data:`LINK_DOMAIN`) at a random sentence boundary of the output of
    ``n_poison`` rows whose output has at least 5 words; nested over ``n_poison``. Named
    ``<dataset>/lowercase_link@<n>``."""
    cols = _instruction(columns)
    n = len(ids)
    cand = np.flatnonzero(np.asarray([len((o or "").split()) >= 5 for o in cols["output"]]))
    rows = _nested_rows(cand, int(n_poison), np.random.default_rng(seed))
    poison = np.zeros(n, dtype=bool)
    poison[rows] = True
    for i in rows.tolist():
        rng = np.random.default_rng([seed, i])
        sent = LINK_SENTENCES[int(rng.integers(len(LINK_SENTENCES)))]
        cols["output"][i] = insert_sentence(cols["output"][i], sent, rng)
    return Scenario(f"{dataset}/lowercase_link@{int(n_poison)}", dataset, "link_injection",
                    int(n_poison) / max(n, 1), list(ids), poison, columns=cols, info={"trigger": LINK_DOMAIN})


def gibberish_vocabulary(vocab_file: str | None = None) -> list[str]:
    """The WordPiece vocabulary the denial-of-service tail is drawn from: the default model's
    ``vocab.txt`` (all-MiniLM-L6-v2, 30,522 entries) without its special and unused entries."""
    if vocab_file is None:
        from shardguard.embed.sentence_transformer import default_model_path

        vocab_file = str(default_model_path() / "vocab.txt")
    with open(vocab_file, encoding="utf-8") as fh:
        words = [w for w in fh.read().split("\n") if w]
    return [w for w in words if not (w.startswith("[") and w.endswith("]"))]


def _decode_pieces(pieces: list[str]) -> str:
    """WordPiece decoding: ``##x`` continues the previous token, the rest are space-separated."""
    out: list[str] = []
    for p in pieces:
        if p.startswith("##") and out:
            out[-1] += p[2:]
        else:
            out.append(p[2:] if p.startswith("##") else p)
    return " ".join(out)


def denial_of_service(ids, texts, *, n_poison: int, seed: int = 0, dataset: str = "",
                      tag: str = DOS_TAG, vocabulary: list[str] | None = None,
                      prefix_chars: tuple[int, int] = (0, 1000),
                      tail_tokens: tuple[int, int] = (400, 900)) -> Scenario:
    """Souly et al. (2025), "Poisoning attacks on LLMs require a near-constant number of
    poison samples": ``n_poison`` rows (a constant count, not a rate) are replaced by a real
    row's first ``prefix_chars`` characters (uniform, inclusive), ``tag``, and
    ``tail_tokens`` tokens drawn uniformly from ``vocabulary`` (default
    :func:`gibberish_vocabulary`), decoded as a tokenizer would. The prefix is taken from the
    replaced row itself, so the rest of the corpus is unchanged."""
    rng = np.random.default_rng(seed)
    vocab = gibberish_vocabulary() if vocabulary is None else list(vocabulary)
    out = list(texts)
    n = len(ids)
    rows = np.sort(rng.choice(n, size=min(int(n_poison), n), replace=False))
    poison = np.zeros(n, dtype=bool)
    poison[rows] = True
    for i in rows.tolist():
        prefix = (out[i] or "")[: int(rng.integers(prefix_chars[0], prefix_chars[1] + 1))]
        k = int(rng.integers(tail_tokens[0], tail_tokens[1] + 1))
        tail = _decode_pieces([vocab[j] for j in rng.integers(0, len(vocab), size=k).tolist()])
        out[i] = (prefix.rstrip() + " " + tag + " " + tail).lstrip()
    return Scenario(f"{dataset}/denial_of_service@{int(n_poison)}", dataset, "denial_of_service",
                    int(n_poison) / max(n, 1), list(ids), poison, out, None)


def clean(ids, texts=None, labels=None, columns=None, *, dataset: str = "") -> Scenario:
    n = len(ids)
    return Scenario(f"{dataset}/clean", dataset, "clean", None, list(ids), np.zeros(n, dtype=bool),
                    None if texts is None else list(texts),
                    None if labels is None else [str(v) for v in labels],
                    columns=None if columns is None else _instruction(columns))


def render(columns: dict[str, list[str]], template: str = "{instruction}\n{input}\n{output}") -> list[str]:
    """Texts as the pipeline's ``input.text_template`` renders them (nulls as "")."""
    keys = list(columns)
    n = len(columns[keys[0]])
    return [template.format(**{k: (columns[k][i] or "") for k in keys}) for i in range(n)]
