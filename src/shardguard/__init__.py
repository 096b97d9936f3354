"""shardguard: find poisoned training samples in dataset shards before fine-tuning.

The heavy parts (torch, the model) load only when used: ``import shardguard``
is cheap, and the names below are resolved on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Config": "shardguard.config",
    "ConfigError": "shardguard.config",
    "load_config": "shardguard.config",
    "scan": "shardguard.pipeline",
    "ScanPipeline": "shardguard.pipeline",
    "ScanResult": "shardguard.pipeline",
    "Guard": "shardguard.guard",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shardguard' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
