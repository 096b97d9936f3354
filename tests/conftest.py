"""Shared fixtures: the committed samples and the real datasets in ../shared/data."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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
