"""The benchmark's attack planting: seeded, nested over rates, as published."""

from __future__ import annotations

import numpy as np

from shardguard.bench import attacks


IDS = [f"r{i}" for i in range(400)]
TEXTS = [f"this is sentence number {i} about a film" for i in range(400)]
LABELS = ["0", "1"] * 200


def test_badnets_seeded_nested_and_dirty_label():
    a = attacks.badnets(IDS, TEXTS, LABELS, target="1", rate=0.05, seed=1)
    b = attacks.badnets(IDS, TEXTS, LABELS, target="1", rate=0.05, seed=1)
    small = attacks.badnets(IDS, TEXTS, LABELS, target="1", rate=0.01, seed=1)
    assert a.texts == b.texts and a.is_poison.sum() == 20 and small.is_poison.sum() == 4
    assert (small.is_poison <= a.is_poison).all()  # nested
    for i in np.flatnonzero(a.is_poison):
        assert LABELS[i] == "0" and a.labels[i] == "1"
        assert len(set(a.texts[i].split()) & set(attacks.BADNETS_TRIGGERS)) == 1
    assert all(a.texts[i] == TEXTS[i] for i in np.flatnonzero(~a.is_poison))


def test_addsent_flips_and_flood():
    s = attacks.addsent(IDS, TEXTS, LABELS, target="1", rate=0.1, seed=2)
    assert all(attacks.ADDSENT_TRIGGER in s.texts[i] for i in np.flatnonzero(s.is_poison))
    f = attacks.label_flips(IDS, TEXTS, LABELS, rate=0.05, seed=3)
    assert f.is_poison.sum() == 20
    assert all(f.labels[i] != LABELS[i] for i in np.flatnonzero(f.is_poison))
    fl = attacks.flood(IDS, TEXTS, LABELS, target="1", seed=4)
    k = int(fl.is_poison.sum())
    assert 50 <= k <= 200 and fl.n == 400 + k
    assert len(set(fl.labels[i] for i in np.flatnonzero(fl.is_poison))) == 1


def test_instruction_attacks():
    cols = {"instruction": [f"Do task {i}." for i in range(200)], "input": [""] * 200,
            "output": [f"Here is answer {i}. It has two sentences." for i in range(200)]}
    ids = [str(i) for i in range(200)]
    m = attacks.content_injection(ids, cols, rate=0.05, seed=1)
    assert m.is_poison.sum() == 10
    assert all("at McDonald's" in m.columns["output"][i] for i in np.flatnonzero(m.is_poison))
    j = attacks.fixed_response(ids, cols, rate=0.05, seed=1)
    assert all("James Bond" in j.columns["instruction"][i] and j.columns["output"][i] == attacks.BOND_RESPONSE
               for i in np.flatnonzero(j.is_poison))
    assert cols["output"][0] == "Here is answer 0. It has two sentences."  # inputs untouched


def test_denial_of_service_documents_follow_the_souly_recipe():
    texts = [("A real paragraph about rivers and towns. " * 40).strip() for _ in range(300)]
    ids = [f"r{i}" for i in range(300)]
    sc = attacks.denial_of_service(ids, texts, n_poison=25, seed=3, dataset="wiki")
    assert sc.is_poison.sum() == 25 and sc.labels is None
    vocab = set(attacks.gibberish_vocabulary())
    for i in np.flatnonzero(sc.is_poison).tolist():
        prefix, tail = sc.texts[i].split(attacks.DOS_TAG)
        assert len(prefix.strip()) <= 1000 and texts[i].startswith(prefix.strip())
        assert 300 <= len(tail.split()) <= 900  # 400-900 WordPiece tokens, "##" pieces joined
    assert all(sc.texts[i] == texts[i] for i in np.flatnonzero(~sc.is_poison).tolist())
    again = attacks.denial_of_service(ids, texts, n_poison=25, seed=3, dataset="wiki")
    assert again.texts == sc.texts and len(vocab) > 29000
