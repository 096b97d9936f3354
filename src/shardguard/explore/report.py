"""HTML: escaped fragments for notebooks (``table_html``, ``clusters_html``, ...) and the
report page they make.

``shardguard report OUT [--html FILE]``: a scan's results for people.

Without ``--html``: a short text summary (``text_summary``). With it: one static,
self-contained HTML page (``render_report`` / ``write_report``) with the views of
``notebooks/explore_flagged.ipynb``: counts by reason and shard, thresholds, score
histograms, the 2-D map of the embeddings, the top flagged samples with their text,
the largest duplicate clusters side by side and mined triggers. Plots are PNGs in
``data:`` URIs, so the page needs nothing but itself.

Texts in a dataset are untrusted input: every piece of data is escaped
(``html.escape``), and a Content-Security-Policy allows no network access, no
scripts but the page's own one (pinned by its hash) and images only from ``data:``.
That script marks ``<body>`` with ``data-images`` and ``data-images-loaded`` once
the page has loaded, so a headless browser can check that every plot rendered.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import html
import os
import time
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from shardguard import __version__
from shardguard.explore.data import (
    DuplicateCluster,
    ScanOutput,
    ScanOutputError,
    _fmt_value,
    _reason_sort_key,
    _shorten,
)
from shardguard.explore.plots import figure_png, reason_color


LOADED_SCRIPT = (
    "window.addEventListener('load',function(){"
    "var a=Array.prototype.slice.call(document.images);"
    "var n=a.filter(function(i){return i.complete&&i.naturalWidth>0;}).length;"
    "document.body.setAttribute('data-images',String(a.length));"
    "document.body.setAttribute('data-images-loaded',String(n));});"
)

PAGE_STYLE = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fff}
header{background:#1f2d3d;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:22px}
header .sub{color:#c8d3df;font-size:13px;margin-top:4px;word-break:break-all}
nav{padding:8px 24px;border-bottom:1px solid #ddd;font-size:13px;position:sticky;top:0;background:#fff;z-index:1}
nav a{margin-right:14px;color:#1f77b4;text-decoration:none}
main{padding:6px 24px 40px 24px;max-width:1500px}
h2{font-size:18px;border-bottom:1px solid #eee;padding-bottom:4px;margin-top:28px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:14px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:110px}
.card .v{font-size:22px;font-weight:600}
.card .k{font-size:12px;color:#666}
img.plot{max-width:100%;height:auto;border:1px solid #eee}
details{margin:6px 0}
summary{cursor:pointer;font-weight:600;font-size:14px}
p.hint{color:#555;font-size:13px;max-width:70em}
"""


class Html(str):
    """An HTML fragment; Jupyter displays it as HTML, ``str()`` gives the markup."""

    def _repr_html_(self) -> str:
        return str(self)

    def __repr__(self) -> str:  # what a terminal shows instead of the markup
        return f"<Html fragment, {len(self):,} characters>"


# -- HTML fragments (all data escaped) ----------------------------------------------------------
STYLE = """
.sg table{border-collapse:collapse;font-size:13px;margin:6px 0}
.sg th,.sg td{border:1px solid #ddd;padding:3px 7px;vertical-align:top;text-align:left}
.sg th{background:#f3f3f3}
.sg td.num{text-align:right;font-variant-numeric:tabular-nums}
.sg td.text{max-width:46em;white-space:pre-wrap;word-break:break-word}
.sg td.nw{white-space:nowrap}
.sg .reason{display:inline-block;border-radius:3px;padding:0 5px;margin:1px;color:#fff;font-size:11px}
.sg .clusters{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start;padding-bottom:6px}
.sg .cluster{flex:0 0 330px;border:1px solid #ccc;border-radius:6px;padding:8px;background:#fafafa;font-size:12px}
.sg .cluster h4{margin:0 0 6px 0;font-size:13px}
.sg .root{border-left:4px solid #333;background:#fff;padding:4px 6px;margin-bottom:6px}
.sg .member{border-left:4px solid #bbb;background:#fff;padding:4px 6px;margin:4px 0}
.sg .meta{color:#666;font-size:11px}
.sg .t{white-space:pre-wrap;word-break:break-word}
.sg mark{background:#ffe066;padding:0}
.sg del{color:#c00;text-decoration:line-through}
.sg .note{color:#666;font-style:italic}
"""


def _wrap(body: str, style: bool) -> Html:
    return Html((f"<style>{STYLE}</style>" if style else "") + f'<div class="sg">{body}</div>')


def _reason_badges(reasons: Sequence[str] | None) -> str:
    return "".join(f'<span class="reason" style="background:{reason_color(r)}">{html.escape(r)}</span>'
                   for r in sorted(reasons or [], key=_reason_sort_key))


def table_html(table: pa.Table, max_chars: int = 300, max_rows: int | None = 200, style: bool = True) -> Html:
    """An escaped HTML table of a pyarrow Table (texts cut at ``max_chars``; reasons as badges)."""
    if max_rows is not None and table.num_rows > max_rows:
        table = table.slice(0, max_rows)
    names = table.column_names
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    data = table.to_pydict()
    body = []
    for i in range(table.num_rows):
        tds = []
        for n in names:
            v = data[n][i]
            if n == "reasons" and isinstance(v, list):
                tds.append(f"<td>{_reason_badges(v)}</td>")
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                tds.append(f'<td class="num">{html.escape(_fmt_value(v) if isinstance(v, float) else f"{v:,}")}</td>')
            elif n == "text" and v is None:
                tds.append('<td class="text note">(no text)</td>')
            else:
                s = _fmt_value(v)
                cls = ' class="text"' if n in ("text", "detail") else ' class="nw"' if len(s) <= 40 else ""
                tds.append(f"<td{cls}>{html.escape(_shorten(s, max_chars))}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    if not body:
        return _wrap('<p class="note">(no rows)</p>', style)
    return _wrap(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>", style)


def _diff_html(root: str, text: str) -> str:
    """``text`` with what differs from ``root`` marked: changed or inserted characters
    highlighted, deleted ones struck through. Every piece is escaped."""
    sm = difflib.SequenceMatcher(None, root, text, autojunk=False)
    out = []
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            out.append(html.escape(text[j1:j2]))
        else:
            if op == "delete":
                out.append(f"<del>{html.escape(root[i1:i2])}</del>")
            if j2 > j1:
                out.append(f"<mark>{html.escape(text[j1:j2])}</mark>")
    return "".join(out)


def clusters_html(clusters: Sequence[DuplicateCluster], max_members: int = 6, max_chars: int = 400,
                  style: bool = True) -> Html:
    """The clusters side by side: each card shows the root's text and its first members, with
    what a member changes against the root highlighted."""
    if not clusters:
        return _wrap('<p class="note">No near-duplicate clusters in this scan.</p>', style)
    cards = []
    for c in clusters:
        labels = ", ".join(f"{html.escape(k)} &times;{v:,}" for k, v in c.labels.items())
        head = (f"<h4>{c.size:,} rows{' &middot; flood' if c.flood else ''}</h4>"
                f'<div class="meta">labels: {labels}</div>')
        if c.root is not None:
            rt = c.root.text
            root_text = (html.escape(_shorten(rt, max_chars)) if rt is not None
                         else '<span class="note">(no text)</span>')
            root_html = (f'<div class="root"><div class="meta">root {html.escape(c.root.id)} &middot; '
                         f"{html.escape(c.root.shard)}:{c.root.row} &middot; label {html.escape(str(c.root.label))}"
                         f" {_reason_badges(c.root.reasons) or '(clean)'}</div>"
                         f'<div class="t">{root_text}</div></div>')
            base = _shorten(rt or "", max_chars)
        else:
            root_html = (f'<div class="root"><div class="meta">root {html.escape(c.root_id)}: not found in the '
                         f"scores</div></div>")
            base = None
        mem = []
        for s in c.members[:max_members]:
            t = _shorten(s.text, max_chars) if s.text is not None else None
            if t is None:
                body = '<span class="note">(no text)</span>'
            elif base is not None:
                body = _diff_html(base, t)
            else:
                body = html.escape(t)
            sim = f" &middot; similarity {s.similarity:.2f}" if s.similarity is not None else ""
            mem.append(f'<div class="member"><div class="meta">{html.escape(s.id)} &middot; '
                       f"{html.escape(s.shard)}:{s.row} &middot; label {html.escape(str(s.label))}{sim}</div>"
                       f'<div class="t">{body}</div></div>')
        more = len(c.members) - max_members
        if more > 0:
            mem.append(f'<div class="meta">&hellip; and {more:,} more members</div>')
        cards.append(f'<div class="cluster">{head}{root_html}{"".join(mem)}</div>')
    return _wrap(f'<div class="clusters">{"".join(cards)}</div>', style)


def triggers_html(triggers: list[dict[str, Any]] | None, style: bool = True) -> Html:
    """Mined triggers as a table (any keys the miner reports)."""
    if triggers is None:
        return _wrap('<p class="note">No trigger mining in this scan (report.json has no "triggers").</p>', style)
    if not triggers:
        return _wrap('<p class="note">Trigger mining ran and found no trigger.</p>', style)
    keys = list(dict.fromkeys(k for t in triggers for k in t))
    cols = {k: [_fmt_value(t.get(k)) for t in triggers] for k in keys}
    return table_html(pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()}), style=style)


def thresholds_html(scan: ScanOutput, style: bool = True) -> Html:
    """Each detector's threshold in score units, with the rule it came from."""
    rows = []
    for name, info in scan.report.get("thresholds", {}).items():
        if not isinstance(info, dict):
            continue
        t = scan.threshold(name)
        extra = {k: v for k, v in info.items() if k not in ("rule", "threshold", "groups")}
        rows.append({"detector": name, "threshold": "" if t is None else f"{t:.4g}",
                     "settings": ", ".join(f"{k}={_fmt_value(v)}" for k, v in extra.items()),
                     "rule": str(info.get("rule", ""))})
    if not rows:
        return _wrap('<p class="note">No thresholds recorded.</p>', style)
    return table_html(pa.Table.from_pylist(rows), max_chars=600, style=style)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _card(value: str, key: str) -> str:
    return f'<div class="card"><div class="v">{html.escape(value)}</div><div class="k">{html.escape(key)}</div></div>'


def _flagged_columns(scan: ScanOutput, t):
    keep = ["shard", "id", "row", "label", "reasons", "duplicate_of", *[f"{d}_score" for d in scan.detectors],
            "text", "detail"]
    return t.select([c for c in keep if c in t.column_names])


def render_report(scan: ScanOutput | str | Path, *, top: int = 50, per_reason: int = 10, clusters: int = 6,
                  max_projection_rows: int = 5000, seed: int = 0) -> str:
    """The report page of a scan's OUT folder, as a string."""
    if not isinstance(scan, ScanOutput):
        scan = ScanOutput.load(scan)
    tot = scan.report.get("totals", {})
    rows, q = int(tot.get("rows", 0)), int(tot.get("quarantined", 0))
    emb = scan.embedder
    sections: list[tuple[str, str, str]] = []

    # Counts.
    body = (_img(figure_png(scan.plot_counts()), "rows per reason and shard")
            + table_html(scan.counts_table(), style=False))
    sections.append(("counts", "Counts by reason and shard", body))

    # Thresholds and histograms.
    body = ('<p class="hint">Each detector flags a row when its score is past the threshold (in the units of '
            "its score column). Histograms: every scored row, clean and quarantined stacked, on log scales.</p>"
            + _img(figure_png(scan.plot_score_histograms()), "score histograms with thresholds")
            + thresholds_html(scan, style=False))
    sections.append(("scores", "Scores and thresholds", body))

    # Projection.
    body = ('<p class="hint">A 2-D PCA map of the embeddings: a seeded sample that includes every flagged row. '
            "Colour: a row's most specific reason; marker: its label. Tight groups of flagged rows far from "
            "the clean cloud, or of one label inside another label's region, deserve a look.</p>"
            + _img(figure_png(scan.plot_projection(max_projection_rows, seed)), "PCA map of the embeddings"))
    sections.append(("map", "Embedding map", body))

    # Flagged samples.
    t = _flagged_columns(scan, scan.flagged(top=top))
    body = ('<p class="hint">Ranked by the number of reasons, then by how far the largest score is past its '
            "threshold. Texts are cut at 300 characters.</p>"
            + table_html(t, style=False))
    for r in scan.reasons:
        n = scan.report["reasons"].get(r, 0)
        tr = _flagged_columns(scan, scan.flagged(reason=r, top=per_reason))
        body += (f"<details><summary>{html.escape(r)}: {n:,} rows (top {min(per_reason, n):,})</summary>"
                 f"{table_html(tr, style=False)}</details>")
    sections.append(("flagged", f"Top {min(top, q):,} flagged samples", body))

    # Clusters.
    cl = scan.duplicate_clusters(top=clusters)
    body = ('<p class="hint">The first occurrence in scan order (root) and the rows that repeat it; what a member '
            "changes against the root is <mark>highlighted</mark>, deletions are <del>struck</del>.</p>"
            + clusters_html(cl, style=False))
    sections.append(("clusters", "Largest duplicate clusters", body))

    # Triggers.
    sections.append(("triggers", "Mined triggers", triggers_html(scan.triggers(), style=False)))

    # Run.
    timings = scan.report.get("timings_s", {})
    run_rows = [("shardguard", str(scan.manifest.get("version", "?"))),
                ("run key", str(scan.manifest.get("run_key", ""))),
                ("embedder", f"{emb.get('kind', '?')}: {emb.get('model', '')}"),
                ("weights sha256", str(emb.get("weights_sha256") or "")),
                ("wall time", f"{scan.report.get('wall_s', 0)} s"),
                ("throughput", f"{scan.report.get('throughput_rows_per_s', '')} rows/s"),
                ("timings", ", ".join(f"{k} {v} s" for k, v in timings.items()))]
    body = table_html(pa.table({"item": [k for k, _ in run_rows], "value": [v for _, v in run_rows]}),
                      max_chars=1000, style=False)
    if scan.failed:
        body += "<h3>Failed shards</h3>" + table_html(pa.Table.from_pylist(scan.failed), max_chars=1000, style=False)
    sections.append(("run", "Run", body))

    script_hash = base64.b64encode(hashlib.sha256(LOADED_SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    cards = "".join([
        _card(f"{rows:,}", "rows"),
        _card(f"{int(tot.get('clean', 0)):,}", "clean"),
        _card(f"{q:,} ({q / max(rows, 1):.1%})", "quarantined"),
        _card(f"{int(tot.get('invalid', 0)):,}", "invalid"),
        _card(f"{len(scan.shards):,}" + (f" + {len(scan.failed)} failed" if scan.failed else ""), "shards"),
    ])
    nav = "".join(f'<a href="#{k}">{html.escape(title)}</a>' for k, title, _ in sections)
    main = "".join(f'<section id="{k}"><h2>{html.escape(title)}</h2>{body}</section>' for k, title, body in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(csp)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>shardguard report: {html.escape(scan.out_dir.name or str(scan.out_dir))}</title>"
        f"<style>{PAGE_STYLE}{STYLE}</style>"
        f"<script>{LOADED_SCRIPT}</script>"
        "</head><body>"
        f"<header><h1>shardguard report</h1><div class=\"sub\">{html.escape(str(scan.out_dir))} &middot; "
        f"generated {html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))} by shardguard {html.escape(__version__)}"
        "</div></header>"
        f"<nav>{nav}</nav>"
        f'<main class="sg"><div class="cards">{cards}</div>{main}</main>'
        "</body></html>\n"
    )


def write_report(out_dir: str | Path, html_path: str | Path, **kwargs) -> Path:
    """Render the report of ``out_dir`` and write it to ``html_path`` atomically."""
    page = render_report(out_dir, **kwargs)
    path = Path(html_path)
    if path.parent and not path.parent.exists():
        raise ScanOutputError(f"{path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def text_summary(out_dir: str | Path) -> str:
    """The short text summary ``shardguard report OUT`` prints."""
    return ScanOutput.load(out_dir).summary()
