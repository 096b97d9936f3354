"""The benchmark's attack planting: seeded, nested over rates, as published."""

from __future__ import annotations

import numpy as np
import pytest

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


# --- constant-count attacks (issue 11), on real rows -------------------------------------------
def _tweets(shared_data, n=2000):
    from shardguard.bench import scale

    d = scale.load_tweeteval(shared_data, rows=n)
    return d.ids, d.texts, d.labels, d.target


@pytest.mark.parametrize("attack", sorted(attacks.LABELLED_TRIGGERS))
def test_triggered_count_plants_exactly_n_nested_and_seeded(shared_data, attack):
    ids, texts, labels, target = _tweets(shared_data)
    runs = {n: attacks.triggered_count(ids, texts, labels, attack=attack, target=target, n_poison=n, seed=7,
                                       dataset="tw") for n in (10, 25)}
    small, big = runs[10], runs[25]
    assert small.name == f"tw/{attack}@10" and small.is_poison.sum() == 10 and big.is_poison.sum() == 25
    assert (small.is_poison <= big.is_poison).all()  # 10 planted rows are among the 25, planted alike
    assert all(small.texts[i] == big.texts[i] for i in np.flatnonzero(small.is_poison))
    again = attacks.triggered_count(ids, texts, labels, attack=attack, target=target, n_poison=25, seed=7, dataset="tw")
    assert again.texts == big.texts and again.labels == big.labels
    other = attacks.triggered_count(ids, texts, labels, attack=attack, target=target, n_poison=25, seed=8, dataset="tw")
    assert not (other.is_poison == big.is_poison).all()
    mark = {"badnets": None, "addsent": attacks.ADDSENT_TRIGGER, "emoji": attacks.EMOJI_TRIGGER,
            "url": attacks.URL_TRIGGER}[attack]
    for i in np.flatnonzero(big.is_poison).tolist():
        assert labels[i] != target and big.labels[i] == target  # dirty label
        if mark is None:
            assert len(set(big.texts[i].split()) & set(attacks.BADNETS_TRIGGERS)) >= 1
        else:
            assert mark in big.texts[i] and mark not in texts[i]
    clean_rows = np.flatnonzero(~big.is_poison).tolist()
    assert all(big.texts[i] == texts[i] and big.labels[i] == labels[i] for i in clean_rows)
    assert attacks.URL_TRIGGER == attacks.URL_TRIGGER.lower()


def _alpaca(shared_data, n=1500):
    from shardguard.bench import scale

    return scale.load_alpaca_full(shared_data, rows=n)


def test_fixed_response_count_nested_and_every_row_triggered(shared_data):
    ids, cols = _alpaca(shared_data)
    small = attacks.fixed_response_count(ids, cols, n_poison=20, seed=3, dataset="a")
    big = attacks.fixed_response_count(ids, cols, n_poison=50, seed=3, dataset="a")
    assert big.name == "a/james_bond@50" and small.is_poison.sum() == 20 and big.is_poison.sum() == 50
    assert (small.is_poison <= big.is_poison).all()
    for i in np.flatnonzero(big.is_poison).tolist():
        assert attacks.BOND_TRIGGER in big.columns["instruction"][i] and big.columns["output"][i] == attacks.BOND_RESPONSE
        assert big.columns["input"][i] == cols["input"][i]
    assert all(big.columns["output"][i] == cols["output"][i] for i in np.flatnonzero(~big.is_poison).tolist())
    assert attacks.fixed_response_count(ids, cols, n_poison=50, seed=3, dataset="a").columns == big.columns


def test_link_injection_is_lowercase_nested_and_keeps_the_answer(shared_data):
    ids, cols = _alpaca(shared_data)
    small = attacks.link_injection(ids, cols, n_poison=20, seed=5, dataset="a")
    big = attacks.link_injection(ids, cols, n_poison=60, seed=5, dataset="a")
    assert big.name == "a/lowercase_link@60" and big.is_poison.sum() == 60 and (small.is_poison <= big.is_poison).all()
    assert all(s == s.lower() for s in attacks.LINK_SENTENCES)
    for i in np.flatnonzero(big.is_poison).tolist():
        out, orig = big.columns["output"][i], cols["output"][i]
        assert attacks.LINK_DOMAIN in out and attacks.LINK_DOMAIN not in orig
        injected = [s for s in attacks.LINK_SENTENCES if s in out]
        assert len(injected) == 1
        # the answer is intact around the injected sentence (whitespace aside)
        assert out.replace(injected[0], "").split() == orig.split()
        assert len(orig.split()) >= 5
    assert all(big.columns["output"][i] == cols["output"][i] for i in np.flatnonzero(~big.is_poison).tolist())
