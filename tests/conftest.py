"""Shared fixtures: the committed samples and the real datasets in ../shared/data."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Static models distilled by the tests (the CLI's subprocesses inherit it): one cache for the
# machine's test runs, never the user's own ~/.cache/shardguard.
os.environ.setdefault("SHARDGUARD_CACHE_DIR", os.path.join(tempfile.gettempdir(), "shardguard-test-cache"))

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
SHARED_DATA = Path(os.environ.get("SHARDGUARD_SHARED_DATA", REPO.parent / "shared" / "data"))


def state_round_trip(meta: dict, arrays: dict) -> tuple[dict, dict]:
    """Persist fitted state as a profile does (JSON + npz without pickle) and read it back."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        return json.loads(json.dumps(meta)), {k: npz[k] for k in npz.files}


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def planted() -> dict:
    return json.loads((SAMPLES / "PLANTED.json").read_text())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"real datasets not found at {SHARED_DATA}")
    return SHARED_DATA


# ---------------------------------------------------------------------------
# real texts for the near-duplicate tests (tests/dedup)
# ---------------------------------------------------------------------------
#: Texts whose normalisation is easy to get wrong (whitespace, NFKC, combining marks, odd cases).
TRICKY = [
    "",
    " ",
    "\t\n ",
    "a",
    "ab",
    "abc",
    "  Hello\u00a0\u00a0World \t",
    "ＦＵＬＬＷＩＤＴＨ ﬁne ①",
    "e\u0301 vs \u00e9",
    "ΟΔΟΣ Σ.",
    "İstanbul",
    "line\u2028sep\u3000ideographic\x1cfs",
    "emoji 😀 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]


def parquet_texts(path: Path) -> list[str]:
    """The string texts of a Parquet file's ``text`` column (nulls left out)."""
    return [t for t in pq.read_table(path, columns=["text"]).column("text").to_pylist() if isinstance(t, str)]


@pytest.fixture(scope="session")
def sst2(shared_data) -> list[str]:
    """Distinct normalised SST-2 sentences (thunlp clean train, 6.9k)."""
    from shardguard.dedup import normalize_text

    texts = parquet_texts(shared_data / "sst2_thunlp_clean" / "train.parquet")
    return [t for t in dict.fromkeys(normalize_text(t) for t in texts) if t]


@pytest.fixture(scope="session")
def sms(shared_data) -> list[str]:
    """Distinct normalised SMS Spam messages."""
    from shardguard.dedup import normalize_text

    texts = parquet_texts(shared_data / "sms_spam" / "sms_spam.parquet")
    return [t for t in dict.fromkeys(normalize_text(t) for t in texts) if t]


GENUINE = "the plot is dull and the acting is worse than anything else released this year"


def _edit(text: str, k: int) -> str:
    """A copy of ``text`` with one letter changed at a position chosen by ``k`` (deterministic)."""
    words = text.split()
    w = k % len(words)
    word = words[w]
    words[w] = word[:-1] + ("xyz"[k % 3] if word[-1] != "xyz"[k % 3] else "q")
    return " ".join(words)


def write_duplicate_story(path: Path, flood_first: bool = False) -> dict[str, str]:
    """Real SMS messages (the committed samples' first shard) with duplicates planted after them.

    ``flood-*``: 30 one-letter edits of ``genuine`` relabelled ``pos`` (a label-flip flood of a
    sentence that is also in the data as ``neg``); ``same-2`` repeats ``same-1`` under the same
    label (a natural duplicate); ``flip-2`` repeats ``flip-1`` under another label. Returns
    the planted ids by role.
    """
    base = pq.read_table(SAMPLES / "sms_000.parquet").select(["id", "text", "label"]).to_pylist()
    genuine = [{"id": "genuine", "text": GENUINE, "label": "neg"}]
    flood = [{"id": f"flood-{k:02d}", "text": _edit(GENUINE, k), "label": "pos"} for k in range(30)]
    story = (flood + genuine if flood_first else genuine + flood) + [
        {"id": "same-1", "text": "see you at the station at five, bring the umbrella", "label": "ham"},
        {"id": "same-2", "text": "See you at the station at five,  bring the umbrella", "label": "ham"},
        {"id": "flip-1", "text": "your parcel is waiting, reply with your card number now", "label": "spam"},
        {"id": "flip-2", "text": "your parcel is waiting, reply with your card number now", "label": "ham"},
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(base + story), path)
    return {"genuine": "genuine", "same": "same-2", "flip": "flip-2"}
