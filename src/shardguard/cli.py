"""Command line: parses arguments, prints progress and summaries. No logic lives here."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import time
from typing import Any, Sequence

import yaml

from shardguard import __version__
from shardguard.config import ConfigError, load_config
from shardguard.detectors import REGISTRY
from shardguard.io.readers import UsageError

log = logging.getLogger("shardguard")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: 128 + the signal number, as shells report a process ended by it.
EXIT_SIGINT, EXIT_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with terminal control characters (escape codes from hostile ids or texts) made visible."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _markup_safe(text: object) -> str:
    """A value for a rich table cell: control characters visible, ``[...]`` not read as markup."""
    from rich.markup import escape

    return escape(printable(str(text)))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so the run unwinds as for Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()

#: What ``report --html`` asks for when matplotlib cannot be imported.
MATPLOTLIB_PIP = f'{sys.executable} -m pip install "matplotlib>=3.8"'


def _parse_set(values: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (dotted key), got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem", None) or "cannot be parsed"
            raise ConfigError(f"--set {key.strip()}: value {raw!r} is not valid YAML ({where})") from None
    return out


def unescape_template(text: str) -> str:
    r"""Turn the backslash escapes a user types on a command line (``\n``, ``\t``, ``\\``) into
    characters, leaving every other character -- non-ASCII ones included -- as typed."""
    # latin-1 + backslashreplace keeps non-ASCII characters as \xNN / \uNNNN escapes, which
    # unicode_escape turns back into the same characters.
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def _scan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scan",
        help="scan shards and write quarantine lists",
        description="Scan dataset shards (Parquet, Arrow IPC, JSON Lines[.gz]) for invalid rows, "
        "near-duplicates, duplicate floods, outliers and backdoor clusters; write OUT/quarantine/<shard>.parquet "
        "for every shard, OUT/manifest.json and OUT/report.json. Exit 0 when every shard was scanned, "
        "1 when any failed, 2 for usage or config errors. Rerunning into the same OUT resumes.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="shard files or folders (searched recursively)")
    p.add_argument("--out", required=True, metavar="OUT", help="output folder")
    p.add_argument("--config", metavar="FILE", help="YAML config (see configs/default.yaml)")
    g = p.add_argument_group("columns")
    g.add_argument("--id-column", metavar="C", help="unique row id column (default: '<shard>:<row>')")
    g.add_argument("--text-column", metavar="C", help="text column (default: text)")
    g.add_argument("--label-column", metavar="C", help="label column (optional; per-label detectors use it)")
    g.add_argument("--text-template", metavar="T",
                   help=r"build the text from several columns, e.g. '{instruction}\n{input}\n{output}'")
    g.add_argument("--response-column", metavar="C",
                   help="the template's column holding the response (instruction data: the "
                        "shared-response and injected-content rules read it)")
    g.add_argument("--embedding-column", metavar="C",
                   help="precomputed embedding column (list of floats); implies --embedder precomputed")
    g.add_argument("--max-text-chars", type=int, metavar="N", help="longer texts are invalid (default 100000)")
    g.add_argument("--batch-size", type=int, metavar="N", help="rows per record batch (default 8192)")
    g = p.add_argument_group("near-duplicates")
    g.add_argument("--no-near-duplicates", action="store_true", help="switch the near-duplicate detector off")
    g.add_argument("--dup-threshold", type=float, metavar="J", help="MinHash Jaccard threshold (default 0.5)")
    g.add_argument("--num-perm", type=int, metavar="N", help="MinHash permutations (default 128)")
    g.add_argument("--ngram", type=int, metavar="N", help="character n-gram size for shingles (default 3)")
    g.add_argument("--flood-size", type=int, metavar="N",
                   help="a cluster with more members than this is a duplicate_flood (default 20)")
    g.add_argument("--copies", choices=["conflicting", "all", "none"],
                   help="which later copies are quarantined as near_duplicate: those whose label contradicts the "
                        "earlier row they say the same as (default), all of them (dedup), or none")
    g = p.add_argument_group("embedding detectors")
    g.add_argument("--embedder", choices=["auto", "sentence-transformers", "static", "hashing", "precomputed", "none"],
                   help="how rows become vectors (default auto: the transformer on a GPU, else the static model "
                        "distilled from it; 'none' skips the embedding detectors)")
    g.add_argument("--model", metavar="PATH",
                   help="local sentence-transformers model folder (default: packaged all-MiniLM-L6-v2); with "
                        "--embedder static also a model2vec folder (e.g. from 'shardguard model distill')")
    g.add_argument("--device", metavar="D", help="auto, cpu, cuda, cuda:N (default auto)")
    g.add_argument("--disable", action="append", default=[], metavar="NAME",
                   help=f"switch a detector off (repeatable): {', '.join(sorted(REGISTRY))}")
    g.add_argument("--enable", action="append", default=[], metavar="NAME",
                   help="switch an opt-in detector on (repeatable), e.g. label_mismatch")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config knob by dotted key, e.g. detectors.spectral.threshold_z=5 (repeatable)")
    g.add_argument("--random-state", type=int, metavar="N", help="seed for every random choice (default 0)")
    g = p.add_argument_group("review")
    g.add_argument("--allow", metavar="FILE",
                   help="ids confirmed clean after reviewing an earlier scan (one per line, or a Parquet 'id' "
                        "column): flagged rows with these ids are reported as 'allowed' and kept")
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=["local", "ray"],
                   help="local: this process (default); ray: the maps (read + embed, statistics, score + "
                        "write) and the near-duplicate reduce (split by component) on Ray actors, same lists "
                        "(needs pip install 'shardguard[ray]'); config: engine.kind")
    g.add_argument("--ray-address", metavar="ADDR",
                   help="a running Ray cluster, e.g. auto or HOST:6379 (inputs and OUT on a file system every "
                        "node sees); default: $RAY_ADDRESS where set, else start a local cluster for the scan "
                        "(never join one that 'ray start' left running); config: engine.ray_address")
    g.add_argument("--ray-cpus", type=int, metavar="N",
                   help="CPUs of the local Ray cluster the scan starts (default: all); config: engine.ray_cpus")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    p.set_defaults(func=_cmd_scan)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {}
    simple = {
        "id_column": "input.id_column",
        "text_column": "input.text_column",
        "label_column": "input.label_column",
        "text_template": "input.text_template",
        "response_column": "input.response_column",
        "embedding_column": "input.embedding_column",
        "max_text_chars": "input.max_text_chars",
        "batch_size": "input.batch_size",
        "dup_threshold": "near_duplicates.threshold",
        "num_perm": "near_duplicates.num_perm",
        "ngram": "near_duplicates.ngram",
        "flood_size": "near_duplicates.flood_size",
        "copies": "near_duplicates.copies",
        "embedder": "embed.embedder",
        "model": "embed.model",
        "device": "embed.device",
        "random_state": "random_state",
        "allow": "review.allow",
        "engine": "engine.kind",
        "ray_address": "engine.ray_address",
        "ray_cpus": "engine.ray_cpus",
    }
    for attr, key in simple.items():
        v = getattr(args, attr, None)
        if v is not None:
            o[key] = v
    if args.text_template is not None:
        # Let users type \n and \t on the command line.
        o["input.text_template"] = unescape_template(args.text_template)
    if args.embedding_column and args.embedder is None:
        o["embed.embedder"] = "precomputed"
    if args.no_near_duplicates:
        o["near_duplicates.enabled"] = False
    for name in args.disable:
        if name not in REGISTRY and name not in ("near_duplicate", "near_duplicates"):
            raise ConfigError(f"--disable {name}: unknown detector; known: {', '.join(sorted(REGISTRY))}, near_duplicate")
        if name in REGISTRY:
            o[f"detectors.{name}.enabled"] = False
        else:
            o["near_duplicates.enabled"] = False
    for name in args.enable:
        if name not in REGISTRY:
            raise ConfigError(f"--enable {name}: unknown detector; known: {', '.join(sorted(REGISTRY))}")
        if name in args.disable:
            raise ConfigError(f"--enable {name} and --disable {name} contradict each other")
        o[f"detectors.{name}.enabled"] = True
    o.update(_parse_set(args.set))
    return o


class _BarProgress:
    """A rich progress bar with rows/s (on a terminal)."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._columns = (TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                         TextColumn("{task.fields[rate]}"), TimeElapsedColumn())
        self._Progress = Progress
        self.console = console
        self._p = None

    def start(self, stage: str, total_rows: int | None) -> None:
        self._p = self._Progress(*self._columns, console=self.console, transient=False)
        self._p.start()
        self._task = self._p.add_task(stage, total=total_rows, rate="")
        self._t0 = time.perf_counter()
        self._n = 0

    def advance(self, rows: int) -> None:
        self._n += rows
        dt = max(time.perf_counter() - self._t0, 1e-9)
        self._p.update(self._task, advance=rows, rate=f"{self._n / dt:,.0f} rows/s")

    def finish(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None


class _LogProgress:
    """Plain log lines when not on a terminal: one per stage, and every ~10 s."""

    def start(self, stage: str, total_rows: int | None) -> None:
        self.stage, self.total, self.n = stage, total_rows, 0
        self.t0 = self.last = time.perf_counter()
        log.info("%s ...", stage)

    def advance(self, rows: int) -> None:
        self.n += rows
        now = time.perf_counter()
        if now - self.last >= 10:
            self.last = now
            of = f"/{self.total:,}" if self.total else ""
            log.info("%s: %s%s rows, %.0f rows/s", self.stage, f"{self.n:,}", of, self.n / (now - self.t0))

    def finish(self) -> None:
        dt = time.perf_counter() - self.t0
        log.info("%s: %s rows in %.1f s", self.stage, f"{self.n:,}", dt)


def _summary(console, result) -> None:
    from rich.table import Table

    reasons = sorted({r for o in result.shards for r in o.reasons})
    allowed = ["allowed"] if any(o.allowed for o in result.shards) else []
    t = Table(title=f"shardguard scan -> {_markup_safe(result.out_dir)}")
    for col in ["shard", "rows", "clean", "quarantined", *reasons, *allowed, "status"]:
        t.add_column(col, justify="left" if col in ("shard", "status") else "right")
    for o in result.shards:
        t.add_row(_markup_safe(o.shard.name), f"{o.rows:,}", f"{o.clean:,}", f"{o.quarantined:,}",
                  *[f"{o.reasons.get(r, 0):,}" for r in reasons], *[f"{o.allowed:,}" for _ in allowed],
                  "ok" + (" (resumed)" if o.resumed else "") if o.status == "ok" else "[red]FAILED[/red]")
    tot = result.report["totals"]
    t.add_row("[b]total[/b]", f"{tot['rows']:,}", f"{tot['clean']:,}", f"{tot['quarantined']:,}",
              *[f"{result.report['reasons'].get(r, 0):,}" for r in reasons],
              *[f"{tot.get('allowed', 0):,}" for _ in allowed],
              f"{result.report['wall_s']:.1f} s")
    console.print(t)
    emb = result.report.get("embedder")
    if emb:
        console.print(f"embedder: {emb['kind']} {emb.get('model') or ''} on {emb.get('device') or 'cpu'}"
                      + (f" ({emb['why']})" if emb.get("why") else ""), markup=False, highlight=False)
    for o in result.failed:
        console.print(f"[red]failed:[/red] {_markup_safe(o.status)}")


def _cmd_scan(args: argparse.Namespace) -> int:
    from rich.console import Console

    from shardguard.pipeline import ScanPipeline

    config = load_config(args.config, _overrides(args))
    engine = None
    if config.engine.kind == "ray":
        from shardguard.ray_engine import RayMissing, make_ray_engine, ray_failure

        try:
            engine = make_ray_engine(config.engine)
        except RayMissing as exc:
            raise UsageError(str(exc)) from None
        except ConfigError:
            raise
        except Exception as exc:  # ray.init's own errors: an address nobody answers, a refused token
            raise UsageError(f"the Ray engine {ray_failure(config.engine.ray_address, exc)}") from None
    # Off a terminal (CI logs, pipes) rich would fold the table to 80 columns.
    console = Console(stderr=False) if sys.stdout.isatty() else Console(stderr=False, width=200)
    tty = sys.stderr.isatty() and not args.no_progress
    progress = _BarProgress(Console(stderr=True)) if tty else _LogProgress()
    try:
        result = ScanPipeline(config, args.out, progress, engine).run(args.paths)
    finally:
        if isinstance(progress, _BarProgress):
            progress.finish()  # leave the terminal as it was, also when interrupted
        if engine is not None:
            engine.close()
    _summary(console, result)
    return EXIT_FAILED if result.failed else EXIT_OK


def _report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="summarise a finished scan; --html writes a static page with plots",
        description="Print a short summary of a finished scan (totals, rows per shard and reason, thresholds, "
        "largest duplicate clusters) from OUT/report.json, OUT/manifest.json and the quarantine lists. With "
        "--html, write one self-contained HTML page instead: counts, score histograms with thresholds, a 2-D "
        "map of the embeddings, the top flagged samples with their text, duplicate clusters and mined triggers. "
        "Exit 2 when OUT is not a finished scan's output folder.",
    )
    p.add_argument("out", metavar="OUT", help="the scan's output folder")
    p.add_argument("--html", metavar="FILE", help="write the HTML report to FILE (PNG plots embedded)")
    p.add_argument("--top", type=int, default=50, metavar="N", help="flagged samples listed in the page (default 50)")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from shardguard.explore import report as report_html

    if args.html:
        try:
            import matplotlib  # noqa: F401  (a core dependency; an install may still lack it)
        except ImportError:
            print(f"shardguard: error: report --html draws its plots with matplotlib, which this Python lacks; "
                  f"install it with: {MATPLOTLIB_PIP}", file=sys.stderr)
            return EXIT_USAGE
        path = report_html.write_report(args.out, args.html, top=args.top)
        print(f"wrote {path}")
    else:
        print(printable(report_html.text_summary(args.out)), end="")
    return EXIT_OK


def _apply_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "apply",
        help="write the scanned shards again without their quarantined rows",
        description="Write every shard of a finished scan to CLEAN_DIR without its quarantined rows, in the "
        "same format and schema (JSON Lines lines are kept byte for byte), with CLEAN_DIR/manifest.json. "
        "Inputs must be unchanged since the scan (sha256). Exit 1 when a shard could not be written.",
    )
    p.add_argument("out", metavar="OUT", help="the scan's output folder")
    p.add_argument("--to", required=True, metavar="CLEAN_DIR", help="folder for the cleaned shards")
    p.add_argument("--reasons", metavar="R,...",
                   help="remove only rows quarantined for one of these reasons (comma-separated; default: all)")
    p.add_argument("--keep", metavar="FILE",
                   help="ids confirmed clean after review, kept whatever their reasons (one per line, or a "
                        "Parquet 'id' column)")
    p.set_defaults(func=_cmd_apply)


def _cmd_apply(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from shardguard.apply import apply_quarantine

    reasons = None if args.reasons is None else [r.strip() for r in args.reasons.split(",") if r.strip()]
    results = apply_quarantine(args.out, args.to, reasons=reasons, keep=args.keep)
    console = Console() if sys.stdout.isatty() else Console(width=200)
    t = Table(title=f"shardguard apply -> {_markup_safe(args.to)}")
    for col in ("shard", "rows in", "removed", "kept on review", "rows out", "status"):
        t.add_column(col, justify="left" if col in ("shard", "status") else "right")
    for r in results:
        t.add_row(_markup_safe(r.name), f"{r.rows_in:,}", f"{r.removed:,}", f"{r.kept_on_review:,}", f"{r.rows_out:,}",
                  "ok" if r.status == "ok" else f"[red]{_markup_safe(r.status)}[/red]")
    console.print(t)
    return EXIT_OK if all(r.status == "ok" for r in results) else EXIT_FAILED


def _model_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model",
        help="manage local embedding models (distil a static model ahead of time)",
        description="Embedding models, offline. 'distill' builds the static (model2vec) model that "
        "'--embedder static' and the CPU default use, from a local sentence-transformers model: run it once "
        "on a machine with the source model and copy the folder to air-gapped machines "
        "(pass it as --model / embed.model).",
    )
    msub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    d = msub.add_parser(
        "distill",
        help="distil a static model from a local sentence-transformers model",
        description="Distil a static (model2vec) embedding model from a local sentence-transformers model, "
        "offline. Without --out it goes into the cache the scan looks in (embed.cache_dir, default "
        "$XDG_CACHE_HOME/shardguard); with --out into that folder, which must not exist yet. The folder "
        "records the sha256 of each of its files; a scan refuses it when they no longer match.",
    )
    d.add_argument("--from", dest="source", metavar="PATH",
                   help="local sentence-transformers model folder (default: the packaged all-MiniLM-L6-v2)")
    d.add_argument("--out", metavar="DIR", help="write the model here instead of into the cache")
    d.add_argument("--dim", type=int, default=256, metavar="N", help="dimensions kept (principal components; default 256)")
    d.add_argument("--cache-dir", metavar="DIR", help="cache folder (default: $SHARDGUARD_CACHE_DIR or $XDG_CACHE_HOME/shardguard)")
    d.set_defaults(func=_cmd_model_distill)


def _cmd_model_distill(args: argparse.Namespace) -> int:
    from shardguard.embed.static import distill_static_model, resolve_static_model

    if args.dim is not None and not 2 <= args.dim <= 4096:
        raise ConfigError(f"--dim must be in [2, 4096], got {args.dim}")
    if args.out:
        record = distill_static_model(args.source, args.out, dim=args.dim)
        path = args.out
    else:
        folder, info = resolve_static_model(args.source, args.cache_dir, args.dim)
        path, record = str(folder), {"model_sha256": info["weights_sha256"], "dim": args.dim,
                                     "source_model": info["source_model"]}
    print(f"static model: {path}")
    print(f"  source: {record.get('source_model')}  dim: {record.get('dim')}  sha256: {record.get('model_sha256')}")
    print(f"  use it with: shardguard scan ... --embedder static --model {path}")
    return EXIT_OK


def _verify_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check a delivery against a scan: every input, output and the manifest re-hashed",
        description="Re-hash every input shard of a finished scan, every output file and the manifest itself "
        "against the sha256 the scan recorded, and list every changed, missing or added shard or output (a shard "
        "swapped after the scan is the attack this catches). With PATHs, inputs are looked up by their names "
        "under those paths (a moved or copied delivery); without, where the scan found them. Exit 0 when "
        "everything matches, 1 when anything differs, 2 when OUT is not a finished scan.",
    )
    p.add_argument("out", metavar="OUT", help="the scan's output folder")
    p.add_argument("paths", nargs="*", metavar="PATH", help="where the delivery is now (default: the scanned paths)")
    p.set_defaults(func=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> int:
    from shardguard.verify import verify_scan

    v = verify_scan(args.out, args.paths)
    for problem in v.problems:
        print(printable(problem))
    if v.ok:
        print(f"verified {v.shards} shard(s) and {v.outputs} output file(s): everything matches the manifest")
        return EXIT_OK
    print(f"{len(v.problems)} difference(s) from the scan in {printable(args.out)}")
    return EXIT_FAILED


def _diff_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diff",
        help="compare a new delivery with a trusted earlier scan: new, changed and removed rows",
        description="Compare the shards at NEW_PATH with the finished scan in OLD_OUT (matched by its id column, "
        "in the scan's normalised text and label): which rows are new, changed (same id, other text or label) or "
        "removed. With --profile (a Guard profile of the trusted data) only the new and changed rows are scored, "
        "with their verdicts. Exit 0 when no new or changed row is flagged and every shard was read, 1 otherwise, "
        "2 when OLD_OUT is not a finished, unaltered scan.",
    )
    p.add_argument("old_out", metavar="OLD_OUT", help="the trusted scan's output folder (its .work folder is needed)")
    p.add_argument("paths", nargs="+", metavar="NEW_PATH", help="the new delivery's shard files or folders")
    p.add_argument("--profile", metavar="DIR", help="trusted Guard profile to score the new and changed rows with")
    p.add_argument("--out", metavar="DIR", help="write DIR/report.json and DIR/rows.parquet (every row that differs)")
    p.set_defaults(func=_cmd_diff)


def _cmd_diff(args: argparse.Namespace) -> int:
    from shardguard.diff import diff_delivery, write_diff

    if args.out:
        from shardguard.io.outputs import check_scan_output

        check_scan_output(args.out, [*args.paths, args.old_out])  # before any work
    result = diff_delivery(args.old_out, args.paths, args.profile)
    if args.out:
        write_diff(result, args.out, args.paths)
    c = result.counts
    print(f"against {printable(args.old_out)}: {c['new']:,} new, {c['changed']:,} changed, "
          f"{c['removed']:,} removed, {c['unchanged']:,} unchanged rows")
    if result.scored:
        verdicts = ", ".join(f"{k} {v:,}" for k, v in sorted(result.statuses.items())) or "none"
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(result.reasons.items())) or "none"
        print(f"new and changed rows scored against the profile: {verdicts}; reasons: {reasons}")
    else:
        print("no --profile: the new and changed rows were not scored")
    for f in result.failed:
        print(f"failed: {printable(f)}")
    return EXIT_FAILED if result.flagged or result.failed else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardguard",
        description="Find poisoned training samples (near-duplicate floods, outliers, backdoor clusters) "
        "in dataset shards before fine-tuning. Runs offline.",
    )
    parser.add_argument("--version", action="version", version=f"shardguard {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _scan_parser(sub)
    _report_parser(sub)
    _apply_parser(sub)
    _model_parser(sub)
    _verify_parser(sub)
    _diff_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return args.func(args)
    except (ConfigError, UsageError) as exc:
        print(f"shardguard: error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        print("shardguard: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
