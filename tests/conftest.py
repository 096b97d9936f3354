"""Shared fixtures: the committed samples and the real datasets in ../shared/data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
SHARED_DATA = Path(os.environ.get("SHARDGUARD_SHARED_DATA", REPO.parent / "shared" / "data"))


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
