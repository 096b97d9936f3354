"""Data-driven thresholds shared by the embedding detectors.

The rule is a *robust z-score with one scale per side* ("double MAD"): given
calibration values ``t`` (a detector's statistic on the reservoir sample,
mapped first to a scale on which clean data is roughly symmetric and
unimodal), the centre ``m`` is the median, and each side of it gets its own
normal-consistent median absolute deviation:

    sigma_lo = 1.4826 * median(m - t  for t <= m)
    sigma_hi = 1.4826 * median(t - m  for t >= m)

A row is flagged when

    (t - m) / sigma_hi > z                        (one-sided, e.g. isolation-forest scores), or
    max((t - m) / sigma_hi, (m - t) / sigma_lo) > z   (two-sided, e.g. signed spectral projections).

Median and the half-MADs have a 50% breakdown point, so a poison cluster of a
few percent of the rows barely moves them: the threshold is set by the clean
bulk, and everything far outside it is flagged. One scale per side keeps a
naturally skewed bulk calm: on GLUE SST-2 with the hashing embedder the
spectral projection has a long natural right tail (phrases dense in "the"),
and one symmetric MAD flagged 4.1% of the clean rows at z = 4, the double MAD
0.3% -- with the same 100% recall on planted shifts.

This is the difference with a fixed-fraction rule (the ART library removes
1.5 x an assumed poison rate of every class, i.e. about half of each class
with its default), which flags the same share of a clean dataset as of a
poisoned one.

When a MAD is zero (more than half of the values tie) the scale falls back to
the mean absolute deviation from the median (x 1.2533, normal-consistent),
then to the standard deviation, then to a tiny positive floor; a zero
half-MAD falls back to the symmetric scale. The rule is always defined.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: 1 / Phi^{-1}(3/4): makes the MAD a consistent estimator of a normal sigma.
MAD_TO_SIGMA = 1.482602218505602
#: sqrt(pi / 2): makes the mean absolute deviation a consistent estimator of sigma.
MEANAD_TO_SIGMA = 1.2533141373155003
#: the smallest scale ever returned, relative to max(1, |centre|).
_SCALE_FLOOR = 1e-12


@dataclass(frozen=True)
class RobustFit:
    """Centre and scales of a set of calibration values."""

    center: float
    scale: float  # symmetric (normal-consistent MAD, or its fallback)
    scale_lower: float  # below the centre
    scale_upper: float  # above the centre
    n: int
    scale_method: str  # of the symmetric scale: "mad", "meanad", "std" or "floor"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _floor(center: float) -> float:
    return _SCALE_FLOOR * max(1.0, abs(center))


def robust_center_scale(values: np.ndarray) -> RobustFit:
    """Median, symmetric MAD scale and one half-MAD scale per side (finite values only)."""
    t = np.asarray(values, dtype=np.float64).ravel()
    t = t[np.isfinite(t)]
    if t.size == 0:
        raise ValueError("cannot calibrate a threshold on zero finite values")
    center = float(np.median(t))
    dev = t - center
    adev = np.abs(dev)
    floor = _floor(center)
    scale = MAD_TO_SIGMA * float(np.median(adev))
    method = "mad"
    if not scale > floor:
        scale = MEANAD_TO_SIGMA * float(adev.mean())
        method = "meanad"
    if not scale > floor:
        scale = float(t.std())
        method = "std"
    if not scale > floor:
        scale = floor
        method = "floor"
    lo = MAD_TO_SIGMA * float(np.median(-dev[dev <= 0]))
    hi = MAD_TO_SIGMA * float(np.median(dev[dev >= 0]))
    lo = lo if lo > floor else scale
    hi = hi if hi > floor else scale
    return RobustFit(
        center=center, scale=scale, scale_lower=lo, scale_upper=hi, n=int(t.size), scale_method=method
    )


def upper_z(values: np.ndarray, fit: RobustFit) -> np.ndarray:
    """Signed one-sided robust z: ``(t - m) / sigma_hi`` (float64)."""
    return (np.asarray(values, dtype=np.float64) - fit.center) / fit.scale_upper


def two_sided_z(
    values: np.ndarray, center: np.ndarray | float, lower: np.ndarray | float, upper: np.ndarray | float
) -> np.ndarray:
    """Non-negative two-sided robust z: ``(t - m) / sigma_hi`` above the centre,
    ``(m - t) / sigma_lo`` below it (float64; arguments broadcast)."""
    dev = np.asarray(values, dtype=np.float64) - center
    return np.where(dev > 0, dev / upper, -dev / lower)


def upper_threshold(values: np.ndarray, z: float) -> tuple[float, RobustFit]:
    """One-sided rule: the value above which a row is flagged, ``m + z * sigma_hi``."""
    fit = robust_center_scale(values)
    return fit.center + float(z) * fit.scale_upper, fit


def check_z(z: Any, name: str = "threshold_z") -> float:
    """Validate a z knob: a finite number > 0."""
    try:
        zf = float(z)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number > 0, got {z!r}") from None
    if not np.isfinite(zf) or zf <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {z!r}")
    return zf


def normal_tail(z: float, two_sided: bool) -> float:
    """The share of a normal sample the rule would flag: a sanity figure for reports."""
    from math import erfc, sqrt

    p = 0.5 * erfc(z / sqrt(2.0))
    return 2 * p if two_sided else p
