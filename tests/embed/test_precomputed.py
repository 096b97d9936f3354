"""PrecomputedEmbedder: list / large_list / fixed_size_list columns, as given."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from shardguard.embed import PrecomputedEmbedder

RNG = np.random.default_rng(0)
X = (RNG.normal(size=(6, 5)) * 10).astype(np.float32)


def batch_with(emb: pa.Array) -> pa.RecordBatch:
    n = len(emb)
    return pa.record_batch(
        {
            "id": pa.array([f"id{i}" for i in range(n)]),
            "text": pa.array(["t"] * n),
            "label": pa.array(["a"] * n),
            "row": pa.array(np.arange(100, 100 + n, dtype=np.int64)),
            "embedding": emb,
        }
    )


def list_array(rows, kind="list", value_type=pa.float32()):
    if kind == "fixed":
        return pa.array(rows, type=pa.list_(value_type, len(rows[0])))
    if kind == "large":
        return pa.array(rows, type=pa.large_list(value_type))
    return pa.array(rows, type=pa.list_(value_type))


@pytest.mark.parametrize("kind", ["list", "large", "fixed"])
@pytest.mark.parametrize("vt", [pa.float32(), pa.float64(), pa.float16(), pa.int8()])
def test_column_types(kind, vt):
    vals = X.round() if pa.types.is_integer(vt) else X
    vals = np.clip(vals, -100, 100)
    rows = [list(map(float if not pa.types.is_integer(vt) else int, r)) for r in vals]
    if pa.types.is_float16(vt):
        arr = list_array([list(np.float16(r)) for r in vals], kind, vt)
    else:
        arr = list_array(rows, kind, vt)
    E = PrecomputedEmbedder().embed_batch(batch_with(arr))
    assert E.dtype == np.float32 and E.shape == vals.shape
    np.testing.assert_allclose(E, vals.astype(np.float16 if pa.types.is_float16(vt) else np.float32), rtol=1e-3)


def test_features_are_used_as_given_not_normalised():
    emb = PrecomputedEmbedder()
    E = emb.embed_batch(batch_with(list_array(X.tolist(), "fixed")))
    np.testing.assert_array_equal(E, X)
    assert not np.allclose(np.linalg.norm(E, axis=1), 1.0)
    assert emb.dim == 5
    d = emb.describe()
    assert d["kind"] == "precomputed" and d["normalized"] is False and d["dim"] == 5


@pytest.mark.parametrize("kind", ["list", "fixed"])
def test_sliced_batch_respects_offsets(kind):
    b = batch_with(list_array(X.tolist(), kind)).slice(2, 3)
    E = PrecomputedEmbedder().embed_batch(b)
    np.testing.assert_array_equal(E, X[2:5])


def test_null_vector_names_the_row():
    rows = X.tolist()
    rows[3] = None
    with pytest.raises(ValueError, match=r"null vector at batch row 3, id 'id3', shard row 103"):
        PrecomputedEmbedder().embed_batch(batch_with(list_array(rows)))
    with pytest.raises(ValueError, match=r"batch row 3"):
        PrecomputedEmbedder().embed_batch(batch_with(list_array(rows, "fixed")))


def test_null_element_names_the_row():
    rows = X.tolist()
    rows[4][2] = None
    with pytest.raises(ValueError, match=r"null element at batch row 4"):
        PrecomputedEmbedder().embed_batch(batch_with(list_array(rows)))


def test_wrong_length_names_the_row():
    rows = X.tolist()
    rows[2] = rows[2][:3]
    with pytest.raises(ValueError, match=r"length 3 at batch row 2.*expected 5"):
        PrecomputedEmbedder().embed_batch(batch_with(list_array(rows)))
    with pytest.raises(ValueError, match=r"length 5 at batch row 0.*expected 4"):
        PrecomputedEmbedder(dim=4).embed_batch(batch_with(list_array(X.tolist())))


def test_dim_is_fixed_by_the_first_batch():
    emb = PrecomputedEmbedder()
    assert emb.dim is None
    emb.embed_batch(batch_with(list_array(X.tolist())))
    with pytest.raises(ValueError, match="expected 5"):
        emb.embed_batch(batch_with(list_array([r[:4] for r in X.tolist()])))


def test_non_finite_names_the_row():
    rows = X.tolist()
    rows[1][0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinity.*batch row 1"):
        PrecomputedEmbedder().embed_batch(batch_with(list_array(rows)))
    rows = X.astype(np.float64).tolist()
    rows[5][1] = 1e300  # overflows float32
    with pytest.raises(ValueError, match=r"batch row 5"):
        PrecomputedEmbedder().embed_batch(batch_with(list_array(rows, value_type=pa.float64())))


def test_bad_column():
    b = batch_with(list_array(X.tolist())).drop_columns(["embedding"])
    with pytest.raises(ValueError, match="no 'embedding' column"):
        PrecomputedEmbedder().embed_batch(b)
    b = batch_with(pa.array(["a"] * 6))
    with pytest.raises(ValueError, match="list"):
        PrecomputedEmbedder().embed_batch(b)
    b = batch_with(pa.array([["a"]] * 6))
    with pytest.raises(ValueError, match="numbers"):
        PrecomputedEmbedder().embed_batch(b)


def test_empty_batch():
    E = PrecomputedEmbedder(dim=5).embed_batch(batch_with(list_array(X.tolist())).slice(0, 0))
    assert E.shape == (0, 5)
