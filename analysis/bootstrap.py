"""Means over requests, ignoring NaNs, and percentile bootstrap confidence intervals for a mean and for a gap."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)  # what observations are keyed by (a request)
_CELLS = 1 << 22  # resample cells drawn per step: the index matrix stays at ~32 MiB whatever the sample size


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap confidence interval [low, high] from `n` observations (pairs, when paired)."""

    mean: float
    low: float
    high: float
    n: int
    paired: bool = False

    @property
    def above_zero(self) -> bool:
        """The interval lies entirely above 0: a significant positive effect."""
        return self.low > 0

    @property
    def below_zero(self) -> bool:
        """The interval lies entirely below 0: a significant negative effect."""
        return self.high < 0


def _resampled_means(x: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Means of `n_boot` resamples of `x` with replacement, drawn a bounded block at a time."""
    per_block = max(1, _CELLS // x.size)
    means = [
        x[rng.integers(0, x.size, size=(min(per_block, n_boot - start), x.size))].mean(axis=1)
        for start in range(0, n_boot, per_block)
    ]
    return np.concatenate(means)


def _interval(means: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central `confidence` percentile interval of bootstrap means."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def _finite(values) -> np.ndarray:
    """The values as float64 with NaNs dropped."""
    x = np.asarray(list(values), dtype=np.float64)
    return x[~np.isnan(x)]


def finite_mean(values: Iterable[float]) -> float:
    """Mean of the non-NaN values; NaN when there are none (a gap, never a zero)."""
    x = _finite(values)
    return float(x.mean()) if x.size else math.nan


def bootstrap_mean(values, rng: np.random.Generator, n_boot: int = 2000, confidence: float = 0.95) -> Estimate | None:
    """Mean of the non-NaN `values` with its percentile bootstrap interval; None when there are none."""
    x = _finite(values)
    if x.size == 0:
        return None
    return Estimate(float(x.mean()), *_interval(_resampled_means(x, rng, n_boot), confidence), x.size)


def bootstrap_gap(
    a: Mapping[K, float],
    b: Mapping[K, float],
    rng: np.random.Generator,
    n_boot: int = 2000,
    confidence: float = 0.95,
) -> Estimate | None:
    """mean(a) - mean(b) over observations keyed by request, with a bootstrap interval; None when either is empty.

    Where the two share keys (the same requests edited under both), the gap is the mean of the paired differences
    over the shared keys, resampled as pairs; otherwise the two samples are resampled independently.
    """
    shared = [k for k in a if k in b]
    if shared:
        estimate = bootstrap_mean([a[k] - b[k] for k in shared], rng, n_boot, confidence)
        return None if estimate is None else replace(estimate, paired=True)
    xa, xb = _finite(a.values()), _finite(b.values())
    if xa.size == 0 or xb.size == 0:
        return None
    gaps = _resampled_means(xa, rng, n_boot) - _resampled_means(xb, rng, n_boot)
    return Estimate(float(xa.mean() - xb.mean()), *_interval(gaps, confidence), min(xa.size, xb.size))


def stratified_gap(
    strata: Iterable[tuple[Iterable[float], Iterable[float]]],
    rng: np.random.Generator,
    n_boot: int = 2000,
    confidence: float = 0.95,
) -> Estimate | None:
    """Mean over strata of mean(a) - mean(b), each sample resampled within its own stratum, so strata of different
    scale (densities) are compared only within themselves; strata lacking either sample are skipped, None if all are."""
    kept = [(xa, xb) for xa, xb in ((_finite(a), _finite(b)) for a, b in strata) if xa.size and xb.size]
    if not kept:
        return None
    mean = float(np.mean([xa.mean() - xb.mean() for xa, xb in kept]))
    gaps = np.mean([_resampled_means(xa, rng, n_boot) - _resampled_means(xb, rng, n_boot) for xa, xb in kept], axis=0)
    n = min(sum(xa.size for xa, _ in kept), sum(xb.size for _, xb in kept))
    return Estimate(mean, *_interval(gaps, confidence), n)
