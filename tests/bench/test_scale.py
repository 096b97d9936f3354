"""Issue 11's scale benchmark: corpora, the templated instruction corpus, the scenario list and
what a scan of it reads, on small slices of the real sets."""

from __future__ import annotations

import collections

import numpy as np
import pyarrow.parquet as pq
import pytest

from shardguard.bench import attacks, scale
from shardguard.config import load_config
from shardguard.pipeline import scan


def test_tweeteval_is_the_emoji_task_with_val_held_out(shared_data):
    d = scale.load_tweeteval(shared_data)
    assert len(d.ids) == 95_000 and len(set(d.ids)) == 95_000  # emoji train 45k + test 50k
    assert all(i.startswith(("emoji_train_", "emoji_test_")) for i in d.ids[:: 997])
    assert len(set(d.labels)) == 20 and d.target in set(d.labels)
    # val (5,000) is held out, split in two halves: accuracy and attack success
    assert len(d.dev_texts) == len(d.test_texts) == 2_500
    assert not set(d.dev_texts + d.test_texts) <= set(d.texts)
    assert 0.02 < collections.Counter(d.labels)[d.target] / len(d.labels) < 0.05
    again = scale.load_tweeteval(shared_data)
    assert again.dev_texts == d.dev_texts  # seeded halves


def test_goemotions_uses_the_first_label(shared_data):
    d = scale.load_goemotions(shared_data)
    t = pq.read_table(shared_data / "goemotions" / "all.parquet").to_pandas()
    corpus = t[t["split"] != "dev"]
    assert len(d.ids) == len(corpus) == 48_837 and len(d.dev_texts) + len(d.test_texts) == (t["split"] == "dev").sum()
    multi = corpus[corpus["label"].str.contains(",")].iloc[0]
    i = d.ids.index(multi["id"])
    assert d.labels[i] == multi["label_names"][0] != multi["label_names"][1]
    assert d.target == "gratitude" and len(set(d.labels)) == 28


def test_templated_corpus_wraps_rows_in_several_templates_with_class_name_answers(shared_data):
    ids, cols = scale.templated_corpus(shared_data, rows=3000, seed=0)
    assert len(ids) == len(set(ids)) == 3000 and {len(v) for v in cols.values()} == {3000}
    assert all(len(t) >= 5 for t in scale.TEMPLATES.values())
    again = scale.templated_corpus(shared_data, rows=3000, seed=0)
    assert again == (ids, cols)
    assert scale.templated_corpus(shared_data, rows=3000, seed=1)[1] != cols
    # every answer is a class name or its verbalizer; prompts share templates, answers repeat
    answers = set()
    for family, templates in scale.TEMPLATES.items():
        for _, _, verbalizer in templates:
            answers |= set(verbalizer.values()) if verbalizer else set()
    names = set(pq.read_table(shared_data / "tweeteval" / "all.parquet", columns=["label_name"])
                .column("label_name").to_pylist()) | set(scale._GOEMOTIONS)
    assert set(cols["output"]) <= answers | names
    assert len(set(cols["output"])) < 120 and collections.Counter(cols["output"]).most_common(1)[0][1] > 100
    # the source text is in the instruction or the input, never lost
    tasks = collections.Counter(i.split("/")[1].split("_")[0] for i in ids if i.startswith("tpl-tweeteval/"))
    assert {"sentiment", "offensive", "hate", "irony", "emotion", "emoji"} <= set(tasks)
    assert sum(i.startswith("tpl-goemotions/") for i in ids) > 300
    for k in ("instruction", "input"):
        assert all("{" + f not in v for v in cols[k] for f in ("text}", "target}"))
    both = [a + b for a, b in zip(cols["instruction"], cols["input"])]
    assert sum("Hillary Clinton" in t or "feminist" in t or "abortion" in t for t in both) > 10


def test_full_templated_corpus_size(shared_data):
    ids, cols = scale.templated_corpus(shared_data)
    assert len(ids) == 85_170 == len(cols["output"])  # 55,170 non-emoji tweets + 10k emoji + 20k GoEmotions


def test_scale_cases_list_every_corpus_clean_and_attacked(shared_data):
    cases = list(scale.scale_cases(shared_data, counts=(5, 12), rows=800))
    names = [c.scenario.name for c in cases]
    assert names == [n for corpus in scale.CORPORA for n in scale.scenario_names(corpus, (5, 12))]
    # 2 labelled corpora x (clean + 4 attacks x 2 counts), Alpaca clean + 2 x 2, templated and Wikipedia 1 + 2
    assert len(names) == 2 * 9 + 5 + 3 + 3
    by = {c.scenario.name: c for c in cases}
    for name, case in by.items():
        sc = case.scenario
        assert sc.n == 800
        if sc.attack == "clean":
            assert not sc.is_poison.any() and case.expected == ()
        else:
            expected = ("gibberish",) if sc.attack == "denial_of_service" else ("trigger",)
            assert sc.is_poison.sum() == int(name.rsplit("@", 1)[1]) and case.expected == expected
    assert {c.kind for c in cases} == {"labelled", "instruction", "text"}
    assert by["tweeteval/emoji@12"].data.target == scale.TWEETEVAL_TARGET
    assert by["goemotions/url@5"].scenario.target == scale.GOEMOTIONS_TARGET
    dos = by["wikipedia/denial_of_service@12"].scenario
    assert all(attacks.DOS_TAG in dos.texts[i] for i in np.flatnonzero(dos.is_poison))
    link = by["alpaca_full/lowercase_link@12"].scenario
    assert all(attacks.LINK_DOMAIN in link.columns["output"][i] for i in np.flatnonzero(link.is_poison))
    bond = by["templated/james_bond@5"].scenario
    assert all(attacks.BOND_TRIGGER in bond.columns["instruction"][i] for i in np.flatnonzero(bond.is_poison))
    # --only: a corpus with no wanted name is not even loaded
    only = list(scale.scale_cases(shared_data, counts=(5,), rows=800, only=lambda n: n.startswith("goemotions/url")))
    assert [c.scenario.name for c in only] == ["goemotions/url@5"]


@pytest.mark.parametrize("name", ["tweeteval/url@10", "templated/james_bond@10", "wikipedia/clean"])
def test_scan_reads_each_kind_as_a_user_would(shared_data, tmp_path, name):
    """The shard and input settings the harness scans, through the real scan (default embedder,
    a small slice): labels read for labelled data, the instruction template rendered, plain text
    otherwise."""
    case = next(scale.scale_cases(shared_data, counts=(10,), rows=400, only=lambda n: n == name))
    sc = case.scenario
    pq.write_table(scale.shard_table(sc), tmp_path / "s.parquet")
    res = scan([tmp_path / "s.parquet"], tmp_path / "out", load_config(None, scale.scan_overrides(sc)))
    assert res.report["totals"]["rows"] == 400 and res.report["totals"]["invalid"] == 0
    assert res.report["embedder"]["kind"] == "static"
    scores = pq.read_table(tmp_path / "out" / "scores" / "s.parquet").sort_by("row").to_pydict()
    assert scores["id"] == sc.ids
    assert scores["label"] == (sc.labels if case.kind == "labelled" else [None] * 400)
    quar = pq.read_table(tmp_path / "out" / "quarantine" / "s.parquet").to_pandas()
    planted = set(np.flatnonzero(sc.is_poison).tolist())
    if case.kind == "instruction":
        rows = [r for r in quar.itertuples() if r.row in planted]
        assert rows, "the fixed response is found at 10 of 400 rows"
        rendered = attacks.render(sc.columns, scale.INSTRUCTION_TEMPLATE)
        for r in rows:  # the quarantine list shows the rendered template (cut at review.text_chars)
            assert len(r.text) >= 150 and rendered[r.row].startswith(r.text)
            assert rendered[r.row].endswith("\n" + attacks.BOND_RESPONSE)
