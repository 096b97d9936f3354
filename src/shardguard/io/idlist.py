"""Lists of row ids a person wrote down after a review: one id a line, or a Parquet column."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shardguard.io.readers import UsageError

log = logging.getLogger(__name__)


def read_id_list(path: str | Path) -> frozenset[str]:
    """The ids in ``path``: a Parquet file (its ``id`` column, or its only column) or a text
    file with one id a line (surrounding whitespace and blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: id list not found")
    if path.suffix.lower() == ".parquet":
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise UsageError(f"{path}: not a readable Parquet file ({exc})") from exc
        if "id" in table.column_names:
            column = table.column("id")
        elif table.num_columns == 1:
            column = table.column(0)
        else:
            raise UsageError(f"{path}: no 'id' column (columns: {', '.join(table.column_names)})")
        return frozenset(str(v) for v in column.to_pylist() if v is not None)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the id list ({exc})") from exc
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


def allowed_ids(path: str | Path | None) -> pa.Array | None:
    """The ids of an allow list (``review.allow``: confirmed clean by a review) as a sorted
    Arrow string array for ``pyarrow.compute.is_in``, or None without a list."""
    if not path:
        return None
    ids = read_id_list(path)
    log.info("%s: %d id(s) confirmed clean by a review", path, len(ids))
    return pa.array(sorted(ids), pa.string())
