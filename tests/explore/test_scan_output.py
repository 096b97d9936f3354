"""shardguard.explore and notebooks/explore_flagged.ipynb on a real scan of data/samples.

Asserts on what a user sees: counts that match the planted rows, flagged samples with
their text, the planted floods as the largest clusters with their roots found, plots
with the thresholds drawn, and the committed notebook executing top to bottom.
"""

from __future__ import annotations

import difflib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shardguard import load_config, scan
from shardguard.cli import main
from shardguard.explore import (
    DuplicateCluster,
    Sample,
    ScanOutput,
    ScanOutputError,
    clusters_html,
    figure_png,
    table_html,
    triggers_html,
)

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "explore_flagged.ipynb"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory, samples_dir) -> Path:
    out = tmp_path_factory.mktemp("explore") / "out"
    cfg = load_config(overrides={"input.id_column": "id", "input.label_column": "label",
                                 "embed.embedder": "hashing"})
    scan([samples_dir], out, cfg)
    return out


@pytest.fixture(scope="module")
def sg(out_dir) -> ScanOutput:
    return ScanOutput.load(out_dir)


def _flood_ids(planted, name):
    return {i for s in planted["shards"].values() for i in s[name]}


def test_counts_match_the_manifest_and_the_planted_rows(sg, planted):
    c = sg.counts()
    assert c["totals"]["rows"] == 1996
    assert c["reasons"]["duplicate_flood"] == 65  # 40 + 25 planted copies
    assert c["reasons"]["invalid"] == len(planted["invalid"])
    assert set(c["shards"]) == set(planted["scan_order"])
    for name, s in c["shards"].items():
        assert s["rows"] == planted["shards"][name]["rows"]
        assert s["rows"] == s["clean"] + s["quarantined"]
    table = sg.counts_table().to_pylist()
    assert [r["shard"] for r in table] == [*planted["scan_order"], "total"]
    assert table[-1]["quarantined"] == c["totals"]["quarantined"]
    assert sum(r["invalid"] for r in table[:-1]) == 6
    assert set(sg.detectors) >= {"near_duplicate", "outlier", "spectral"}
    assert sg.threshold("spectral") == sg.report["thresholds"]["spectral"]["threshold"]
    assert sg.threshold("near_duplicate") == sg.report["thresholds"]["near_duplicate"]["jaccard"]


def test_flagged_floods_come_with_their_text(sg, planted):
    floods = sg.flagged(reason="duplicate_flood", top=None)
    assert set(floods.column("id").to_pylist()) == _flood_ids(planted, "flood-a") | _flood_ids(planted, "flood-b")
    for id_, text in zip(floods.column("id").to_pylist(), floods.column("text").to_pylist()):
        source = planted["floods"][id_[: len("flood-a")]]["source_text"]  # each copy has 1-3 letter edits
        assert difflib.SequenceMatcher(None, source, text).ratio() > 0.9, (id_, text)


def test_flagged_invalid_rows_show_why_and_no_text(sg, planted):
    inv = sg.flagged(reason="invalid", top=None)
    assert set(inv.column("id").to_pylist()) == {r["id"] for r in planted["invalid"]}
    assert inv.column("text").null_count == inv.num_rows
    details = dict(zip(inv.column("id").to_pylist(), inv.column("detail").to_pylist()))
    assert "100,000" in details["invalid-oversized-001"]
    assert "not a string" in details["invalid-nonstring-001"]


def test_flagged_ranking_top_and_shard_filter(sg):
    top = sg.flagged(top=10)
    assert top.num_rows == 10
    n_reasons = [len(r) for r in top.column("reasons").to_pylist()]
    assert n_reasons == sorted(n_reasons, reverse=True)
    assert max(n_reasons) >= 2  # flood-a: duplicate_flood + spectral
    spec = sg.flagged(reason="spectral", top=5).column("spectral_score").to_pylist()
    assert spec == sorted(spec, reverse=True) and spec[-1] > sg.threshold("spectral")
    one = sg.flagged(shard="sms_000.parquet", top=None)
    assert set(one.column("shard").to_pylist()) == {"sms_000.parquet"}
    assert one.num_rows == sg.counts()["shards"]["sms_000.parquet"]["quarantined"]
    with pytest.raises(KeyError, match="no scanned shard"):
        sg.flagged(shard="nope.parquet")


def test_largest_clusters_are_the_planted_floods_with_roots(sg, planted):
    clusters = sg.duplicate_clusters(top=5)
    sizes = [c.size for c in clusters]
    assert sizes == [x["size"] for x in sg.report["largest_duplicate_clusters"][:5]]
    a, b = clusters[0], clusters[1]
    assert a.flood and b.flood and a.size == 40 and b.size == 25
    assert {a.root.id, *(m.id for m in a.members)} == _flood_ids(planted, "flood-a")
    assert {b.root.id, *(m.id for m in b.members)} == _flood_ids(planted, "flood-b")
    # The flood root is quarantined too (duplicate_flood, no duplicate_of) and comes first in scan order.
    assert "duplicate_flood" in a.root.reasons and a.root.shard == planted["scan_order"][0]
    assert b.labels == {"ham": 25}  # the label-flip flood: spam text labelled ham
    assert all(m.text and m.similarity is not None for m in a.members)
    for c in clusters:  # the root is the row the members name, in an earlier position of the scan
        assert c.root is not None and c.root.id == c.root_id


def test_cluster_roots_are_found_across_shards(sg, planted):
    by_root = {c.root_id: c for c in sg.duplicate_clusters(top=None)}
    for dup in planted["exact_duplicates"]:
        c = by_root[dup["duplicate_of"]]
        assert c.root is not None and c.root.shard == dup["duplicate_of_shard"]
        assert dup["id"] in {m.id for m in c.members}
        assert not c.flood and c.root.reasons == []  # an ordinary cluster's root stays clean


def test_plots_are_figures_with_thresholds(sg):
    fig = sg.plot_score_histograms()
    titles = {ax.get_title().split()[0]: ax for ax in fig.axes if ax.get_title()}
    assert {"outlier_score", "spectral_score", "near_duplicate_score"} <= set(titles)
    for det in ("outlier", "spectral"):
        xs = [line.get_xdata()[0] for line in titles[f"{det}_score"].lines]
        assert any(np.isclose(x, sg.threshold(det)) for x in xs)
    assert titles["spectral_score"].get_xscale() == "log"
    assert titles["outlier_score"].get_yscale() == "log"
    for f in (fig, sg.plot_counts()):
        png = figure_png(f)
        assert png.startswith(PNG_MAGIC) and len(png) > 10_000


def test_projection_keeps_every_flagged_row_and_is_seeded(sg):
    quarantined_with_text = sg.counts()["totals"]["quarantined"] - sg.counts()["totals"]["invalid"]
    p = sg.projection(max_rows=300, seed=0)
    assert len(p.id) == 300 and p.xy.shape == (300, 2)
    assert sum(r != "clean" for r in p.reason) == quarantined_with_text
    assert "duplicate_flood" in set(p.reason)
    assert set(p.label) == {"ham", "spam"}
    q = sg.projection(max_rows=300, seed=0)
    assert q.id == p.id and np.allclose(q.xy, p.xy)
    fig = sg.plot_projection(projection=p)
    legend_text = " ".join(t.get_text() for lg in fig.legends for t in lg.get_texts())
    assert "duplicate_flood (65)" in legend_text and "ham" in legend_text and "spam" in legend_text
    assert figure_png(fig).startswith(PNG_MAGIC)


def test_projection_draws_clean_rows_when_flagged_rows_outnumber_it(sg):
    """More flagged rows than the map holds (the report's 5,000 on a large scan): half of it is
    still clean rows, so the map shows the flagged ones against the data they stand out from."""
    flagged_with_text = sg.counts()["totals"]["quarantined"] - sg.counts()["totals"]["invalid"]
    max_rows = flagged_with_text // 2  # fewer than the flagged rows alone
    p = sg.projection(max_rows=max_rows, seed=0)
    reasons = np.array(p.reason)
    assert len(p.id) == max_rows
    assert (reasons == "clean").sum() == max_rows // 2
    assert (reasons != "clean").sum() == max_rows - max_rows // 2
    assert p.fitted_on == "clean rows of the sample"


def test_without_work_files_tables_still_load(out_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(out_dir, bare, ignore=shutil.ignore_patterns(".work"))
    sg = ScanOutput.load(bare)
    assert not sg.has_texts and not sg.has_embeddings
    t = sg.flagged(top=5)
    # without work files the lists' own text (cut at review.text_chars) is what there is to read
    assert t.num_rows == 5 and t.column("text").null_count == 0
    assert all(len(x) <= 200 for x in t.column("text").to_pylist())
    with pytest.raises(ScanOutputError, match="embeddings"):
        sg.projection()
    fig = sg.plot_projection()  # a message instead of a map
    assert "no embeddings" in " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert sg.duplicate_clusters(top=2)[0].size == 40


def test_triggers_absent_and_rendered_safely(sg):
    """No trigger miner ran (hashing vectors): no triggers. The table escapes what it shows.
    (Triggers from a real scan: tests/explore/test_report.py.)"""
    assert sg.triggers() is None
    assert "No trigger mining" in triggers_html(None)
    h = triggers_html([{"ngram": "cf <b>", "label": "spam", "rows": 12, "z": 9.5}])
    assert "cf &lt;b&gt;" in h and "<b>" not in h and "9.5" in h
    assert "Trigger mining ran and found no trigger" in triggers_html([])


def test_html_fragments_escape_untrusted_text():
    import pyarrow as pa

    evil = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    t = pa.table({"id": ["<b>x</b>"], "reasons": [["duplicate_flood"]], "text": [evil]})
    h = table_html(t)
    assert "<script>alert" not in h and "<img src=x" not in h and "<b>x</b>" not in h
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in h
    root = Sample("a.jsonl", "r<1>", 0, "ham", evil)
    member = Sample("a.jsonl", "m1", 1, "<i>spam</i>", evil.replace("alert(2)", "alert(3)<svg onload=x>"),
                    ["near_duplicate"], 0.9)
    h = clusters_html([DuplicateCluster("r<1>", root, [member], flood=False)])
    assert "<script>" not in h and "<svg" not in h and "<img" not in h and "<i>spam" not in h
    assert "&lt;svg onload=x&gt;" in h and "<mark>" in h  # the change is highlighted, and escaped


def test_summary_and_report_cli_text(out_dir, capsys, planted):
    assert main(["report", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "1,996 rows" in out and "quarantined" in out
    for name in planted["scan_order"]:
        assert name in out
    assert "spectral: score > 16" in out
    assert "40 rows (flood)" in out and "25 rows (flood)" in out and "labels ham x25" in out


@pytest.mark.slow
def test_report_text_summary_exits_0_every_time(out_dir):
    """`shardguard report OUT` in a fresh process, 8 times in a row: exit 0 and the summary each time.

    Its last act reads the clusters' texts through Arrow's dataset scanner, which frees its
    filter on an Arrow thread, sometimes after the read returned; a filter borrowing numpy
    memory then took the GIL while the interpreter finalized, and about 1 run in 3 aborted
    ("terminate called without an active exception", exit 134)."""
    for _ in range(8):
        proc = subprocess.run([sys.executable, "-m", "shardguard", "report", str(out_dir)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and "quarantined" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


def test_texts_leaves_no_reference_to_the_callers_rows(sg):
    """Once texts() returns, nothing holds the caller's row array any more (an Arrow thread
    did, in about 1 call in 6, until after the read; see the test above for what that cost)."""
    shard = sg.shards[0].name
    for k in range(200):
        rows = np.arange(k % 5, 400, 3, dtype=np.int64)
        before = sys.getrefcount(rows)
        assert sg.texts(shard, rows).num_rows == rows.size
        assert sys.getrefcount(rows) == before


def test_report_cli_errors(tmp_path, capsys):
    """(`report --help` is checked with the other commands' help in test_cli.py.)"""
    assert main(["report", str(tmp_path)]) == 2
    assert "not the output folder of a finished" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_notebook_is_committed_without_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert "OUT = None" in nb.cells[1].source


def test_notebook_executes_and_shows_every_view(tmp_path):
    """Runs the committed notebook as a user would (its default: scan data/samples first)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError on any failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 3  # counts, histograms, embedding map
    html = "\n".join(o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {}))
    text = "\n".join(o.get("text", "") for o in outputs)
    assert "1,996" in html  # counts table
    assert "flood-a-" in html and "flood-b-" in html and "PlanetTalk" in html  # flagged rows with text
    assert "40 rows" in html and "flood" in html  # clusters side by side
    assert "No trigger mining" in html
    assert "duplicate_flood: 65 rows" in text
