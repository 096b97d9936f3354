"""Reading a finished scan: ``ScanOutput`` over what ``shardguard scan`` wrote under OUT
(``manifest.json``, ``report.json``, ``quarantine/``, ``scores/`` and the work files in ``.work/``),
as pyarrow Tables, plain dicts and dataclasses; its plots are :mod:`shardguard.explore.plots`'.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from shardguard.io.readers import UsageError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


# A row with several reasons is drawn in the colour of the first of these it has
# (the most specific poisoning signal first); unknown reasons come after, by name.
PRIMARY_ORDER = ("trigger", "duplicate_flood", "spectral", "outlier", "near_duplicate", "invalid")


class ScanOutputError(UsageError):
    """OUT is not a finished scan's output folder (or a file in it is unreadable)."""


def _reason_sort_key(reason: str) -> tuple[int, str]:
    try:
        return (PRIMARY_ORDER.index(reason), reason)
    except ValueError:
        return (len(PRIMARY_ORDER), reason)


def primary_reason(reasons: Sequence[str] | None) -> str:
    """The reason a row is coloured by: the first of ``PRIMARY_ORDER`` it has; 'clean' for none."""
    if not reasons:
        return "clean"
    return min(reasons, key=_reason_sort_key)


@dataclass(frozen=True)
class ShardInfo:
    """One scanned shard, as the manifest lists it."""

    name: str
    input: str
    output: str  # quarantine list, relative to OUT
    rows: int
    clean: int
    quarantined: int
    invalid: int
    reasons: dict[str, int]
    status: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def _stem(self) -> str:
        rel = self.output[len("quarantine/"):] if self.output.startswith("quarantine/") else self.output
        return rel[: -len(".parquet")] if rel.endswith(".parquet") else rel

    def quarantine_path(self, out: Path) -> Path:
        return out / "quarantine" / (self._stem + ".parquet")

    def scores_path(self, out: Path) -> Path:
        return out / "scores" / (self._stem + ".parquet")

    def work_path(self, out: Path) -> Path:
        return out / ".work" / (self._stem + ".arrow")


@dataclass
class Sample:
    """One row, with its text (None when invalid or when the work files are gone)."""

    shard: str
    id: str
    row: int
    label: str | None
    text: str | None
    reasons: list[str] = field(default_factory=list)
    similarity: float | None = None  # near-duplicate score against the cluster root (members only)
    detail: str | None = None


@dataclass
class DuplicateCluster:
    """A near-duplicate cluster: the first occurrence in scan order and the rows that repeat it.

    ``root`` is None only when the root's shard has left the output folder.
    """

    root_id: str
    root: Sample | None
    members: list[Sample]
    flood: bool

    @property
    def size(self) -> int:
        return len(self.members) + 1

    @property
    def labels(self) -> dict[str, int]:
        """Label counts over the whole cluster (root included)."""
        out: dict[str, int] = {}
        rows = ([self.root] if self.root is not None else []) + self.members
        for s in rows:
            key = "(none)" if s.label is None else s.label
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


@dataclass
class Projection:
    """Rows of a seeded sample mapped to 2-D by PCA."""

    xy: np.ndarray  # (n, 2)
    shard: list[str]
    row: np.ndarray
    id: list[str]
    label: list[str | None]
    reason: list[str]  # primary reason, or "clean"
    explained_variance_ratio: tuple[float, float]
    rows_total: int  # rows with an embedding in the whole scan
    fitted_on: str  # "clean rows of the sample" or "the whole sample"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ScanOutputError(
            f"{path} not found: {path.parent} is not the output folder of a finished `shardguard scan`"
        ) from None
    except (OSError, ValueError) as exc:
        raise ScanOutputError(f"cannot read {path}: {exc}") from None


class ScanOutput:
    """A finished scan's OUT folder, loaded for exploration (nothing is written)."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        if not self.out_dir.is_dir():
            raise ScanOutputError(f"{self.out_dir} is not a folder")
        self.manifest = _read_json(self.out_dir / "manifest.json")
        self.report = _read_json(self.out_dir / "report.json")
        if not self.manifest.get("complete") or self.report.get("run_key", self.manifest.get("run_key")) \
                != self.manifest.get("run_key"):
            done = sum(1 for s in self.manifest.get("shards", []) if s.get("status") == "ok")
            raise ScanOutputError(
                f"{self.out_dir}: the scan did not finish ({done} shard(s) written so far, and report.json is "
                "from another run); rerun the same shardguard scan into it to complete it"
            )
        self.all_shards = [
            ShardInfo(
                name=s["name"],
                input=s.get("input", ""),
                output=s.get("output", ""),
                rows=int(s.get("rows", 0)),
                clean=int(s.get("clean", 0)),
                quarantined=int(s.get("quarantined", 0)),
                invalid=int(s.get("invalid", 0)),
                reasons=dict(s.get("reasons", {})),
                status=s.get("status", "?"),
            )
            for s in self.manifest.get("shards", [])
        ]
        self.shards = [s for s in self.all_shards if s.ok]
        self._by_name = {s.name: s for s in self.shards}
        self._cache: dict[tuple, Any] = {}

    @classmethod
    def load(cls, out_dir: str | Path) -> "ScanOutput":
        return cls(out_dir)

    def __repr__(self) -> str:
        t = self.report.get("totals", {})
        return (f"ScanOutput({str(self.out_dir)!r}: {len(self.shards)} shards, {t.get('rows', 0):,} rows, "
                f"{t.get('quarantined', 0):,} quarantined)")

    # -- what is there ---------------------------------------------------------------------
    @property
    def failed(self) -> list[dict[str, str]]:
        return [{"name": s.name, "error": s.status} for s in self.all_shards if not s.ok]

    @property
    def reasons(self) -> list[str]:
        """Reasons that flagged at least one row, most specific first."""
        return sorted(self.report.get("reasons", {}), key=_reason_sort_key)

    @property
    def detectors(self) -> list[str]:
        """Detectors with a score column (``<name>_score``), in the order of the columns."""
        for s in self.shards:
            p = s.scores_path(self.out_dir)
            if p.exists():
                names = pq.read_schema(p).names
                return [c[: -len("_score")] for c in names if c.endswith("_score")]
        return [k for k in self.report.get("thresholds", {}) if k != "duplicate_flood"]

    @property
    def embedder(self) -> dict[str, Any]:
        return dict(self.manifest.get("embedder") or {})

    @property
    def has_texts(self) -> bool:
        return any(s.work_path(self.out_dir).exists() for s in self.shards)

    @property
    def has_embeddings(self) -> bool:
        for s in self.shards:
            p = s.work_path(self.out_dir)
            if p.exists():
                return "embedding" in ds.dataset(p, format="ipc").schema.names
        return False

    def threshold(self, detector: str) -> float | None:
        """The threshold of a detector in the units of its score column (None if it has none)."""
        info = self.report.get("thresholds", {}).get(detector)
        if not isinstance(info, dict):
            return None
        for key in ("threshold", "jaccard"):
            v = info.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                return float(v)
        return None

    def thresholds(self) -> dict[str, float | None]:
        return {d: self.threshold(d) for d in self.detectors}

    def triggers(self) -> list[dict[str, Any]] | None:
        """Mined triggers from report.json; None when this scan has no trigger miner's output."""
        t = self.report.get("triggers")
        if t is None:
            return None
        return [dict(x) if isinstance(x, dict) else {"trigger": x} for x in t]

    # -- counts ----------------------------------------------------------------------------
    def counts(self) -> dict[str, Any]:
        """``{"totals": {...}, "reasons": {reason: rows}, "shards": {name: {rows, clean, ..., reasons}}}``."""
        return {
            "totals": dict(self.report.get("totals", {})),
            "reasons": {r: self.report["reasons"][r] for r in self.reasons},
            "shards": {
                s.name: {"rows": s.rows, "clean": s.clean, "quarantined": s.quarantined, "invalid": s.invalid,
                         "reasons": dict(s.reasons), "status": s.status}
                for s in self.all_shards
            },
        }

    def counts_table(self) -> pa.Table:
        """One row per shard (and a final ``total`` row): rows, clean, quarantined, one column per reason."""
        reasons = self.reasons
        cols: dict[str, list] = {k: [] for k in ["shard", "rows", "clean", "quarantined", *reasons, "status"]}
        for s in self.all_shards:
            for k, v in (("shard", s.name), ("rows", s.rows), ("clean", s.clean), ("quarantined", s.quarantined),
                         ("status", s.status)):
                cols[k].append(v)
            for r in reasons:
                cols[r].append(int(s.reasons.get(r, 0)))
        tot = self.report.get("totals", {})
        cols["shard"].append("total")
        for k in ("rows", "clean", "quarantined"):
            cols[k].append(int(tot.get(k, 0)))
        for r in reasons:
            cols[r].append(int(self.report["reasons"].get(r, 0)))
        cols["status"].append("ok" if not self.failed else f"{len(self.failed)} failed")
        return pa.table({k: pa.array(v, pa.string() if k in ("shard", "status") else pa.int64())
                         for k, v in cols.items()})

    # -- tables ----------------------------------------------------------------------------
    def _shard_list(self, shard: str | Iterable[str] | None) -> list[ShardInfo]:
        if shard is None:
            return list(self.shards)
        names = [shard] if isinstance(shard, str) else list(shard)
        unknown = [n for n in names if n not in self._by_name]
        if unknown:
            raise KeyError(f"no scanned shard named {unknown[0]!r}; shards: {', '.join(self._by_name)}")
        return [self._by_name[n] for n in names]

    def _read_parquet(self, path: Path, columns: list[str] | None = None) -> pa.Table | None:
        if not path.exists():
            return None
        t = pq.read_table(path)
        if columns is not None:
            t = t.select([c for c in columns if c in t.column_names])
        return t

    def quarantine(self, shard: str | Iterable[str] | None = None, with_text: bool = False) -> pa.Table:
        """The quarantine lists of ``shard`` (default: all), with a leading ``shard`` column."""
        key = ("quarantine", None if shard is None else tuple([shard] if isinstance(shard, str) else shard))
        if key not in self._cache:
            parts = []
            for s in self._shard_list(shard):
                t = self._read_parquet(s.quarantine_path(self.out_dir))
                if t is None:
                    continue
                parts.append(t.add_column(0, "shard", pa.array([s.name] * t.num_rows, pa.string())))
            self._cache[key] = _concat(parts, _empty_quarantine(self.detectors))
        t = self._cache[key]
        return self._join_text(t) if with_text else t

    def scores(self, shard: str | Iterable[str] | None = None, columns: list[str] | None = None) -> pa.Table:
        """Every row's status and scores (``scores/<shard>.parquet``), with a leading ``shard`` column."""
        parts = []
        for s in self._shard_list(shard):
            t = self._read_parquet(s.scores_path(self.out_dir), columns)
            if t is None:
                continue
            parts.append(t.add_column(0, "shard", pa.array([s.name] * t.num_rows, pa.string())))
        empty = pa.table({"shard": pa.array([], pa.string()), "id": pa.array([], pa.string()),
                          "row": pa.array([], pa.int64()), "status": pa.array([], pa.string())})
        return _concat(parts, empty)

    def texts(self, shard: str, rows: Sequence[int] | np.ndarray | None = None) -> pa.Table:
        """``row, id, text, label, detail`` from the shard's work file (all rows, or those in ``rows``).

        Raises ScanOutputError when the work file is gone (deleted after the scan)."""
        s = self._shard_list(shard)[0]
        p = s.work_path(self.out_dir)
        if not p.exists():
            raise ScanOutputError(f"{p} not found: the texts of {s.name} are only in the scan's work files")
        return _read_work(p, ["row", "id", "text", "label", "detail"], rows)

    def _join_text(self, t: pa.Table) -> pa.Table:
        """Add a ``text`` column (from the work files) to a table with ``shard`` and ``row``; where
        the work files are gone, the quarantine list's own (cut) ``text`` stays."""
        text = np.full(t.num_rows, None, dtype=object)
        if "text" in t.column_names:
            text[:] = t.column("text").to_pylist()
            t = t.drop_columns(["text"])
        if t.num_rows:
            shards = t.column("shard").to_numpy(zero_copy_only=False)
            rows = t.column("row").to_numpy()
            for name in dict.fromkeys(shards.tolist()):
                idx = np.flatnonzero(shards == name)
                try:
                    w = self.texts(name, rows[idx])
                except ScanOutputError:
                    continue
                lookup = dict(zip(w.column("row").to_pylist(), w.column("text").to_pylist()))
                text[idx] = [lookup.get(r, old) for r, old in zip(rows[idx].tolist(), text[idx].tolist())]
        return t.append_column("text", pa.array(text.tolist(), pa.string()))

    def flagged(self, reason: str | None = None, shard: str | Iterable[str] | None = None, top: int | None = 20,
                sort_by: str | None = None, with_text: bool = True) -> pa.Table:
        """The top flagged rows with their text.

        ``reason`` keeps rows flagged for it; ``shard`` one shard (or several). Order: by
        ``sort_by`` (a column, descending) when given; else, for a detector's reason, by its
        score (descending); else by the number of reasons, then by how far the row's largest
        score is past its detector's threshold (score / threshold). Ties keep scan order.
        Columns: shard, id, row, label, reasons, duplicate_of, detail, the score columns and
        ``text`` (null for invalid rows).
        """
        t = self.quarantine(shard)
        if reason is not None:
            t = t.filter(pa.array(_has_reason(t.column("reasons"), reason)))
        if t.num_rows:
            order = self._rank(t, reason, sort_by)
            if top is not None:
                order = order[: max(int(top), 0)]
            t = t.take(pa.array(order, pa.int64()))
        elif top is not None:
            t = t.slice(0, 0)
        if with_text:
            t = self._join_text(t)
        return t

    def _rank(self, t: pa.Table, reason: str | None, sort_by: str | None) -> np.ndarray:
        n = t.num_rows
        scan_pos = np.arange(n)
        if sort_by is not None:
            if sort_by not in t.column_names:
                raise KeyError(f"no column {sort_by!r}; columns: {', '.join(t.column_names)}")
            v = pc.fill_null(t.column(sort_by).cast(pa.float64()), float("-inf")).to_numpy()
            v = np.where(np.isnan(v), -np.inf, v)
            return np.lexsort((scan_pos, -v))
        if reason is not None and f"{reason}_score" in t.column_names:
            v = _floats(t.column(f"{reason}_score"))
            v = np.where(np.isnan(v), -np.inf, v)
            return np.lexsort((scan_pos, -v))
        n_reasons = pc.list_value_length(t.column("reasons")).to_numpy(zero_copy_only=False).astype(float)
        margin = np.full(n, -np.inf)
        for det, thr in self.thresholds().items():
            col = f"{det}_score"
            if col not in t.column_names or thr is None or thr <= 0:
                continue
            v = _floats(t.column(col)) / thr
            margin = np.fmax(margin, np.where(np.isnan(v), -np.inf, v))
        return np.lexsort((scan_pos, -margin, -n_reasons))

    # -- duplicate clusters --------------------------------------------------------------------
    def duplicate_clusters(self, top: int | None = 5) -> list[DuplicateCluster]:
        """The largest near-duplicate clusters, rebuilt from the per-row scores.

        Every copy names its root (the first occurrence in scan order) by
        ``duplicate_of`` (id), ``duplicate_of_shard`` and ``duplicate_of_row`` in
        ``scores/``, whether it was quarantined or not (``near_duplicates.copies``
        decides that); a member's ``reasons`` come from the quarantine lists (empty
        when it is clean). Largest first; ties by root shard and row.
        """
        q = self.quarantine()
        m = self.scores(columns=["id", "row", "label", "duplicate_of", "duplicate_of_shard", "duplicate_of_row",
                                 "near_duplicate_score"])
        if m.num_rows == 0 or "duplicate_of_row" not in m.column_names:
            return []
        m = m.filter(pc.is_valid(m.column("duplicate_of_row")))
        if m.num_rows == 0:
            return []
        qkeys = {(sh, row): rs for sh, row, rs in zip(q.column("shard").to_pylist(), q.column("row").to_pylist(),
                                                       q.column("reasons").to_pylist())}
        order = {s.name: k for k, s in enumerate(self.shards)}
        keys = list(zip(m.column("duplicate_of_shard").to_pylist(), m.column("duplicate_of_row").to_pylist()))
        root_id_of = dict(zip(keys, m.column("duplicate_of").to_pylist()))
        groups: dict[tuple[str, int], list[int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
        ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), order.get(kv[0][0], 0), kv[0][1]))
        if top is not None:
            ranked = ranked[: max(int(top), 0)]
        if not ranked:
            return []

        members_tbl = m
        texts = self._join_text(members_tbl).column("text").to_pylist()
        cols = {c: members_tbl.column(c).to_pylist() for c in ("shard", "id", "row", "label")}
        cols["reasons"] = [qkeys.get(k) for k in zip(cols["shard"], cols["row"])]
        sims = (members_tbl.column("near_duplicate_score").to_pylist()
                if "near_duplicate_score" in members_tbl.column_names else [None] * members_tbl.num_rows)
        chosen = {k: (k[0], k[1], False) for k, _ in ranked}

        # Root rows' text, label and reasons, read per shard.
        root_rows: dict[tuple[str, int], Sample] = {}
        by_shard: dict[str, list[int]] = {}
        for c in chosen.values():
            if c is not None:
                by_shard.setdefault(c[0], []).append(c[1])
        for sh, rows in by_shard.items():
            try:
                w = self.texts(sh, rows)
                recs = w.to_pylist()
            except ScanOutputError:
                s = self.scores(sh, columns=["id", "row", "label"])
                s = s.filter(pc.is_in(s.column("row"), pa.array(rows, pa.int64())))
                recs = [dict(r, text=None, detail=None) for r in s.to_pylist()]
            for r in recs:
                root_rows[(sh, r["row"])] = Sample(sh, r["id"], r["row"], r["label"], r.get("text"),
                                                   list(qkeys.get((sh, r["row"]), []) or []), None, r.get("detail"))

        out = []
        for key, idx in ranked:
            idx = sorted(idx, key=lambda i: (order[cols["shard"][i]], cols["row"][i]))
            members = [Sample(cols["shard"][i], cols["id"][i], cols["row"][i], cols["label"][i], texts[i],
                              list(cols["reasons"][i] or []), sims[i]) for i in idx]
            root = root_rows.get(key)
            flood = any("duplicate_flood" in s.reasons for s in members)
            out.append(DuplicateCluster(root_id_of[key], root, members, flood))
        return out

    # -- embeddings ------------------------------------------------------------------------------
    def projection(self, max_rows: int = 5000, seed: int = 0) -> Projection:
        """PCA to 2-D of a seeded sample of at most ``max_rows`` rows that have an embedding.

        Every flagged row is in the sample when they fit in half of it, clean rows filling
        the rest; otherwise a seeded subset of them, so that clean rows (at least half the
        sample, or all of them when fewer) are always drawn to compare with. PCA is fitted on the sample's clean rows (so
        that a large flood does not claim a component for itself) and applied to all of it.
        """
        from sklearn.decomposition import PCA
        from threadpoolctl import threadpool_limits

        if not self.has_embeddings:
            raise ScanOutputError("this scan has no embeddings (embedder 'none', or the .work folder was removed)")
        q = self.quarantine()
        qreasons = {(sh, row): rs for sh, row, rs in zip(q.column("shard").to_pylist(), q.column("row").to_pylist(),
                                                          q.column("reasons").to_pylist())}
        shards, rows, flagged = [], [], []
        for s in self.shards:
            p = s.work_path(self.out_dir)
            if not p.exists():
                continue
            w = ds.dataset(p, format="ipc").to_table(columns=["row", "detail"])
            r = w.filter(pc.is_null(w.column("detail"))).column("row").to_numpy()
            shards.append(np.full(r.size, self.shards.index(s), np.int32))
            rows.append(r)
            qrows = q.filter(pc.equal(q.column("shard"), s.name)).column("row").to_numpy()
            flagged.append(np.isin(r, qrows))
        if not rows:
            raise ScanOutputError("no rows with an embedding")
        sh_all, row_all, fl_all = np.concatenate(shards), np.concatenate(rows), np.concatenate(flagged)
        rng = np.random.default_rng(seed)
        fl_idx, cl_idx = np.flatnonzero(fl_all), np.flatnonzero(~fl_all)
        k = min(cl_idx.size, max(max_rows - fl_idx.size, max_rows // 2))  # clean rows drawn
        if fl_idx.size > max_rows - k:
            fl_idx = np.sort(rng.choice(fl_idx, max_rows - k, replace=False))
        cl_idx = np.sort(rng.choice(cl_idx, k, replace=False)) if k < cl_idx.size else cl_idx
        pick = np.sort(np.concatenate([fl_idx, cl_idx]))

        X_parts, sh_out, row_out, id_out, label_out = [], [], [], [], []
        for k_shard in np.unique(sh_all[pick]).tolist():
            s = self.shards[k_shard]
            want = row_all[pick][sh_all[pick] == k_shard]
            t = _read_work(s.work_path(self.out_dir), ["row", "id", "label", "embedding"], want)
            dim = t.schema.field("embedding").type.list_size
            emb = t.column("embedding").combine_chunks()
            X_parts.append(emb.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32))
            sh_out += [s.name] * t.num_rows
            row_out.append(t.column("row").to_numpy())
            id_out += t.column("id").to_pylist()
            label_out += t.column("label").to_pylist()
        X = np.concatenate(X_parts)
        rows_np = np.concatenate(row_out)
        reason = [primary_reason(qreasons.get((sh, r))) for sh, r in zip(sh_out, rows_np.tolist())]
        clean = np.array([x == "clean" for x in reason])
        fit_on, fitted_on = (X[clean], "clean rows of the sample") if clean.sum() >= 3 else (X, "the whole sample")
        n_comp = 2 if min(fit_on.shape) >= 2 else 1
        # A few thousand rows: one BLAS thread is as fast, and immune to oversubscription on a busy machine.
        with threadpool_limits(limits=1, user_api="blas"):
            pca = PCA(n_components=n_comp, random_state=seed).fit(fit_on)
            xy = pca.transform(X)
        if n_comp == 1:
            xy = np.column_stack([xy[:, 0], np.zeros(len(xy))])
        evr = tuple(float(v) for v in pca.explained_variance_ratio_) + (0.0,) * (2 - n_comp)
        return Projection(xy, sh_out, rows_np, id_out, label_out, reason, evr[:2], int(row_all.size), fitted_on)

    # -- figures: drawn by shardguard.explore.plots ------------------------------------------
    def plot_counts(self, max_shards: int = 20) -> "Figure":
        """Rows per reason and a shard x reason table of counts: :func:`shardguard.explore.plots.plot_counts`."""
        from shardguard.explore import plots

        return plots.plot_counts(self, max_shards)

    def plot_score_histograms(self, bins: int = 50) -> "Figure":
        """One histogram per detector score, its threshold drawn:
        :func:`shardguard.explore.plots.plot_score_histograms`."""
        from shardguard.explore import plots

        return plots.plot_score_histograms(self, bins)

    def plot_projection(self, max_rows: int = 5000, seed: int = 0, projection: Projection | None = None) -> "Figure":
        """The 2-D PCA map of ``projection()``: :func:`shardguard.explore.plots.plot_projection`."""
        from shardguard.explore import plots

        return plots.plot_projection(self, max_rows, seed, projection)

    # -- text ------------------------------------------------------------------------------------
    def summary(self, clusters: int = 3) -> str:
        """A short plain-text summary: totals, reasons, shards, thresholds, largest clusters, triggers."""
        tot = self.report.get("totals", {})
        rows = int(tot.get("rows", 0))
        q = int(tot.get("quarantined", 0))
        lines = [
            f"shardguard scan in {self.out_dir} (shardguard {self.manifest.get('version', '?')}, "
            f"embedder {self.embedder.get('kind', 'none')})",
            f"{tot.get('shards', len(self.all_shards)):,} shards, {rows:,} rows: {tot.get('clean', 0):,} clean, "
            f"{q:,} quarantined ({q / max(rows, 1):.1%}), {tot.get('invalid', 0):,} invalid"
            + (f"; {self.report['wall_s']:.1f} s" if isinstance(self.report.get("wall_s"), (int, float)) else ""),
            "",
        ]
        ct = self.counts_table().to_pylist()
        head = ["shard", "rows", "clean", "quarantined", *self.reasons, "status"]
        cells = [[str(r[h]) if not isinstance(r[h], int) else f"{r[h]:,}" for h in head] for r in ct]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]

        def fmt(vals: list[str]) -> str:
            return "  ".join(v.ljust(w) if i in (0, len(head) - 1) else v.rjust(w)
                             for i, (v, w) in enumerate(zip(vals, widths))).rstrip()

        lines += [fmt(head), *(fmt(c) for c in cells), ""]
        thr = []
        for name, info in self.report.get("thresholds", {}).items():
            if not isinstance(info, dict):
                continue
            if name == "duplicate_flood":
                thr.append(f"duplicate_flood: cluster size > {info.get('cluster_size_over')}")
            elif name == "near_duplicate":
                thr.append(f"near_duplicate: Jaccard >= {info.get('jaccard')} ({info.get('ngram')}-gram shingles, "
                           f"{info.get('num_perm')} permutations)")
            else:
                t = self.threshold(name)
                z = info.get("threshold_z")
                thr.append(f"{name}: score > {t:.4g}" if t is not None else f"{name}: (no threshold)")
                if z is not None:
                    thr[-1] += f" (z = {z})"
        if thr:
            lines += ["thresholds:", *(f"  {x}" for x in thr), ""]
        if clusters:
            cl = self.duplicate_clusters(top=clusters)
            if cl:
                lines.append("largest duplicate clusters:")
                for c in cl:
                    where = f"{c.root.shard}:{c.root.row}" if c.root else "root not found"
                    text = c.root.text if c.root and c.root.text is not None else (c.members[0].text or "")
                    lab = ", ".join(f"{k} x{v}" for k, v in c.labels.items())
                    lines.append(f"  {c.size:>5,} rows{' (flood)' if c.flood else ''}  root {c.root_id} ({where}); "
                                 f"labels {lab}")
                    lines.append(f"         {_shorten(_oneline(text), 100)!r}")
                lines.append("")
        trig = self.triggers()
        if trig is not None:
            lines.append(f"mined triggers: {len(trig)}")
            for t in trig[:10]:
                lines.append("  " + ", ".join(f"{k}={_fmt_value(v)}" for k, v in t.items()))
            lines.append("")
        if self.failed:
            lines.append("failed shards:")
            lines += [f"  {f['name']}: {f['error']}" for f in self.failed]
            lines.append("")
        return "\n".join(lines).rstrip() + "\n"


# -- helpers -------------------------------------------------------------------------------------
def _read_work(path: Path, columns: list[str], rows: Sequence[int] | np.ndarray | None = None) -> pa.Table:
    """``columns`` of a pass-1 work file (Arrow IPC): all rows, or those whose ``row`` is in ``rows``.

    The filter's value set is built from Python ints, so Arrow owns its memory: ``pa.array`` of
    an int64 ndarray would borrow the numpy buffer instead. The dataset scanner frees its filter
    on one of Arrow's pool threads, sometimes after ``to_table`` has returned (17 calls in 100
    measured); freeing a borrowed numpy buffer takes the GIL, and when the interpreter is already
    finalizing, CPython ends that thread with pthread_exit, whose unwinding through Arrow's
    noexcept destructors aborts the process ("terminate called without an active exception",
    exit 134; apache/arrow#36389). The copy (0.7 s per million rows on a busy machine) is less than
    what the callers then do per row in Python.
    """
    flt = None
    if rows is not None:
        value_set = pa.array(np.asarray(rows, np.int64).tolist(), pa.int64())
        flt = pc.field("row").isin(value_set)
    return ds.dataset(path, format="ipc").to_table(columns=columns, filter=flt)


def _floats(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.fill_null(col.cast(pa.float64()), float("nan")).to_numpy(zero_copy_only=False).astype(float)


def _has_reason(col: pa.ChunkedArray | pa.Array, reason: str) -> np.ndarray:
    """Rows of a list<string> column that contain ``reason``."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    hit = np.zeros(len(col), bool)
    if len(col):
        flat = pc.list_flatten(col)
        parents = pc.list_parent_indices(col).to_numpy()
        eq = pc.fill_null(pc.equal(flat, reason), False).to_numpy(zero_copy_only=False)
        hit[parents[eq]] = True
    return hit


def _concat(parts: list[pa.Table], empty: pa.Table) -> pa.Table:
    if not parts:
        return empty
    return pa.concat_tables(parts, promote_options="default")


def _empty_quarantine(detectors: list[str]) -> pa.Table:
    fields = [("shard", pa.string()), ("id", pa.string()), ("row", pa.int64()), ("reasons", pa.list_(pa.string())),
              ("duplicate_of", pa.string()), ("label", pa.string()), ("detail", pa.string())]
    fields += [(f"{d}_score", pa.float64()) for d in detectors]
    return pa.schema(fields).empty_table()


def _oneline(s: str) -> str:
    return " ".join(s.split())


def _shorten(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "\u2026"


def _fmt_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt_value(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    return str(v)

