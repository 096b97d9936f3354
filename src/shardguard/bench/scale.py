"""Issue 11's scale benchmark: constant-count attacks hidden in the larger shared sets.

Real attacks do not scale with the corpus (Souly et al. 2025: 250 documents whatever the
model's size; fine-tuning attacks: 50-90 rows), so every attack here plants a constant
number of rows (:data:`COUNTS`), not a rate, into corpora of 49k-241k rows:

* ``tweeteval`` -- TweetEval's ``emoji`` task (:data:`TWEETEVAL_TASK`), the only one of its
  seven tasks with enough rows (100,000: train 45k, val 5k, test 50k; the next largest,
  offensive, has 14k and sentiment's train split is missing from the shared copy). The
  corpus is train + test (95,000 tweets, 20 labels named by their emoji); val is held out
  for the downstream model;
* ``goemotions`` -- GoEmotions, the first of each comment's labels (28 names); corpus =
  train + test (48,837), dev held out;
* ``alpaca_full`` -- all 52,002 Stanford Alpaca records;
* ``templated`` -- an instruction corpus built the way FLAN and T0 are
  (:func:`templated_corpus`): TweetEval and GoEmotions rows wrapped in natural prompt
  templates, answers = class names;
* ``wikipedia`` -- 241,162 English Wikipedia paragraphs, unlabelled.

Labelled corpora carry BadNets, AddSent, an emoji and a lowercase-URL trigger (dirty label,
:func:`~shardguard.bench.attacks.triggered_count`); the instruction corpora a trigger plus a
fixed response, Alpaca also a lowercase link injected into answers; Wikipedia the
denial-of-service recipe. Every corpus is also scanned clean. :func:`scale_cases` lists them
lazily, one corpus in memory at a time; ``benchmarks/poison_bench.py --scale`` scans them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shardguard.bench import attacks, suite

#: Poisoned rows per attack: constant counts, as in the attacks they stand for.
COUNTS = (50, 100, 250)
TWEETEVAL_TASK = "emoji"
#: The attackers' labels: mid-frequency classes (3.1% and 4.9% of the corpus rows), so a clean
#: model rarely predicts them for a random row and attack success is visible against it.
TWEETEVAL_TARGET = "\U0001F384"  # the Christmas tree emoji
GOEMOTIONS_TARGET = "gratitude"
LABELLED_ATTACKS = tuple(attacks.LABELLED_TRIGGERS)
INSTRUCTION_TEMPLATE = suite.ALPACA_TEMPLATE
#: Corpora in benchmark order (largest last).
CORPORA = ("tweeteval", "goemotions", "alpaca_full", "templated", "wikipedia")
#: The quarantine reasons that count as catching a planted row, by attack ("recall by the expected
#: reason"). The denial-of-service detector's reason is added here when it lands.
EXPECTED_REASONS: dict[str, tuple[str, ...]] = {
    **{a: ("trigger",) for a in LABELLED_ATTACKS},
    "fixed_response": ("trigger",),
    "link_injection": ("trigger",),
    "denial_of_service": ("gibberish",),
    "clean": (),
}

Verbalizer = dict[str, str] | None  # label name -> answer; None: the label name itself

# --- the templated (FLAN / T0 style) corpus ----------------------------------------------------
# (instruction, input, answers) per template: "{text}" is the row's text, "{target}" a stance
# target. Some templates carry the text in the instruction, some in the input, as in FLAN.
_YES_NO = {"yes": "yes", "no": "no"}
_CAP_YES_NO = {"yes": "Yes", "no": "No"}


def _binary(positive: str, negative: str, words: dict[str, str]) -> dict[str, str]:
    return {positive: words["yes"], negative: words["no"]}


def _capitalised(names: list[str]) -> dict[str, str]:
    return {n: n.capitalize() for n in names}


_EMOTION = ["anger", "joy", "optimism", "sadness"]
_STANCE = ["none", "against", "favor"]
_SENTIMENT = ["negative", "neutral", "positive"]
_GOEMOTIONS = ["admiration", "amusement", "anger", "annoyance", "approval", "caring", "confusion", "curiosity",
               "desire", "disappointment", "disapproval", "disgust", "embarrassment", "excitement", "fear",
               "gratitude", "grief", "joy", "love", "nervousness", "optimism", "pride", "realization", "relief",
               "remorse", "sadness", "surprise", "neutral"]

TEMPLATES: dict[str, list[tuple[str, str, Verbalizer]]] = {
    "sentiment": [
        ("What is the sentiment of this tweet?\n{text}", "", None),
        ("Classify the sentiment of the following tweet as negative, neutral or positive.", "{text}", None),
        ("Tweet: {text}\nIs the sentiment of this tweet positive, negative or neutral?", "", None),
        ("{text}\n\nHow does the author of this tweet feel? Options: positive, neutral, negative.", "", None),
        ("Does the following tweet express a positive, negative or neutral opinion?", "{text}",
         _capitalised(_SENTIMENT)),
        ("Read the tweet and answer with its sentiment.", "{text}", None),
    ],
    "offensive": [
        ("Tweet: {text}\nIs this tweet offensive? Answer yes or no.", "",
         _binary("offensive", "not-offensive", _YES_NO)),
        ("Is the following tweet offensive?", "{text}", _binary("offensive", "not-offensive", _CAP_YES_NO)),
        ("{text}\n\nDoes this tweet contain offensive language? yes or no", "",
         _binary("offensive", "not-offensive", _YES_NO)),
        ("Classify the tweet as offensive or not offensive.", "{text}",
         {"offensive": "offensive", "not-offensive": "not offensive"}),
        ("Would a moderator consider this tweet offensive?\n{text}", "",
         _binary("offensive", "not-offensive", _CAP_YES_NO)),
        ("Label the tweet: offensive or not-offensive.", "{text}", None),
    ],
    "hate": [
        ("Tweet: {text}\nIs this tweet hate speech? Answer yes or no.", "", _binary("hate", "not-hate", _YES_NO)),
        ("Does the following tweet contain hate speech against immigrants or women?", "{text}",
         _binary("hate", "not-hate", _CAP_YES_NO)),
        ("{text}\n\nIs this hateful? yes or no", "", _binary("hate", "not-hate", _YES_NO)),
        ("Classify this tweet as hate or not-hate.", "{text}", None),
        ("Is the following text hate speech?", "{text}", _binary("hate", "not-hate", _YES_NO)),
        ("Does this tweet express hatred towards a group?\n{text}", "", _binary("hate", "not-hate", _CAP_YES_NO)),
    ],
    "irony": [
        ("Tweet: {text}\nIs this tweet ironic? Answer yes or no.", "", _binary("irony", "non_irony", _YES_NO)),
        ("Is the following tweet ironic?", "{text}", _binary("irony", "non_irony", _CAP_YES_NO)),
        ("{text}\n\nIs the author being ironic? yes or no", "", _binary("irony", "non_irony", _YES_NO)),
        ("Classify the tweet as ironic or not ironic.", "{text}", {"irony": "ironic", "non_irony": "not ironic"}),
        ("Does this tweet use irony?\n{text}", "", _binary("irony", "non_irony", _CAP_YES_NO)),
        ("Irony detection: does the tweet below say the opposite of what it means?", "{text}",
         _binary("irony", "non_irony", _YES_NO)),
    ],
    "emotion": [
        ("Which emotion does this tweet express: anger, joy, optimism or sadness?\n{text}", "", None),
        ("Tweet: {text}\nWhat emotion is the author feeling?", "", None),
        ("Classify the emotion of the following tweet.", "{text}", None),
        ("{text}\n\nOptions: anger, joy, optimism, sadness. Which one fits this tweet best?", "", None),
        ("What is the main emotion in this tweet?", "{text}", _capitalised(_EMOTION)),
        ("Read the tweet and name the emotion it conveys.", "{text}", None),
    ],
    "stance": [
        ("Tweet: {text}\nWhat is the stance of this tweet towards {target}? favor, against or none", "", None),
        ("Does the following tweet support or oppose {target}?", "{text}",
         {"favor": "support", "against": "oppose", "none": "neither"}),
        ("{text}\n\nIs the author in favor of {target}, against it, or neither?", "",
         {"favor": "in favor", "against": "against", "none": "neither"}),
        ("Classify the stance of the tweet on {target} as favor, against or none.", "{text}", None),
        ("What does the author of this tweet think about {target}?", "{text}", _capitalised(_STANCE)),
        ("Stance detection. Target: {target}.", "{text}", None),
    ],
    "emoji": [
        ("Which emoji would the author add to this tweet?\n{text}", "", None),
        ("Tweet: {text}\nPredict the emoji that goes with this tweet.", "", None),
        ("Suggest an emoji for the following tweet.", "{text}", None),
        ("{text}\n\nWhat emoji best fits this tweet?", "", None),
        ("Add the most likely emoji to this tweet.", "{text}", None),
        ("What emoji was removed from this tweet?", "{text}", None),
    ],
    "goemotions": [
        ("What emotion does this comment express?\n{text}", "", None),
        ("Reddit comment: {text}\nWhich emotion best describes it?", "", None),
        ("Classify the emotion of the following Reddit comment.", "{text}", None),
        ("{text}\n\nWhat is the author feeling?", "", None),
        ("Name the emotion in this comment.", "{text}", _capitalised(_GOEMOTIONS)),
        ("Which of the 28 GoEmotions categories fits this comment best?", "{text}", None),
    ],
}
#: TweetEval's stance targets as a prompt names them.
STANCE_TARGETS = {"abortion": "legal abortion", "atheism": "atheism", "climate": "climate change action",
                  "feminist": "the feminist movement", "hillary": "Hillary Clinton"}


@dataclass
class ScaleCase:
    """One scan of the scale benchmark.

    ``data`` holds the held-out rows of a labelled corpus (for the downstream model; None
    otherwise); ``expected`` the quarantine reasons meant to catch the planted rows.
    """

    scenario: attacks.Scenario
    corpus: str
    data: suite.LabelledData | None
    expected: tuple[str, ...]

    @property
    def kind(self) -> str:
        """``labelled``, ``instruction`` (instruction / input / output columns) or ``text``."""
        sc = self.scenario
        return "instruction" if sc.columns is not None else "labelled" if sc.labels is not None else "text"


# --- loaders -------------------------------------------------------------------------------------
def _read(path: Path, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(path, columns=columns)


def _first_label(table: pa.Table) -> list[str]:
    """GoEmotions' first label name of each row (``label`` is e.g. ``"2,27"``)."""
    return [names[0] for names in table.column("label_names").to_pylist()]


def _held_out(name: str, ids, texts, labels, ev_texts, ev_labels, target: str, seed: int,
              rows: int | None) -> suite.LabelledData:
    """A labelled corpus whose held-out rows are split in two seeded halves: one measures clean
    accuracy, the other (its non-target rows, triggered) attack success."""
    order = np.random.default_rng(seed).permutation(len(ev_texts))
    half = order[: len(order) // 2], order[len(order) // 2:]
    pick = lambda v, idx: [v[i] for i in idx.tolist()]  # noqa: E731
    cut = slice(None) if rows is None else slice(0, rows)
    return suite.LabelledData(name, list(ids)[cut], list(texts)[cut], list(labels)[cut],
                              pick(ev_texts, half[0]), pick(ev_labels, half[0]),
                              pick(ev_texts, half[1]), pick(ev_labels, half[1]), target)


def load_tweeteval(data_dir: str | Path, *, task: str = TWEETEVAL_TASK, target: str = TWEETEVAL_TARGET,
                   rows: int | None = None, seed: int = 0) -> suite.LabelledData:
    """TweetEval ``task``: corpus = its train then test rows, labels = label names; held out =
    val (halves: accuracy, attack success). ``rows`` keeps the first rows of the corpus (tests)."""
    t = _read(Path(data_dir) / "tweeteval" / "all.parquet")
    t = t.filter(pc.equal(t.column("task"), task))
    parts = {s: t.filter(pc.equal(t.column("split"), s)) for s in ("train", "test", "val")}
    corpus = pa.concat_tables([parts["train"], parts["test"]])
    ev = parts["val"]
    return _held_out("tweeteval", corpus.column("id").to_pylist(), corpus.column("text").to_pylist(),
                     corpus.column("label_name").to_pylist(), ev.column("text").to_pylist(),
                     ev.column("label_name").to_pylist(), target, seed, rows)


def load_goemotions(data_dir: str | Path, *, target: str = GOEMOTIONS_TARGET, rows: int | None = None,
                    seed: int = 0) -> suite.LabelledData:
    """GoEmotions with each comment's first label: corpus = train then test, held out = dev."""
    t = _read(Path(data_dir) / "goemotions" / "all.parquet")
    parts = {s: t.filter(pc.equal(t.column("split"), s)) for s in ("train", "test", "dev")}
    corpus = pa.concat_tables([parts["train"], parts["test"]])
    ev = parts["dev"]
    return _held_out("goemotions", corpus.column("id").to_pylist(), corpus.column("text").to_pylist(),
                     _first_label(corpus), ev.column("text").to_pylist(), _first_label(ev), target, seed, rows)


def load_alpaca_full(data_dir: str | Path, rows: int | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """All 52,002 Alpaca records: ids and the instruction / input / output columns (nulls as "")."""
    t = _read(Path(data_dir) / "alpaca_full" / "train.parquet")
    if rows is not None:
        t = t.slice(0, rows)
    return t.column("id").to_pylist(), {k: [v or "" for v in t.column(k).to_pylist()]
                                         for k in ("instruction", "input", "output")}


def load_wikipedia(data_dir: str | Path, rows: int | None = None) -> tuple[list[str], list[str]]:
    """Wikipedia 2021 paragraphs: ids and texts (241,162 rows)."""
    t = _read(Path(data_dir) / "wikipedia_2021" / "train.parquet", ["id", "text"])
    if rows is not None:
        t = t.slice(0, rows)
    return t.column("id").to_pylist(), [v or "" for v in t.column("text").to_pylist()]


def templated_corpus(data_dir: str | Path, *, emoji_rows: int = 10_000, goemotions_rows: int = 20_000,
                     rows: int | None = None, seed: int = 0) -> tuple[list[str], dict[str, list[str]]]:
    """An instruction corpus made the way FLAN (Wei et al. 2022) and T0 (Sanh et al. 2022) are:
    each row of a classification task rendered with one of the task's prompt templates
    (:data:`TEMPLATES`, six per task, drawn uniformly and seeded), the answer being the class's
    name or a verbalizer of it ("yes" / "No" / "not ironic" / "joy" / an emoji).

    Rows: every row of TweetEval's sentiment, offensive, hate, irony, emotion and five stance
    tasks (55,170), ``emoji_rows`` of its emoji task and ``goemotions_rows`` GoEmotions
    comments (first label), both seeded samples: 85,170 rows by default, in that order.
    Ids are ``tpl-<source id>``. ``rows`` keeps a seeded sample of that many (tests).

    Returns (ids, {"instruction", "input", "output"}: lists of str).
    """
    rng = np.random.default_rng(seed)
    d = Path(data_dir)
    tw = _read(d / "tweeteval" / "all.parquet").to_pydict()
    src: list[tuple[str, str, str, str]] = []  # (id, text, label name, task)
    emoji = [i for i, task in enumerate(tw["task"]) if task == "emoji"]
    keep_emoji = set(rng.choice(emoji, size=min(emoji_rows, len(emoji)), replace=False).tolist())
    for i, task in enumerate(tw["task"]):
        if task != "emoji" or i in keep_emoji:
            src.append((f"tweeteval/{tw['id'][i]}", tw["text"][i] or "", tw["label_name"][i], task))
    ge = _read(d / "goemotions" / "all.parquet")
    ge_names = _first_label(ge)
    ge_ids, ge_texts = ge.column("id").to_pylist(), ge.column("text").to_pylist()
    for i in np.sort(rng.choice(len(ge_ids), size=min(goemotions_rows, len(ge_ids)), replace=False)).tolist():
        src.append((f"goemotions/{ge_ids[i]}", ge_texts[i] or "", ge_names[i], "goemotions"))
    if rows is not None:
        src = [src[i] for i in np.sort(rng.choice(len(src), size=min(rows, len(src)), replace=False)).tolist()]
    ids: list[str] = []
    cols: dict[str, list[str]] = {"instruction": [], "input": [], "output": []}
    for sid, text, label, task in src:
        family, _, stance_target = task.partition("/")
        templates = TEMPLATES[family]
        instruction, inp, answers = templates[int(rng.integers(len(templates)))]
        fields = {"text": text, "target": STANCE_TARGETS.get(stance_target, "")}
        ids.append(f"tpl-{sid}")
        cols["instruction"].append(instruction.format(**fields))
        cols["input"].append(inp.format(**fields))
        cols["output"].append(label if answers is None else answers[label])
    return ids, cols


# --- scenarios -------------------------------------------------------------------------------------
def scenario_names(corpus: str, counts=COUNTS) -> list[str]:
    """The scenario names of ``corpus`` in benchmark order, known without loading anything."""
    attacks_of = {
        "tweeteval": LABELLED_ATTACKS,
        "goemotions": LABELLED_ATTACKS,
        "alpaca_full": ("james_bond", "lowercase_link"),
        "templated": ("james_bond",),
        "wikipedia": ("denial_of_service",),
    }[corpus]
    return [f"{corpus}/clean"] + [f"{corpus}/{a}@{n}" for a in attacks_of for n in counts]


def _labelled_cases(data: suite.LabelledData, counts) -> Iterator[tuple[str, Callable[[], attacks.Scenario]]]:
    yield f"{data.name}/clean", lambda: attacks.clean(data.ids, data.texts, data.labels, dataset=data.name)
    for attack in LABELLED_ATTACKS:
        seed = suite.seed_of(f"{data.name}/{attack}/count")  # one seed over counts: nested
        for n in counts:
            yield f"{data.name}/{attack}@{n}", lambda attack=attack, n=n, seed=seed: attacks.triggered_count(
                data.ids, data.texts, data.labels, attack=attack, target=data.target, n_poison=n, seed=seed,
                dataset=data.name)


def _instruction_cases(dataset: str, ids, cols, counts, link: bool):
    yield f"{dataset}/clean", lambda: attacks.clean(ids, columns=cols, dataset=dataset)
    seed = suite.seed_of(f"{dataset}/bond/count")
    for n in counts:
        yield f"{dataset}/james_bond@{n}", lambda n=n: attacks.fixed_response_count(
            ids, cols, n_poison=n, seed=seed, dataset=dataset)
    if link:
        seed_l = suite.seed_of(f"{dataset}/link/count")
        for n in counts:
            yield f"{dataset}/lowercase_link@{n}", lambda n=n: attacks.link_injection(
                ids, cols, n_poison=n, seed=seed_l, dataset=dataset)


def _wikipedia_cases(ids, texts, counts):
    yield "wikipedia/clean", lambda: attacks.clean(ids, texts, dataset="wikipedia")
    for n in counts:
        yield f"wikipedia/denial_of_service@{n}", lambda n=n: attacks.denial_of_service(
            ids, texts, n_poison=n, seed=suite.seed_of(f"wikipedia/dos/{n}"), dataset="wikipedia")


def _corpus_cases(data_dir, corpus: str, counts, rows: int | None):
    """(name, build) pairs of ``corpus`` after loading it, and its held-out data (or None)."""
    if corpus == "tweeteval":
        data = load_tweeteval(data_dir, rows=rows)
        return list(_labelled_cases(data, counts)), data
    if corpus == "goemotions":
        data = load_goemotions(data_dir, rows=rows)
        return list(_labelled_cases(data, counts)), data
    if corpus == "alpaca_full":
        return list(_instruction_cases("alpaca_full", *load_alpaca_full(data_dir, rows), counts, link=True)), None
    if corpus == "templated":
        return list(_instruction_cases("templated", *templated_corpus(data_dir, rows=rows), counts, link=False)), None
    if corpus == "wikipedia":
        return list(_wikipedia_cases(*load_wikipedia(data_dir, rows), counts)), None
    raise ValueError(corpus)


def scale_cases(data_dir: str | Path, counts=COUNTS, only: Callable[[str], bool] | None = None,
                rows: int | None = None, corpora=CORPORA) -> Iterator[ScaleCase]:
    """The scale benchmark's scans in order, built one at a time (a corpus is loaded only when
    one of its scenario names passes ``only``; ``rows`` truncates every corpus, for tests)."""
    for corpus in corpora:
        wanted = [n for n in scenario_names(corpus, counts) if only is None or only(n)]
        if not wanted:
            continue
        cases, data = _corpus_cases(data_dir, corpus, counts, rows)
        for name, build in cases:
            if name not in wanted:
                continue
            sc = build()
            assert sc.name == name, (sc.name, name)
            yield ScaleCase(sc, corpus, data, EXPECTED_REASONS[sc.attack])


# --- what a scan reads ----------------------------------------------------------------------------
def shard_table(sc: attacks.Scenario) -> pa.Table:
    """The scenario as one Parquet-ready table: ``id`` and ``text`` (+ ``label``), or ``id`` and
    the instruction columns; every column a string."""
    cols: dict[str, list] = {"id": sc.ids}
    if sc.columns is not None:
        cols.update(sc.columns)
    else:
        cols["text"] = sc.texts
        if sc.labels is not None:
            cols["label"] = sc.labels
    return pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()})


def scan_overrides(sc: attacks.Scenario) -> dict[str, str]:
    """The ``input.*`` settings a user scanning :func:`shard_table`'s file would give (the
    embedder stays the default)."""
    out = {"input.id_column": "id"}
    if sc.columns is not None:
        out["input.text_template"] = INSTRUCTION_TEMPLATE
        out["input.response_column"] = "output"  # the template's response, as a user would name it
    elif sc.labels is not None:
        out["input.label_column"] = "label"
    return out
