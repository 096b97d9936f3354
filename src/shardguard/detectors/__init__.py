"""Detectors. ``REGISTRY`` maps each embedding detector's name to its class.

The name is the quarantine reason and ``<name>_score`` the score column; add a
detector by writing its module and one line here.
"""

from __future__ import annotations

from shardguard.detectors.base import EmbeddingDetector
from shardguard.detectors.gibberish import GibberishDetector
from shardguard.detectors.isolation import IsolationForestDetector
from shardguard.detectors.label_mismatch import LabelMismatchDetector
from shardguard.detectors.spectral import SpectralSignatureDetector
from shardguard.detectors.triggers import TriggerDetector

REGISTRY: dict[str, type[EmbeddingDetector]] = {
    cls.name: cls
    for cls in (
        IsolationForestDetector,
        SpectralSignatureDetector,
        TriggerDetector,
        LabelMismatchDetector,
        GibberishDetector,
    )
}

__all__ = ["REGISTRY", "EmbeddingDetector", "GibberishDetector", "IsolationForestDetector", "LabelMismatchDetector", "SpectralSignatureDetector", "TriggerDetector"]
