"""The figures of a scan (matplotlib): counts by reason and shard, score histograms with
thresholds, the 2-D PCA map of the embeddings. Figures are made without pyplot (no global
state, no GUI backend; they render with Agg), and matplotlib is imported only to draw.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np

from shardguard.explore.data import Projection, ScanOutput, ScanOutputError, _floats, _reason_sort_key, _shorten

if TYPE_CHECKING:
    from matplotlib.figure import Figure


#: A row's colour in every figure and page, by its primary reason (``primary_reason``).
REASON_COLORS = {
    "clean": "#c7c7c7",
    "trigger": "#2ca02c",
    "duplicate_flood": "#d62728",
    "spectral": "#9467bd",
    "outlier": "#ff7f0e",
    "near_duplicate": "#1f77b4",
    "invalid": "#7f7f7f",
}
_EXTRA_COLORS = ["#8c564b", "#e377c2", "#bcbd22", "#17becf", "#393b79", "#637939", "#843c39"]
_MARKERS = ["o", "^", "s", "D", "v", "P", "X", "*"]


def reason_color(reason: str) -> str:
    if reason in REASON_COLORS:
        return REASON_COLORS[reason]
    return _EXTRA_COLORS[sum(map(ord, reason)) % len(_EXTRA_COLORS)]


def plot_counts(scan: "ScanOutput", max_shards: int = 20) -> "Figure":
    """Rows per reason (left) and a shard x reason table of counts (right; the shards with
    the most quarantined rows, at most ``max_shards``)."""
    fig = _figure(11, max(3.0, 1.2 + 0.32 * min(len(scan.all_shards) + 1, max_shards + 1)))
    reasons = scan.reasons
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
    counts = [scan.report["reasons"][r] for r in reasons]
    tot = scan.report.get("totals", {})
    if reasons:
        y = np.arange(len(reasons))[::-1]
        ax1.barh(y, counts, color=[reason_color(r) for r in reasons])
        ax1.set_yticks(y, reasons)
        for yi, c in zip(y, counts):
            ax1.text(c, yi, f" {c:,}", va="center", fontsize=9)
        ax1.set_xlim(0, max(counts) * 1.25)
    else:
        ax1.text(0.5, 0.5, "nothing flagged", ha="center", va="center", transform=ax1.transAxes)
        ax1.set_yticks([])
    ax1.set_xlabel("rows (a row can have several reasons)")
    ax1.set_title(f"{tot.get('quarantined', 0):,} of {tot.get('rows', 0):,} rows quarantined", fontsize=11)
    shards = sorted(scan.all_shards, key=lambda s: (-s.quarantined, s.name))
    rest = shards[max_shards:]
    shards = shards[:max_shards]
    labels = [s.name if s.ok else f"{s.name} (FAILED)" for s in shards]
    mat = np.array([[s.reasons.get(r, 0) for r in reasons] + [s.quarantined, s.rows] for s in shards], float)
    if rest:
        labels.append(f"{len(rest)} other shards")
        mat = np.vstack([mat, [[sum(s.reasons.get(r, 0) for s in rest) for r in reasons]
                               + [sum(s.quarantined for s in rest), sum(s.rows for s in rest)]]])
    cols = [*reasons, "quarantined", "rows"]
    if mat.size:
        share = mat / np.maximum(mat[:, -1:], 1)
        share[:, -1] = 0
        ax2.imshow(share, aspect="auto", cmap="Reds", vmin=0, vmax=max(0.05, float(share[:, :-1].max())))
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                dark = j < len(reasons) + 1 and share[i, j] > 0.6 * max(0.05, float(share[:, :-1].max()))
                ax2.text(j, i, f"{int(mat[i, j]):,}", ha="center", va="center", fontsize=8,
                         color="white" if dark else "black")
        ax2.set_yticks(range(len(labels)), labels, fontsize=8)
        ax2.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax2.set_title("rows per shard and reason (shade: share of the shard)", fontsize=11)
    fig.tight_layout()
    return fig


def plot_score_histograms(scan: "ScanOutput", bins: int = 50) -> "Figure":
    """One histogram per detector score over every scored row, clean and quarantined rows
    stacked, the threshold drawn; counts on a log scale, and scores too when they span
    more than three orders of magnitude."""
    dets = scan.detectors
    sc = scan.scores(columns=["status", *[f"{d}_score" for d in dets]])
    dets = [d for d in dets if f"{d}_score" in sc.column_names
            and np.isfinite(_floats(sc.column(f"{d}_score"))).any()]
    ncols = min(max(len(dets), 1), 3)
    nrows = max(1, math.ceil(len(dets) / ncols))
    fig = _figure(4.2 * ncols, 3.3 * nrows)
    if not dets:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no detector scores in this scan", ha="center", va="center")
        ax.set_axis_off()
        return fig
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    status = np.asarray(sc.column("status").to_pylist(), dtype=object)
    for ax, det in zip(axes, dets):
        v = _floats(sc.column(f"{det}_score"))
        ok = np.isfinite(v)
        thr = scan.threshold(det)
        vals, st = v[ok], status[ok]
        pos = vals[vals > 0]
        logx = pos.size > 0 and vals.min() >= 0 and pos.max() / pos.min() > 1e3
        note = ""
        if logx:
            lo = max(pos.min(), pos.max() / 1e8)
            n_low = int((vals < lo).sum())
            vals = np.maximum(vals, lo)
            edges = np.geomspace(lo, pos.max() * 1.0001, bins + 1)
            if thr is not None and thr > 0:
                edges = np.geomspace(min(lo, thr), max(pos.max(), thr) * 1.0001, bins + 1)
            ax.set_xscale("log")
            if n_low:
                note = f"{n_low:,} scores below {lo:.1e} in the first bin"
        else:
            hi, lo = float(vals.max()), float(vals.min())
            if thr is not None:
                lo, hi = min(lo, thr), max(hi, thr)
            edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
        groups = [vals[st == "clean"], vals[st != "clean"]]
        ax.hist(groups, bins=edges, stacked=True, color=[REASON_COLORS["clean"], reason_color(det)],
                label=[f"clean ({groups[0].size:,})", f"quarantined ({groups[1].size:,})"])
        ax.set_yscale("log")
        if thr is not None:
            ax.axvline(thr, color="black", linestyle="--", linewidth=1.2, label=f"threshold {thr:.4g}")
        ax.set_title(f"{det}_score  ({ok.sum():,} rows)", fontsize=10)
        ax.set_xlabel(note or ("score (log)" if logx else "score"), fontsize=8)
        ax.set_ylabel("rows (log)", fontsize=8)
        ax.legend(fontsize=7, loc="upper center" if det == "near_duplicate" else "upper right")
    for ax in axes[len(dets):]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_projection(scan: "ScanOutput", max_rows: int = 5000, seed: int = 0,
                    projection: Projection | None = None) -> "Figure":
    """The 2-D PCA map of ``projection()``: colour = a row's primary reason (clean in grey),
    marker = its label."""
    fig = _figure(9.5, 6.2)
    ax = fig.subplots()
    try:
        p = projection or scan.projection(max_rows, seed)
    except ScanOutputError as exc:
        ax.text(0.5, 0.5, str(exc), ha="center", va="center", wrap=True)
        ax.set_axis_off()
        return fig
    labels = ["(no label)" if x is None else str(x) for x in p.label]
    by_count: dict[str, int] = {}
    for x in labels:
        by_count[x] = by_count.get(x, 0) + 1
    top_labels = sorted(by_count, key=lambda x: (-by_count[x], x))[: len(_MARKERS) - 1]
    marker_of = {x: _MARKERS[i] for i, x in enumerate(top_labels)}
    lab = np.array([x if x in marker_of else "other labels" for x in labels], dtype=object)
    if (lab == "other labels").any():
        marker_of["other labels"] = _MARKERS[-1]
    reason = np.array(p.reason, dtype=object)
    order = ["clean", *sorted({r for r in p.reason if r != "clean"}, key=_reason_sort_key, reverse=True)]
    from matplotlib.lines import Line2D

    for r in order:
        for lb, mk in marker_of.items():
            sel = (reason == r) & (lab == lb)
            if not sel.any():
                continue
            clean = r == "clean"
            ax.scatter(p.xy[sel, 0], p.xy[sel, 1], s=10 if clean else 26, marker=mk, c=reason_color(r),
                       alpha=0.45 if clean else 0.85, linewidths=0.3 if not clean else 0,
                       edgecolors="black" if not clean else "none", zorder=1 if clean else 3)
    counts = {r: int((reason == r).sum()) for r in order}
    h1 = [Line2D([], [], linestyle="", marker="o", color=reason_color(r), label=f"{r} ({counts[r]:,})")
          for r in reversed(order)]
    h2 = [Line2D([], [], linestyle="", marker=mk, color="#444444", label=lb) for lb, mk in marker_of.items()]
    fig.subplots_adjust(left=0.09, right=0.72, top=0.88, bottom=0.09)
    fig.legend(handles=h1, title="reason (colour)", fontsize=8, title_fontsize=8, loc="upper left",
               bbox_to_anchor=(0.735, 0.88), frameon=False)
    fig.legend(handles=h2, title="label (marker)", fontsize=8, title_fontsize=8, loc="lower left",
               bbox_to_anchor=(0.735, 0.09), frameon=False)
    ev = p.explained_variance_ratio
    ax.set_xlabel(f"PC1 ({ev[0]:.1%} of the variance of {p.fitted_on})", fontsize=9)
    ax.set_ylabel(f"PC2 ({ev[1]:.1%})", fontsize=9)
    model = scan.embedder.get("model") or scan.embedder.get("kind") or "?"
    ax.set_title(f"PCA of {len(p.id):,} of {p.rows_total:,} embedded rows (all flagged included)\n"
                 f"embedder: {_shorten(str(model), 70)}", fontsize=10)
    return fig


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100)


def figure_png(fig, dpi: int = 100) -> bytes:
    """A Figure as PNG bytes (Agg; no GUI backend involved)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()

