"""Text normalisation shared by every duplicate stage: ``normalize_text`` (Unicode NFKC,
lowercase, whitespace runs collapsed to one space, stripped) and its vectorised forms,
which run NFKC and lowercasing once per batch on the texts joined with NUL and the rest on a
``uint32`` code-point array.
"""

from __future__ import annotations

import unicodedata
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def normalize_text(text: str) -> str:
    """NFKC, lowercase, collapse every whitespace run to one space, strip."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())

# str.isspace() characters (what str.split() splits on); all are <= U+3000
_WS_TABLE = np.zeros(0x3002, dtype=bool)
_WS_TABLE[[c for c in range(0x3001) if chr(c).isspace()]] = True


def _joined(texts: "Sequence[str] | pa.Array | pa.ChunkedArray") -> str:
    """The texts joined with NUL, as one Python string.

    An Arrow string array is joined by Arrow itself: no Python object per text
    (the texts of a batch would otherwise be thousands of small objects whose
    memory the interpreter keeps in pools that long-lived objects pin).
    """
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if isinstance(texts, pa.Array):
        if texts.null_count:
            raise ValueError("texts must not be null")
        texts = texts.cast(pa.large_string())  # the joined batch may pass 2 GiB
        one_list = pa.ListArray.from_arrays(pa.array([0, len(texts)], pa.int32()), texts)
        return pc.binary_join(one_list, pa.scalar("\x00", pa.large_string()))[0].as_py()
    return "\x00".join(texts)


def normalize_codepoints(texts: "Sequence[str] | pa.Array") -> tuple[np.ndarray, np.ndarray]:
    """The normalised texts as one uint32 array of code points, and their lengths.

    Equal to ``[normalize_text(t) for t in texts]`` joined (tested), but only
    NFKC and lowercasing run in Python, once, on the texts joined with NUL: NUL
    is an NFKC starter that composes with nothing, is not cased and not
    whitespace, so neither step crosses it. Whitespace runs are collapsed and
    stripped on the code-point array. ``texts``: str sequence or Arrow string array.
    """
    n = len(texts)
    if n == 0:
        return np.empty(0, np.uint32), np.zeros(0, np.int64)
    big = _joined(texts)
    if big.count("\x00") != n - 1:  # a text contains NUL itself: per-text path
        if isinstance(texts, (pa.Array, pa.ChunkedArray)):
            texts = texts.to_pylist()
        norm = [normalize_text(t) for t in texts]
        cps = np.frombuffer("".join(norm).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        return cps, np.fromiter(map(len, norm), dtype=np.int64, count=n)
    # surrogatepass: a lone surrogate (possible in a Python str) is kept as its code point
    big = unicodedata.normalize("NFKC", big).lower()
    raw = np.frombuffer(big.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    size = raw.size
    sep = raw == 0
    ws = raw == 32
    other = np.flatnonzero((raw < 32) | ((raw >= 0x85) & (raw <= 0x3000)))  # may hold other whitespace
    if other.size:
        ws[other] = _WS_TABLE[raw[other]]
    # whitespace runs [run_start, run_end): one space survives, at run_start, iff the
    # run lies between two word characters of the same text (not NUL, not an edge)
    d = np.diff(ws.view(np.int8))
    run_start = np.flatnonzero(d == 1) + 1
    run_end = np.flatnonzero(d == -1) + 1
    if size and ws[0]:
        run_start = np.concatenate([[0], run_start])
    if size and ws[-1]:
        run_end = np.concatenate([run_end, [size]])
    inner = (run_start > 0) & (run_end < size)
    run_start, run_end = run_start[inner], run_end[inner]
    run_start = run_start[~sep[run_start - 1] & ~sep[run_end]]
    keep = np.empty(size + 1, dtype=bool)  # + a sentinel: reduceat needs a last element
    np.logical_not(ws | sep, out=keep[:-1])
    keep[-1] = False
    keep[run_start] = True
    # text i spans from after separator i-1 up to and including separator i (kept: no)
    starts = np.empty(n, dtype=np.int64)
    starts[0] = 0
    starts[1:] = np.flatnonzero(sep) + 1
    lens = np.add.reduceat(keep, starts, dtype=np.int64)
    cps = raw[keep[:-1]]
    if np.any(raw[run_start] != 32):  # kept tabs, newlines, ... become spaces
        cps[ws[keep[:-1]]] = 32
    return cps, lens


def normalize_texts(texts: Sequence[str]) -> list[str]:
    """``[normalize_text(t) for t in texts]`` through :func:`normalize_codepoints`."""
    cps, lens = normalize_codepoints(texts)
    big = cps.tobytes().decode("utf-32-le", "surrogatepass")
    ends = np.cumsum(lens).tolist()
    return [big[e - l : e] for e, l in zip(ends, lens.tolist())]


def normalized(texts: "pa.Array | pa.ChunkedArray | list[str]") -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """The texts normalised (``normalize_text``) as an Arrow large-string array, with their
    code points and lengths as :func:`normalize_codepoints`
    gives them."""
    cps, lens = normalize_codepoints(texts)
    big = cps.tobytes().decode("utf-32-le", "surrogatepass")
    ends = np.cumsum(lens)
    norm = pa.array([big[e - ln: e] for e, ln in zip(ends.tolist(), lens.tolist())], pa.large_string())
    return norm, cps, lens

