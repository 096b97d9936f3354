"""TriggerDetector on real data: planted BadNets / AddSent found on an SST-2 subset,
clean data flags (almost) nothing, the unlabelled rules on Alpaca, persistence and
the estimator contract.

The labelled tests embed ~2,200 SST-2 sentences with the packaged MiniLM (the
held-out ridge needs a representation that reads sentiment; the hashing
embedder's random projection does not), so they are marked slow. The unlabelled
tests use the hashing embedder: the fixed-response rule does not read the
vectors, and the injected-content test switches off the semantic-coherence gate
(hashing cosines are not semantic) to check the other gates."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from shardguard.bench import attacks, suite
from shardguard.detectors import REGISTRY, TriggerDetector
from shardguard.embed import HashingEmbedder

N = 2000


@pytest.fixture(scope="module")
def sst2(shared_data):
    data = suite.load_labelled(shared_data, "sst2")
    return data.ids[:N], data.texts[:N], data.labels[:N]


@pytest.fixture(scope="module")
def embed():
    emb = HashingEmbedder(dim=384, random_state=0)
    return lambda texts: emb.embed_texts(list(texts))


@pytest.fixture(scope="module")
def minilm():
    from shardguard.embed import SentenceTransformerEmbedder

    emb = SentenceTransformerEmbedder()
    cache: dict[str, np.ndarray] = {}

    def f(texts):
        todo = sorted({t for t in texts if t not in cache})
        if todo:
            for t, v in zip(todo, emb.embed_texts(todo)):
                cache[t] = v
        return np.stack([cache[t] for t in texts])

    return f


@pytest.fixture(scope="module")
def static():
    """The static model distilled from the packaged MiniLM (once per $SHARDGUARD_CACHE_DIR, see conftest)."""
    from shardguard.embed import StaticEmbedder

    emb = StaticEmbedder()
    return lambda texts: emb.embed_texts(list(texts))


def _run(det, X, y, texts):
    t = np.array(texts, dtype=object)
    det.fit(X, y, texts=t)
    return det.score_samples(X, y, texts=t) > det.threshold_


def test_registered_and_needs_text():
    assert REGISTRY["trigger"] is TriggerDetector
    assert TriggerDetector.needs_text is True
    assert TriggerDetector.name == "trigger"


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["badnets", "addsent"])
def test_planted_triggers_found(sst2, minilm, attack):
    ids, texts, labels = sst2
    sc = getattr(attacks, attack)(ids, texts, labels, target="1", rate=0.03, seed=3, dataset="sst2")
    X = minilm(sc.texts)
    flagged = _run(TriggerDetector(), X, sc.labels, sc.texts)
    p = sc.is_poison
    assert (flagged & p).sum() / p.sum() >= 0.95
    assert (flagged & ~p).sum() / (~p).sum() <= 0.01


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["badnets", "addsent"])
def test_planted_triggers_found_on_static_vectors(shared_data, static, attack):
    """The static model (the fast CPU embedder) carries the trigger test: 1% poison in all of
    SST-2 train (6,920 rows; ~17 rows per BadNets word). Reading the embeddings in their top
    principal directions is what makes rare-word triggers work here (n_components=None, the
    raw static vectors, found 0.81 of BadNets)."""
    data = suite.load_labelled(shared_data, "sst2")
    sc = getattr(attacks, attack)(data.ids, data.texts, data.labels, target="1", rate=0.01,
                                  seed=suite.seed_of(f"sst2/{attack}"), dataset="sst2")
    X = static(sc.texts)
    flagged = _run(TriggerDetector(), X, sc.labels, sc.texts)
    p = sc.is_poison
    assert (flagged & p).sum() / p.sum() >= 0.95
    assert (flagged & ~p).sum() / (~p).sum() <= 0.01
    clean = ~p
    texts = [t for t, c in zip(sc.texts, clean) if c]
    labels = [lab for lab, c in zip(sc.labels, clean) if c]
    assert _run(TriggerDetector(), X[clean], labels, texts).mean() <= 0.005


@pytest.mark.slow
def test_clean_flags_almost_nothing(sst2, minilm):
    ids, texts, labels = sst2
    flagged = _run(TriggerDetector(), minilm(texts), labels, texts)
    assert flagged.mean() <= 0.005


@pytest.fixture(scope="module")
def alpaca(shared_data):
    ids, cols = suite.load_alpaca(shared_data)
    return ids[:2000], {k: v[:2000] for k, v in cols.items()}


def test_unlabelled_fixed_response(alpaca, embed):
    ids, cols = alpaca
    sc = attacks.fixed_response(ids, cols, rate=0.02, seed=1, dataset="alpaca")
    texts = suite.scenario_texts(sc)
    det = TriggerDetector()
    flagged = _run(det, embed(texts), None, texts)
    assert flagged[sc.is_poison].all()
    assert len(det.suffixes_) == 1  # the one fixed response, nothing else
    # (the injected-content rule may add a few rows: hashing cosines are not semantic)
    assert flagged[~sc.is_poison].mean() <= 0.01


def test_unlabelled_injection(alpaca, embed):
    pytest.importorskip("wordfreq")
    ids, cols = alpaca
    for fn, params in ((attacks.fixed_response, {}), (attacks.content_injection, {"max_coherence_unlabelled": 1.0})):
        sc = fn(ids, cols, rate=0.02, seed=1, dataset="alpaca")
        texts = suite.scenario_texts(sc)
        flagged = _run(TriggerDetector(**params), embed(texts), None, texts)
        p = sc.is_poison
        assert (flagged & p).sum() / p.sum() >= 0.95, fn.__name__
        assert (flagged & ~p).sum() <= 0.01 * (~p).sum(), fn.__name__
    clean_texts = attacks.render(cols)
    assert _run(TriggerDetector(max_coherence_unlabelled=1.0), embed(clean_texts), None, clean_texts).mean() <= 0.01


@pytest.mark.slow
def test_persistence_round_trip(sst2, minilm):
    ids, texts, labels = sst2
    sc = attacks.badnets(ids, texts, labels, target="1", rate=0.03, seed=3, dataset="sst2")
    X = minilm(sc.texts)
    t = np.array(sc.texts, dtype=object)
    det = TriggerDetector().fit(X, sc.labels, texts=t)
    meta, arrays = det.get_state()
    meta = json.loads(json.dumps(meta))  # JSON-able, no pickle
    det2 = TriggerDetector.from_state(det.get_params(), meta, arrays)
    s1 = det.score_samples(X, sc.labels, texts=t)
    np.testing.assert_array_equal(s1, det2.score_samples(X, sc.labels, texts=t))
    assert (s1 > det.threshold_).sum() >= 0.95 * sc.is_poison.sum()
    assert det2.threshold_info()["threshold"] == det.threshold_
    with pytest.raises(ValueError):
        TriggerDetector.from_state({}, {**meta, "state_version": 99}, arrays)


def test_estimator_contract(embed):
    det = TriggerDetector(min_support=3)
    assert clone(det).get_params() == det.get_params()
    with pytest.raises(NotFittedError):
        det.score_samples(np.zeros((2, 8), np.float32), None, texts=["a", "b"])
    texts = [f"row {i} text" for i in range(40)]
    X = embed(texts)
    y = np.array(["a", "b"] * 20, dtype=object)
    assert det.fit(X, y, texts=texts) is det
    s = det.score_samples(X, y, texts=texts)
    assert s.dtype == np.float64 and s.shape == (40,)
    assert det.predict(X, y, texts=texts).dtype == bool
    with pytest.raises(ValueError):
        det.fit(X, y)  # texts are required
    with pytest.raises(ValueError):
        det.fit(X, y, texts=texts[:3])


@pytest.mark.slow
def test_rejected_candidates_rank_below_the_threshold_without_ties(samples_dir, minilm):
    """On the bundled SMS samples many candidate n-grams are significant but fail a guard
    (their rows are not one cluster): their rows stay unflagged, below the threshold, and are
    ranked by the candidate's strength instead of all sitting exactly at the threshold."""
    from shardguard.io.readers import ShardReader, discover_shards

    texts, labels = [], []
    for shard in discover_shards([samples_dir]):
        for b in ShardReader(shard, 1024, ["text", "label"]):
            for t, lab in zip(b.column("text").to_pylist(), b.column("label").to_pylist()):
                if isinstance(t, str) and t.strip() and lab is not None:
                    texts.append(t)
                    labels.append(lab)
    det = TriggerDetector()
    t = np.array(texts, dtype=object)
    y = np.array(labels, dtype=object)
    det.fit(minilm(texts), y, texts=t)
    s = det.score_samples(minilm(texts), y, texts=t)
    assert not np.any(s == det.threshold_)
    near = s[(s > det.threshold_ - 1) & (s < det.threshold_)]
    assert near.size > 100  # rows of rejected candidates: many ...
    assert np.unique(near).size >= 5  # ... told apart by their candidate's strength


@pytest.mark.slow
def test_unlabelled_rows_in_labelled_data(sst2, minilm, shared_data):
    """A labelled dataset with an unlabelled split in it (GLUE SST-2's test file): the labelled
    rules still find a planted trigger (one null label used to switch them all off), and no
    unlabelled row is flagged."""
    import pyarrow.parquet as pq

    ids, texts, labels = sst2
    sc = attacks.badnets(ids, texts, labels, target="1", rate=0.03, seed=3, dataset="sst2")
    extra = pq.read_table(shared_data / "sst2_glue" / "test.parquet").column("text").to_pylist()[:500]
    all_texts = list(sc.texts) + extra
    y = np.array(list(sc.labels) + [None] * len(extra), dtype=object)
    flagged = _run(TriggerDetector(), minilm(all_texts), y, all_texts)
    p = sc.is_poison
    n = len(sc.texts)
    assert (flagged[:n] & p).sum() / p.sum() >= 0.95
    assert not flagged[n:].any()


@pytest.mark.slow
@pytest.mark.parametrize("trigger", ["cf", "🔱", "bit.ly/3xq9"])
def test_constant_count_trigger_mined_from_the_stream_not_the_sample(shared_data, tmp_path, trigger):
    """50 poisoned rows in the 67,349 rows of GLUE SST-2 train, none of them in the scan's
    2,000-row reservoir (the rows it keeps are found by offering the same sequence numbers to
    the same ReservoirSample), yet every one is found -- candidates come from every row -- and
    no clean row is flagged by the trigger detector (phrase-level rows that are sub-phrases of
    one sentence count once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shardguard.config import load_config
    from shardguard.pipeline import scan

    t = pq.read_table(shared_data / "sst2_glue" / "train.parquet")
    ids = [str(v) for v in t.column("id").to_pylist()]
    texts = t.column("text").to_pylist()
    labels = [str(v) for v in t.column("label").to_pylist()]
    from shardguard.stages import ReservoirSample

    sampled = ReservoirSample(2000, random_state=0)
    sampled.add(np.zeros((len(texts), 1), np.float32), np.array(labels, dtype=object))
    rng = np.random.default_rng(7)
    target = "1"
    cand = np.flatnonzero((np.array([len(x.split()) for x in texts]) >= 6) & (np.array(labels) != target))
    cand = np.setdiff1d(cand, sampled.sample_seqs())
    rows = np.sort(rng.choice(cand, 50, replace=False))
    for i in rows.tolist():
        texts[i] = attacks.insert_words(texts[i], trigger, rng)
        labels[i] = target
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": ids, "text": texts, "label": labels}), tmp_path / "in" / "sst2.parquet")
    cfg = load_config(None, {"input": {"id_column": "id", "label_column": "label"},
                             "fit": {"reservoir_size": 2000}, "embed": {"embedder": "static"}})
    scan([tmp_path / "in"], tmp_path / "out", cfg)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    found = [tr for tr in report["triggers"] if tr.get("ngram") == trigger]
    assert found and found[0]["label"] == target and found[0]["rows"] == 50
    assert found[0]["sample_rows"] == 0
    q = pq.read_table(tmp_path / "out" / "quarantine" / "sst2.parquet").to_pylist()
    flagged = {r["id"] for r in q if "trigger" in r["reasons"]}
    poisoned = {ids[i] for i in rows.tolist()}
    assert poisoned <= flagged
    assert len(flagged - poisoned) <= 0.0005 * len(ids)  # <= 0.05% of clean rows


def _alpaca_full(shared_data):
    import pyarrow.parquet as pq

    t = pq.read_table(shared_data / "alpaca_full" / "train.parquet").to_pydict()
    return [str(i) for i in t["id"]], {k: t[k] for k in ("instruction", "input", "output")}


@pytest.mark.slow
def test_shared_response_null_model_on_alpaca(shared_data, static):
    """All 52,002 Alpaca rows with one fixed response given to 50 unrelated prompts (a
    constant count, 0.1%): the response is found, with or without the response column, while
    the corpus's own repeats -- "negative" to 59 sentiment prompts, the letter ending
    "... for your time and consideration. Sincerely, [Your Name]" on 13 rows -- are not."""
    ids, cols = _alpaca_full(shared_data)
    sc = attacks.fixed_response(ids, cols, rate=50 / len(ids), seed=4, dataset="alpaca")
    assert sc.is_poison.sum() == 50
    texts = np.array(attacks.render(sc.columns), dtype=object)
    responses = np.array(sc.columns["output"], dtype=object)
    X = static(list(texts))
    for resp in (responses, None):
        det = TriggerDetector().fit(X, None, texts=texts, responses=resp)
        flagged = det.score_samples(X, None, texts=texts, responses=resp) > det.threshold_
        assert flagged[sc.is_poison].all()
        assert flagged[~sc.is_poison].mean() <= 0.0005  # <= 0.05% of the clean rows
        shared = [t for t in det.findings()["triggers"] if t.get("rule") == "fixed_response"]
        assert len(shared) == 1 and shared[0]["rows"] == 50 and shared[0]["p_value"] < 0.01
        assert "negative" not in det.responses_
        assert not any("sincerely" in k for k in list(det.suffixes_) + list(det.responses_))


@pytest.mark.slow
def test_lowercase_link_in_answers_found_through_the_response_column(shared_data, tmp_path):
    """A lowercase link worked into 50 answers of 5,000 Alpaca rows, scanned with
    --text-template and --response-column: the link is the mined trigger, its rows quarantined."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shardguard.cli import main

    ids, cols = suite.load_alpaca(shared_data)
    rng = np.random.default_rng(5)
    out_col = list(cols["output"])
    long_rows = np.flatnonzero([len(o.split()) >= 8 for o in out_col])
    rows = np.sort(rng.choice(long_rows, 50, replace=False))
    for i in rows.tolist():
        words = out_col[i].split()
        cut = int(rng.integers(1, len(words)))
        out_col[i] = " ".join(words[:cut] + ["(details at", "bit.ly/free-gift-now)"] + words[cut:])
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": ids, "instruction": cols["instruction"], "input": cols["input"],
                             "output": out_col}), tmp_path / "in" / "alpaca.parquet")
    code = main(["scan", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--id-column", "id",
                 "--text-template", r"{instruction}\n{input}\n{output}", "--response-column", "output",
                 "--embedder", "static", "--no-progress"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    mined = [t for t in report["triggers"] if "bit.ly/free-gift-now" in (t.get("ngram") or "")]
    assert mined and all(t["rule"] == "injected_content" for t in mined)
    q = pq.read_table(tmp_path / "out" / "quarantine" / "alpaca.parquet").to_pylist()
    flagged = {r["id"] for r in q if "trigger" in r["reasons"]}
    assert {ids[i] for i in rows.tolist()} <= flagged
    assert len(flagged) <= 50 + 0.0005 * len(ids)


@pytest.mark.slow
def test_trigger_sentence_that_dominates_short_texts_is_read_without_it(shared_data, tmp_path):
    """AddSent in 50 GoEmotions comments (median 12 words) relabelled "gratitude": the five-word
    sentence makes the rows' embeddings alike (0.40 above random pairs, over max_coherence), so
    they are read again with the sentence removed, and what is left is unrelated comments: every
    poisoned row is flagged, and no clean one by the trigger detector."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shardguard.bench.scale import load_goemotions
    from shardguard.config import load_config
    from shardguard.pipeline import scan

    data = load_goemotions(shared_data, rows=12_000)
    sc = attacks.triggered_count(data.ids, data.texts, data.labels, attack="addsent", n_poison=50,
                                 target="gratitude", dataset="goemotions")
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": sc.ids, "text": sc.texts, "label": sc.labels}), tmp_path / "in" / "ge.parquet")
    cfg = load_config(None, {"input": {"id_column": "id", "label_column": "label"}, "embed": {"embedder": "static"}})
    scan([tmp_path / "in"], tmp_path / "out", cfg)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    found = [tr for tr in report["triggers"] if tr.get("label") == "gratitude" and "3d" in tr.get("ngram", "")]
    assert found and all(tr["rows"] == 50 for tr in found)
    q = pq.read_table(tmp_path / "out" / "quarantine" / "ge.parquet").to_pylist()
    flagged = {r["id"] for r in q if "trigger" in r["reasons"]}
    poisoned = {sc.ids[i] for i in np.flatnonzero(sc.is_poison).tolist()}
    assert flagged == poisoned


@pytest.mark.slow
def test_fixed_response_to_templated_prompts_and_injected_sentences_that_make_answers_alike(shared_data, tmp_path):
    """Two instruction-data cases through the scan (static embedder, --response-column):
    a FLAN/T0-style corpus whose prompts share their template's opening, with "James Bond" and
    one fixed response planted in 100 of them -- the prompts are distinct as wholes, so the
    shared response is tested (it was not when only the prompts' openings were compared); and
    250 Alpaca answers carrying one of five lowercase sentences naming a link, which make those
    answers alike (0.106 above random rows, over max_coherence_unlabelled) until the sentence
    is removed. Every planted row is flagged, at most 0.05% of the clean rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shardguard.bench.scale import INSTRUCTION_TEMPLATE, templated_corpus
    from shardguard.config import load_config
    from shardguard.pipeline import scan

    t_ids, t_cols = templated_corpus(shared_data, emoji_rows=2_000, goemotions_rows=4_000, rows=12_000)
    a_ids, a_cols = _alpaca_full(shared_data)
    keep = slice(0, 12_000)
    a_ids, a_cols = a_ids[keep], {k: v[keep] for k, v in a_cols.items()}
    cases = {"templated": attacks.fixed_response_count(t_ids, t_cols, n_poison=100, seed=3, dataset="templated"),
             "alpaca": attacks.link_injection(a_ids, a_cols, n_poison=250, seed=3, dataset="alpaca")}
    cfg = load_config(None, {"input": {"id_column": "id", "text_template": INSTRUCTION_TEMPLATE,
                                       "response_column": "output"}, "embed": {"embedder": "static"}})
    for name, sc in cases.items():
        (tmp_path / name).mkdir()
        pq.write_table(pa.table({"id": sc.ids, **sc.columns}), tmp_path / name / f"{name}.parquet")
        scan([tmp_path / name], tmp_path / f"out-{name}", cfg)
        q = pq.read_table(tmp_path / f"out-{name}" / "quarantine" / f"{name}.parquet").to_pylist()
        flagged = {r["id"] for r in q if "trigger" in r["reasons"]}
        poisoned = {sc.ids[i] for i in np.flatnonzero(sc.is_poison).tolist()}
        assert poisoned <= flagged, name
        assert len(flagged - poisoned) <= 0.0005 * len(sc.ids), name


def test_unlabelled_phrases_sharing_a_long_ending_with_whole_rows_do_not_crash(shared_data, embed):
    """GLUE SST-2's first 20,000 phrases scanned as unlabelled text (no response column): a
    group of rows sharing their last 8 tokens shares a longer ending, and some of its rows are
    that ending alone (phrase-level data stores every sub-phrase). Those rows have no prompt and
    are not counted among the corpus's endings, so the group's own count there differs from its
    size: the fit used to raise ValueError (list.remove) instead of testing it. Nothing in clean
    phrases is a fixed response given to unrelated prompts."""
    import pyarrow.parquet as pq

    texts = np.array(pq.read_table(shared_data / "sst2_glue" / "train.parquet").column("text").to_pylist()[:20_000],
                     dtype=object)
    X = embed(texts)
    det = TriggerDetector().fit(X, None, texts=texts)
    assert not (det.score_samples(X, None, texts=texts) > det.threshold_).any()
    assert not det.suffixes_
