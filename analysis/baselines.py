"""Cross-dataset overlap against its two baselines: chance (independent masks of the same densities) and stability
(circuits of the same dataset from other discovery seeds), whole-model Jaccard with bootstrap intervals over pairs.

"Moderate" overlap lies significantly above chance and significantly below stability. Above chance is judged on each
cross-dataset pair's excess over its own chance value, pooled over densities; below stability is judged density by
density (Jaccard depends strongly on density) and then averaged, resampling pairs within each density.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from analysis.bootstrap import Estimate, bootstrap_mean, stratified_gap
from analysis.overlap import WHOLE_MODEL, OverlapRow
from analysis.window import POOLED
from record.reader import Source

CROSS = "cross-dataset"
STABILITY = "stability"


@dataclass(frozen=True)
class BaselineRow:
    """Whole-model Jaccard of one density (or pooled) for each kind of pair; None where no pair of that kind exists."""

    scope: str  # a density, or POOLED
    cross_dataset: Estimate | None  # pairs of circuits from different datasets
    stability: Estimate | None  # pairs from the same dataset and different seeds
    chance: Estimate | None  # expected Jaccard of the cross-dataset pairs under independence
    above_chance: Estimate | None  # cross-dataset - chance, paired per pair
    below_stability: Estimate | None  # stability - cross-dataset, within each density where both exist


def pair_kind(a: Source, b: Source) -> str | None:
    """CROSS for circuits of different datasets, STABILITY for one dataset's different seeds, else None."""
    if a.dataset != b.dataset:
        return CROSS
    return STABILITY if a.seed != b.seed else None


def _pairs(overlaps: Sequence[OverlapRow], sources: Mapping[str, Source]) -> dict[str, dict[float, list[OverlapRow]]]:
    """Whole-model rows with a Jaccard, by kind of pair and density."""
    out: dict[str, dict[float, list[OverlapRow]]] = {CROSS: {}, STABILITY: {}}
    for r in overlaps:
        kind = pair_kind(sources[r.a], sources[r.b])
        if r.module == WHOLE_MODEL and kind and not math.isnan(r.jaccard) and not math.isnan(r.expected_jaccard):
            out[kind].setdefault(r.density, []).append(r)
    return out


def _row(
    scope: str,
    cross: Mapping[float, list[OverlapRow]],
    stability: Mapping[float, list[OverlapRow]],
    rng: np.random.Generator,
    n_boot: int,
    confidence: float,
) -> BaselineRow:
    """The row of some densities' pairs."""
    c = [r for rows in cross.values() for r in rows]
    s = [r for rows in stability.values() for r in rows]
    strata = [([r.jaccard for r in stability[d]], [r.jaccard for r in cross[d]]) for d in cross if d in stability]
    return BaselineRow(
        scope,
        cross_dataset=bootstrap_mean([r.jaccard for r in c], rng, n_boot, confidence),
        stability=bootstrap_mean([r.jaccard for r in s], rng, n_boot, confidence),
        chance=bootstrap_mean([r.expected_jaccard for r in c], rng, n_boot, confidence),
        above_chance=bootstrap_mean([r.jaccard - r.expected_jaccard for r in c], rng, n_boot, confidence),
        below_stability=stratified_gap(strata, rng, n_boot, confidence),
    )


def baseline_rows(
    overlaps: Sequence[OverlapRow],
    sources: Mapping[str, Source],
    rng: np.random.Generator,
    n_boot: int = 2000,
    confidence: float = 0.95,
) -> list[BaselineRow]:
    """One row per density with pairs (highest first), then the POOLED row; `sources` maps labels to sources."""
    pairs = _pairs(overlaps, sources)
    cross, stability = pairs[CROSS], pairs[STABILITY]
    densities = sorted({*cross, *stability}, reverse=True)
    rows = [
        _row(
            f"{d:g}",
            {d: cross[d]} if d in cross else {},
            {d: stability[d]} if d in stability else {},
            rng,
            n_boot,
            confidence,
        )
        for d in densities
    ]
    return rows + [_row(POOLED, cross, stability, rng, n_boot, confidence)]
