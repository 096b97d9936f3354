"""Map a shard's columns onto shardguard's row schema and sort out invalid rows.

Every batch from a reader becomes a *normalised* batch with columns

* ``id`` (string): the configured id column, else ``"<shard>:<row>"``;
* ``text`` (string): the text column, or the text template rendered;
* ``label`` (string, nullable): the label column cast to string, else null;
* ``row`` (int64): the 0-based row in the shard;
* ``embedding`` (list of floats), only when an embedding column is configured;

split into the valid rows and a table of invalid rows (``row``, ``id``,
``detail``) whose detail names the column and what is wrong. Nothing is
dropped: every row of the input is in exactly one of the two.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from shardguard.config import InputConfig
from shardguard.io.readers import NONSTRING_PREFIX, ROW_ERROR_COLUMN, Shard, ShardError
from shardguard.mixing import id_hashes

INVALID_SCHEMA = pa.schema([("row", pa.int64()), ("id", pa.string()), ("detail", pa.string())])


def template_fields(template: str) -> list[str]:
    """Column names a ``str.format``-style template refers to, in order, without repeats."""
    fields = []
    for _, name, spec, conv in string.Formatter().parse(template):
        if name is None:
            continue
        if not name or spec or conv:
            raise ValueError(f"text template field {{{name}}} must be a plain column name")
        fields.append(name)
    return list(dict.fromkeys(fields))


@dataclass
class NormalizedBatch:
    valid: pa.RecordBatch
    invalid: pa.Table


class RowNormalizer:
    """One shard's column mapping and validation, batch by batch."""

    def __init__(self, shard: Shard, cfg: InputConfig):
        self.shard = shard
        self.cfg = cfg
        self._row = 0
        self._id_hashes: list[np.ndarray] = []
        self._id_rows: list[np.ndarray] = []

    def source_columns(self) -> list[str]:
        """Columns the reader must provide."""
        cols = []
        if self.cfg.id_column:
            cols.append(self.cfg.id_column)
        if self.cfg.text_template:
            cols += template_fields(self.cfg.text_template)
        else:
            cols.append(self.cfg.text_column)
        if self.cfg.label_column:
            cols.append(self.cfg.label_column)
        if self.cfg.embedding_column:
            cols.append(self.cfg.embedding_column)
        return list(dict.fromkeys(cols))

    # -- helpers ------------------------------------------------------------------
    def _column(self, batch: pa.RecordBatch, name: str) -> pa.Array:
        idx = batch.schema.get_field_index(name)
        if idx < 0:
            raise ShardError(f"{self.shard.path}: missing column {name!r}")
        return batch.column(idx)

    def _json_types(self, batch: pa.RecordBatch, name: str) -> np.ndarray | None:
        """Per row, the JSON type of a non-string value of ``name`` in a mixed-type JSON Lines column."""
        idx = batch.schema.get_field_index(NONSTRING_PREFIX + name)
        return None if idx < 0 else batch.column(idx).to_numpy(zero_copy_only=False)

    def _key_column(self, batch: pa.RecordBatch, name: str, what: str,
                    detail: np.ndarray) -> pa.Array:
        """An id or label column as text (the rule of :func:`~shardguard.io.readers.json_scalar_text`).

        Numbers, booleans and strings are compared as text (``1``, ``1.0`` and
        ``"1"`` are one label); an object or array value makes its row invalid,
        naming the column and the value's type. Never a silent null.
        """
        col = self._column(batch, name)
        n = batch.num_rows
        types = self._json_types(batch, name)
        if types is not None:
            nested = np.isin(types, ["object", "array"])
            detail[nested & (detail == None)] = [  # noqa: E711
                f"column {name!r}: {what} is a JSON {t}, expected a string or number" for t in types[nested & (detail == None)]  # noqa: E711
            ]
            return col.cast(pa.string())
        if pa.types.is_nested(col.type) or pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            present = col.is_valid().to_numpy(zero_copy_only=False)
            detail[present & (detail == None)] = f"column {name!r}: {what} has type {col.type}, expected a string or number"  # noqa: E711
            return pa.nulls(n, pa.string())
        if pa.types.is_floating(col.type):
            # 1.0 and 1 are one label; cast floats that are whole numbers to integers first.
            as_int = pc.cast(col, pa.int64(), safe=False)
            if pc.all(pc.equal(pc.cast(as_int, col.type, safe=False), col)).as_py() in (True, None):
                col = as_int
        return pc.cast(col, pa.string())

    def _nonstring_mask(self, batch: pa.RecordBatch, name: str, col: pa.Array) -> tuple[pa.Array, np.ndarray]:
        """(column as strings with bad values nulled, mask of present-but-not-string values)."""
        n = batch.num_rows
        bad = np.zeros(n, dtype=bool)
        types = self._json_types(batch, name)
        if types is not None:
            bad |= types != None  # noqa: E711
            return pc.if_else(pa.array(bad), pa.nulls(n, pa.string()), col.cast(pa.string())), bad
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            return col.cast(pa.string()), bad
        if pa.types.is_null(col.type):
            return pa.nulls(n, pa.string()), bad
        if self.shard.format != "jsonl":
            raise ShardError(
                f"{self.shard.path}: column {name!r} has type {col.type}, expected a string column"
            )
        bad |= col.is_valid().to_numpy(zero_copy_only=False)
        return pa.nulls(n, pa.string()), bad

    def _render_template(self, batch: pa.RecordBatch) -> tuple[pa.Array, np.ndarray, list[str]]:
        """Render the text template; returns (text, mask of rows with a non-string field, field names)."""
        parts: list = []
        n = batch.num_rows
        bad = np.zeros(n, dtype=bool)
        for literal, name, _, _ in string.Formatter().parse(self.cfg.text_template):
            if literal:
                parts.append(literal)
            if name is None:
                continue
            col = self._column(batch, name)
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_null(col.type):
                s, nb = self._nonstring_mask(batch, name, col)
                bad |= nb
            else:
                # Numbers and such read naturally inside a template.
                s = pc.cast(col, pa.string())
            parts.append(pc.fill_null(s, ""))
        arrays = [p if isinstance(p, pa.Array) else pa.array([p] * n, pa.string()) for p in parts]
        if not arrays:
            return pa.array([""] * n, pa.string()), bad, []
        text = pc.binary_join_element_wise(*arrays, "") if len(arrays) > 1 else arrays[0]
        return text, bad, template_fields(self.cfg.text_template)

    # -- the stage ------------------------------------------------------------------
    def __call__(self, batch: pa.RecordBatch) -> NormalizedBatch:
        n = batch.num_rows
        rows = np.arange(self._row, self._row + n, dtype=np.int64)
        self._row += n
        cfg = self.cfg

        if cfg.text_template:
            text, nonstring, fields = self._render_template(batch)
            where = "template " + ", ".join(repr(f) for f in fields)
        else:
            text, nonstring = self._nonstring_mask(batch, cfg.text_column, self._column(batch, cfg.text_column))
            where = f"column {cfg.text_column!r}"

        detail = np.full(n, None, dtype=object)
        is_null = text.is_null().to_numpy(zero_copy_only=False)
        stripped_len = pc.utf8_length(pc.utf8_trim_whitespace(text)).to_numpy(zero_copy_only=False)
        length = pc.utf8_length(text).to_numpy(zero_copy_only=False)
        too_long = ~is_null & (np.nan_to_num(length.astype(float), nan=0) > cfg.max_text_chars)
        empty = ~is_null & (np.nan_to_num(stripped_len.astype(float), nan=0) == 0)
        detail[too_long] = [
            f"{where}: text has {int(k):,} characters, over the limit of {cfg.max_text_chars:,}"
            for k in length[too_long]
        ]
        detail[empty] = f"{where}: text is empty or whitespace only"
        detail[is_null & ~nonstring] = f"{where}: text is null"
        detail[nonstring] = f"{where}: value is not a string"
        idx = batch.schema.get_field_index(ROW_ERROR_COLUMN)
        if idx >= 0:  # a JSON Lines value that is not an object: the row holds no columns
            row_error = batch.column(idx).to_numpy(zero_copy_only=False)
            detail[row_error != None] = row_error[row_error != None]  # noqa: E711

        if cfg.id_column:
            ids = self._key_column(batch, cfg.id_column, "id", detail)
            id_null = ids.is_null().to_numpy(zero_copy_only=False)
            fallback = pa.array([f"{self.shard.name}:{r}" for r in rows[id_null]], pa.string())
            if id_null.any():
                ids = pc.replace_with_mask(ids, pa.array(id_null), fallback)
                detail[id_null & (detail == None)] = f"column {cfg.id_column!r}: id is null"  # noqa: E711
            self._remember_ids(ids, rows, id_null)
        else:
            ids = pc.binary_join_element_wise(
                pa.array([self.shard.name + ":"] * n, pa.string()), pc.cast(pa.array(rows), pa.string()), ""
            )

        if cfg.label_column:
            label = self._key_column(batch, cfg.label_column, "label", detail)
        else:
            label = pa.nulls(n, pa.string())

        columns = {"id": ids, "text": text, "label": label, "row": pa.array(rows)}
        if cfg.response_column:
            resp = self._column(batch, cfg.response_column)
            resp = pc.fill_null(resp.cast(pa.string()) if not pa.types.is_string(resp.type) else resp, "")
            columns["response"] = resp
        if cfg.embedding_column:
            emb = self._column(batch, cfg.embedding_column)
            if not (pa.types.is_list(emb.type) or pa.types.is_fixed_size_list(emb.type) or pa.types.is_large_list(emb.type)):
                raise ShardError(
                    f"{self.shard.path}: column {cfg.embedding_column!r} has type {emb.type}, "
                    "expected a list of floats"
                )
            emb_null = emb.is_null().to_numpy(zero_copy_only=False)
            detail[emb_null & (detail == None)] = f"column {cfg.embedding_column!r}: embedding is null"  # noqa: E711
            columns["embedding"] = emb

        invalid_mask = detail != None  # noqa: E711
        full = pa.RecordBatch.from_pydict(columns)
        valid = full.filter(pa.array(~invalid_mask))
        invalid = pa.table(
            {
                "row": pa.array(rows[invalid_mask], pa.int64()),
                "id": pc.filter(ids, pa.array(invalid_mask)),
                "detail": pa.array(detail[invalid_mask].tolist(), pa.string()),
            },
            schema=INVALID_SCHEMA,
        )
        return NormalizedBatch(valid=valid, invalid=invalid)

    def _remember_ids(self, ids: pa.Array, rows: np.ndarray, skip: np.ndarray) -> None:
        keep = ~skip
        self._id_hashes.append(id_hashes(pc.filter(ids, pa.array(keep)).to_pylist()))
        self._id_rows.append(rows[keep])

    def check_unique_ids(self, lookup) -> None:
        """Raise :class:`ShardError` when an id repeats within the shard.

        ``lookup(row) -> id`` fetches the id of a row for the message. Ids are
        kept as 64-bit hashes (8 bytes a row) rather than strings.
        """
        if not self._id_hashes:
            return
        h = np.concatenate(self._id_hashes)
        r = np.concatenate(self._id_rows)
        order = np.argsort(h, kind="stable")
        hs = h[order]
        same = np.flatnonzero(hs[1:] == hs[:-1])
        for i in same:
            a, b = int(r[order[i]]), int(r[order[i + 1]])
            ida, idb = lookup(a), lookup(b)
            if ida == idb:
                raise ShardError(
                    f"{self.shard.path}: column {self.cfg.id_column!r}: id {ida!r} repeats "
                    f"(rows {min(a, b)} and {max(a, b)}); ids must be unique within a shard"
                )
