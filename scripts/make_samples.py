#!/usr/bin/env python3
"""Build shardguard's sample shards (``data/samples/``) from the SMS Spam Collection.

Deterministic: the same source file and ``--seed`` give the same rows, in the same
order, in every shard, and the same ``PLANTED.json``. Rebuild with

    python scripts/make_samples.py

which reads ``../shared/data/sms_spam/sms_spam.parquet`` (relative to the repository
root) and writes into ``data/samples/``:

    sms_000.parquet         Parquet, row groups of 128 rows
    sms_001.jsonl           JSON Lines
    extra/sms_002.arrow     Arrow IPC file format, record batches of 128 rows
    extra/sms_003.jsonl.gz  gzip-compressed JSON Lines (gzip mtime 0: byte-stable)
    PLANTED.json            what was planted where (ids per shard)

Every shard has the columns ``id`` (string, unique), ``text`` and ``label``
("ham"/"spam"). On top of 1,920 real messages (source ids kept) the script plants:

* two near-duplicate floods, each copy carrying 1-3 random character edits
  (insert / delete / substitute a letter) of one real spam message and spread over
  several shards: ``flood-a-NNN`` (40 copies, label "spam") and ``flood-b-NNN``
  (25 copies of another spam message, labelled "ham": a label-flip poison). Both
  are larger than shardguard's default flood size (20). The source messages are
  left out of the real rows and were chosen far (character 5-gram Jaccard < 0.4)
  from every other message, so each flood's cluster is exactly its planted rows;
* ``dup-NNN``: 5 exact duplicates of real rows, each in a shard scanned after the
  original's (one differs only in case and whitespace, i.e. equal once normalised);
* ``invalid-*``: null, empty, whitespace-only, non-string (JSON number) and
  oversized (> 100,000 characters) text.

The SMS data itself contains exact duplicate texts (403 in the full set); those in
the sample are listed in PLANTED.json under ``natural_exact_duplicates``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import random
import re
import string
import sys
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "sms_spam" / "sms_spam.parquet"
DEFAULT_OUT = REPO_ROOT / "data" / "samples"
DEFAULT_SEED = 0

SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("label", pa.string())])
BATCH_ROWS = 128  # Parquet row-group size and Arrow IPC record-batch size

# Shard files in the order the brief names them, with their format.
SHARDS = [
    ("sms_000.parquet", "parquet"),
    ("sms_001.jsonl", "jsonl"),
    ("extra/sms_002.arrow", "arrow"),
    ("extra/sms_003.jsonl.gz", "jsonl.gz"),
]
# shardguard scans shards in sorted path order: extra/... sorts before sms_...
SCAN_ORDER = sorted(name for name, _ in SHARDS)

REAL_ROWS = 1920  # 480 per shard
FLOODS = [
    # name, copies, label written on the copies, shards the copies are dealt over
    ("flood-a", 40, "spam", [name for name, _ in SHARDS]),
    ("flood-b", 25, "ham", ["sms_001.jsonl", "extra/sms_002.arrow", "extra/sms_003.jsonl.gz"]),
]
# Shard of each planted exact duplicate; its original comes from a shard scanned earlier.
DUPLICATE_TARGETS = ["sms_001.jsonl", "extra/sms_003.jsonl.gz", "sms_000.parquet", "sms_001.jsonl", "sms_000.parquet"]
OVERSIZED_CHARS = 120_000  # shardguard's default input.max_text_chars is 100,000
ISOLATION_JACCARD = 0.4  # flood sources: max char 5-gram Jaccard to any other message
SHINGLE = 5


def normalise(text: str) -> str:
    """The normalisation DESIGN.md names for duplicate detection."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).lower()).strip()


def shingles(text: str) -> set[str]:
    t = normalise(text)
    if len(t) < SHINGLE:
        return {t}
    return {t[i : i + SHINGLE] for i in range(len(t) - SHINGLE + 1)}


def max_jaccard(idx: int, sets: list[set[str]]) -> float:
    a = sets[idx]
    best = 0.0
    for j, b in enumerate(sets):
        if j != idx:
            inter = len(a & b)
            if inter:
                best = max(best, inter / (len(a) + len(b) - inter))
    return best


def edit_text(text: str, rng: random.Random, n_edits: int) -> str:
    """Apply n_edits random letter edits (insert, delete or substitute)."""
    chars = list(text)
    for _ in range(n_edits):
        op = rng.choice(("insert", "delete", "substitute"))
        letters = [i for i, c in enumerate(chars) if c.isascii() and c.isalpha()]
        if op == "insert":
            chars.insert(rng.randint(1, len(chars) - 1), rng.choice(string.ascii_lowercase))
        elif op == "delete":
            del chars[rng.choice(letters)]
        else:
            i = rng.choice(letters)
            pool = string.ascii_uppercase if chars[i].isupper() else string.ascii_lowercase
            chars[i] = rng.choice([c for c in pool if c != chars[i].lower() and c != chars[i].upper()])
    return "".join(chars)


def build(source: Path, seed: int) -> tuple[dict[str, list[dict]], dict]:
    rng = random.Random(seed)
    table = pq.read_table(source, columns=["id", "text", "label"])
    data = table.to_pylist()
    norm = [normalise(r["text"]) for r in data]
    norm_count: dict[str, int] = {}
    for n in norm:
        norm_count[n] = norm_count.get(n, 0) + 1
    sets = [shingles(r["text"]) for r in data]

    # --- flood sources: real spam, 80-160 chars, unique and far from everything else
    spam_candidates = [
        i
        for i, r in enumerate(data)
        if r["label"] == "spam" and 80 <= len(r["text"]) <= 160 and norm_count[norm[i]] == 1
    ]
    rng.shuffle(spam_candidates)
    flood_sources: list[int] = []
    for i in spam_candidates:
        if max_jaccard(i, sets) < ISOLATION_JACCARD:
            flood_sources.append(i)
            if len(flood_sources) == len(FLOODS):
                break
    if len(flood_sources) < len(FLOODS):
        raise SystemExit("could not find isolated spam messages for the floods")

    # --- oversized row: a ham message (not in the sample) repeated past the limit
    ham_candidates = sorted(
        i for i, r in enumerate(data) if r["label"] == "ham" and 40 <= len(r["text"]) <= 120 and i not in flood_sources
    )
    oversized_source = rng.choice(ham_candidates)

    # --- the real rows: a seeded sample, in source order, cut into contiguous shards
    excluded = set(flood_sources) | {oversized_source}
    pool = [i for i in range(len(data)) if i not in excluded]
    picked = sorted(rng.sample(pool, REAL_ROWS))
    per_shard = REAL_ROWS // len(SHARDS)
    shard_rows: dict[str, list[dict]] = {}
    for k, (name, _) in enumerate(SHARDS):
        shard_rows[name] = [dict(data[i]) for i in picked[k * per_shard : (k + 1) * per_shard]]

    planted: dict[str, dict[str, list[str]]] = {
        name: {"flood-a": [], "flood-b": [], "exact_duplicates": [], "invalid": []} for name, _ in SHARDS
    }

    def plant(shard: str, row: dict, kind: str) -> None:
        rows = shard_rows[shard]
        rows.insert(rng.randint(0, len(rows)), row)
        planted[shard][kind].append(row["id"])

    # --- floods
    flood_info = {}
    for (fname, copies, label, shards), src in zip(FLOODS, flood_sources):
        text = data[src]["text"]
        seen = {norm[src]}
        targets = [shards[c % len(shards)] for c in range(copies)]
        rng.shuffle(targets)
        for c in range(copies):
            while True:
                copy = edit_text(text, rng, rng.randint(1, 3))
                if normalise(copy) not in seen:
                    break
            seen.add(normalise(copy))
            plant(targets[c], {"id": f"{fname}-{c + 1:03d}", "text": copy, "label": label}, fname)
        flood_info[fname] = {
            "copies": copies,
            "source_id": data[src]["id"],
            "source_label": data[src]["label"],
            "label": label,
            "source_text": text,
            "edits": "1-3 random letter edits (insert/delete/substitute) per copy; every copy distinct once normalised",
            "source_max_char5_jaccard_to_any_other_message": round(max_jaccard(src, sets), 4),
        }

    # --- exact duplicates: originals from a shard scanned before the copy's shard
    dup_info = []
    by_id_shard = {r["id"]: name for name, rows in shard_rows.items() for r in rows}
    used: set[str] = set()
    for d, target in enumerate(DUPLICATE_TARGETS):
        originals = [
            r
            for name in SCAN_ORDER[: SCAN_ORDER.index(target)]
            for r in shard_rows[name]
            if not r["id"].startswith(("flood-", "dup-", "invalid-"))
            and r["id"] not in used
            and len(r["text"]) >= 30
            and r["text"].isascii()
            and norm_count[normalise(r["text"])] == 1
        ]
        orig = rng.choice(originals)
        used.add(orig["id"])
        orig_shard = by_id_shard[orig["id"]]
        if d == 0:  # equal only after normalisation (case + whitespace)
            text, variant = "  " + orig["text"].upper().replace(" ", "  ") + " ", "case+whitespace"
        else:
            text, variant = orig["text"], "verbatim"
        row = {"id": f"dup-{d + 1:03d}", "text": text, "label": orig["label"]}
        plant(target, row, "exact_duplicates")
        dup_info.append(
            {"id": row["id"], "shard": target, "duplicate_of": orig["id"], "duplicate_of_shard": orig_shard, "variant": variant}
        )

    # --- invalid rows
    big = data[oversized_source]["text"]
    oversized = " ".join([big] * math.ceil((OVERSIZED_CHARS + 1) / (len(big) + 1)))
    invalid_rows = [
        ("sms_000.parquet", "invalid-null-001", None, "null"),
        ("sms_001.jsonl", "invalid-empty-001", "", "empty"),
        ("sms_001.jsonl", "invalid-nonstring-001", 12345, "non-string (JSON number)"),
        ("extra/sms_002.arrow", "invalid-whitespace-001", " \t \n  ", "whitespace-only"),
        ("extra/sms_003.jsonl.gz", "invalid-null-002", None, "null (JSON null)"),
        ("extra/sms_003.jsonl.gz", "invalid-oversized-001", oversized, f"oversized ({len(oversized):,} chars)"),
    ]
    invalid_info = []
    for shard, rid, text, kind in invalid_rows:
        plant(shard, {"id": rid, "text": text, "label": "ham"}, "invalid")
        invalid_info.append({"id": rid, "shard": shard, "kind": kind})
    invalid_info[-1]["source_id"] = data[oversized_source]["id"]

    # --- exact duplicates the data brings itself, in scan order (planted ones excluded)
    first_seen: dict[str, tuple[str, str]] = {}
    natural = []
    for name in SCAN_ORDER:
        for r in shard_rows[name]:
            t = r["text"]
            if not isinstance(t, str) or not t.strip() or len(t) > 100_000:
                continue
            key = normalise(t)
            if key in first_seen:
                if not r["id"].startswith("dup-"):
                    natural.append(
                        {"id": r["id"], "shard": name, "duplicate_of": first_seen[key][0], "duplicate_of_shard": first_seen[key][1]}
                    )
            else:
                first_seen[key] = (r["id"], name)

    for name, rows in shard_rows.items():
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)), name

    manifest = {
        "generator": "scripts/make_samples.py",
        "command": "python scripts/make_samples.py" + ("" if seed == DEFAULT_SEED else f" --seed {seed}"),
        "seed": seed,
        "source": {
            "dataset": "SMS Spam Collection v.1 (Almeida & Gomez Hidalgo, 2011)",
            "file": source.name,
            "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
            "rows": len(data),
            "license": "CC BY 4.0 (UCI Machine Learning Repository)",
        },
        "scan_order": SCAN_ORDER,
        "shards": {
            name: {"format": fmt, "rows": len(shard_rows[name]), **planted[name]} for name, fmt in SHARDS
        },
        "floods": flood_info,
        "exact_duplicates": dup_info,
        "invalid": invalid_info,
        "natural_exact_duplicates": natural,
        "notes": [
            "Every row has columns id (unique within its shard), text, label.",
            "floods: shardguard's default flood_size is 20; each flood is larger, so all its members should be duplicate_flood.",
            "flood-b is a label-flip poison: spam text labelled 'ham'.",
            "exact_duplicates and natural_exact_duplicates list the later occurrence in scan order (sorted shard paths); "
            "'duplicate_of' is the first. Duplicates are computed on normalised text (NFKC, lowercase, collapsed whitespace).",
            "The real messages also contain natural near-duplicates (spam templates). By default (near_duplicates.copies: "
            "conflicting) shardguard quarantines only copies whose label contradicts the first occurrence's; the exact "
            "duplicates here keep their original's label, so they are quarantined as near_duplicate only with "
            "near_duplicates.copies: all (every copy names its first occurrence in scores/ either way).",
        ],
    }
    return shard_rows, manifest


def write_shard(path: Path, fmt: str, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path, row_group_size=BATCH_ROWS)
    elif fmt == "arrow":
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
            writer.write_table(table, max_chunksize=BATCH_ROWS)
    elif fmt in ("jsonl", "jsonl.gz"):
        payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
        if fmt == "jsonl.gz":
            with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                gz.write(payload)
        else:
            path.write_bytes(payload)
    else:  # pragma: no cover
        raise ValueError(fmt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help=f"SMS Spam parquet (default: {DEFAULT_SOURCE})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default: {DEFAULT_SEED})")
    args = parser.parse_args(argv)
    if not args.source.is_file():
        print(f"error: source not found: {args.source}", file=sys.stderr)
        return 2

    shard_rows, manifest = build(args.source, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, fmt in SHARDS:
        write_shard(args.out / name, fmt, shard_rows[name])
    (args.out / "PLANTED.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    total = 0
    for name, _ in SHARDS:
        info = manifest["shards"][name]
        total += info["rows"]
        print(
            f"{name:26s} {info['rows']:5d} rows  flood-a {len(info['flood-a']):2d}  flood-b {len(info['flood-b']):2d}  "
            f"dups {len(info['exact_duplicates'])}  invalid {len(info['invalid'])}  "
            f"({(args.out / name).stat().st_size:,} bytes)"
        )
    print(f"{'total':26s} {total:5d} rows -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
