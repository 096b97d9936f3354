"""Explore what a scan flagged: counts, samples with their text, score histograms,
a 2-D map of the embeddings, duplicate clusters and mined triggers.

Everything here reads only what ``shardguard scan`` wrote under OUT (``manifest.json``,
``report.json``, ``quarantine/``, ``scores/`` and the work files in ``.work/``, which
hold the texts and the embeddings). ``notebooks/explore_flagged.ipynb`` and
``shardguard report`` are thin layers over it::

    from shardguard.explore import ScanOutput
    scan = ScanOutput.load("OUT")
    scan.counts()                       # plain dicts
    scan.flagged(reason="duplicate_flood", top=10)   # pyarrow Table with the text joined
    scan.plot_score_histograms()        # matplotlib Figure
    scan.duplicate_clusters(top=4)      # root and members, with their texts

Tables are pyarrow Tables, figures are matplotlib Figures made without pyplot (no
global state, no GUI backend; they render with Agg), HTML fragments are ``Html``
strings with every piece of data escaped (texts are untrusted input) that Jupyter
displays as HTML.

Three modules: :mod:`~shardguard.explore.data` (reading a finished scan: ``ScanOutput``
and its dataclasses), :mod:`~shardguard.explore.plots` (the matplotlib figures) and
:mod:`~shardguard.explore.report` (the HTML fragments and the ``shardguard report``
page). Their public names are re-exported here.
"""

from __future__ import annotations

from shardguard.explore.data import (
    DuplicateCluster,
    Projection,
    Sample,
    ScanOutput,
    ScanOutputError,
    ShardInfo,
    primary_reason,
)
from shardguard.explore.plots import REASON_COLORS, figure_png, reason_color
from shardguard.explore.report import (
    STYLE,
    Html,
    clusters_html,
    render_report,
    table_html,
    text_summary,
    thresholds_html,
    triggers_html,
    write_report,
)

__all__ = [
    "ScanOutput",
    "ScanOutputError",
    "ShardInfo",
    "Sample",
    "DuplicateCluster",
    "Projection",
    "Html",
    "REASON_COLORS",
    "primary_reason",
    "figure_png",
    "table_html",
    "clusters_html",
    "triggers_html",
    "thresholds_html",
    "STYLE",
    "reason_color",
    "render_report",
    "write_report",
    "text_summary",
]
