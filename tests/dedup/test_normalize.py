"""Text normalisation: per text, batched over code points, Arrow and Python input alike."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from conftest import TRICKY

from shardguard.dedup import NearDuplicateIndex, normalize_codepoints, normalize_text, normalize_texts


def test_normalize_text():
    assert normalize_text("  Hello\u00a0\u00a0WORLD \t\n!") == "hello world !"
    assert normalize_text("ＦＵＬＬ ﬁ") == "full fi"  # NFKC
    assert normalize_text("e\u0301") == "\u00e9"
    assert normalize_text("") == "" and normalize_text(" \t ") == ""


def test_arrow_input_answers_like_python_strings(sst2, sms):
    """The scan hands the index Arrow string arrays (no Python object per text)."""
    texts = TRICKY + sst2[:2000] + sms[:500] + [t.upper() for t in sst2[:100]]
    for arr in (pa.array(texts), pa.array(texts, pa.large_string()), pa.chunked_array([texts[:7], texts[7:]])):
        a = normalize_codepoints(arr)
        b = normalize_codepoints(texts)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    sliced = pa.array(["zzz"] + texts).slice(1)  # an offset into the buffers
    np.testing.assert_array_equal(normalize_codepoints(sliced)[0], normalize_codepoints(texts)[0])
    np.testing.assert_array_equal(normalize_codepoints(pa.array(["a\x00b", " X "]))[1], [3, 1])
    r1 = NearDuplicateIndex().add(pa.array(texts))
    r2 = NearDuplicateIndex().add(texts)
    np.testing.assert_array_equal(r1[0], r2[0])
    np.testing.assert_array_equal(r1[1], r2[1])
    with pytest.raises(ValueError, match="null"):
        NearDuplicateIndex().add(pa.array(["a", None]))


def test_batch_normalisation_equals_per_text(sst2, sms):
    texts = TRICKY + sst2[:2000] + sms[:2000] + [t.upper() + "  \n" for t in sms[:300]]
    assert normalize_texts(texts) == [normalize_text(t) for t in texts]
    # a text containing NUL takes the per-text path
    assert normalize_texts(["a\x00b", " X "]) == ["a\x00b", "x"]
    cps, lens = normalize_codepoints([])
    assert cps.size == 0 and lens.size == 0
    # every whitespace character is in the table (all are <= U+3000)
    assert not any(chr(c).isspace() for c in range(0x3001, 0x110000, 7))
