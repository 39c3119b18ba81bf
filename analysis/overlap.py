"""Overlap between the circuits of one density: Jaccard and overlap coefficient beside their chance values.

Counts come from circuitlib's packed-bit overlap (one pass over the bits per pair, nothing unpacked); the whole-model
figures are the sums of the per-module-type counts, so each pair is counted once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations

from circuitlib.circuits import Circuit, Overlap, overlap_by_module

WHOLE_MODEL = "all"  # the module column of whole-model rows


@dataclass(frozen=True)
class OverlapRow:
    """The overlap of circuits `a` and `b` at one density, over all weights or one module type; NaN where unknown."""

    density: float
    a: str
    b: str
    module: str
    jaccard: float
    expected_jaccard: float
    jaccard_ratio: float  # jaccard / expected_jaccard: > 1 means more shared than independent masks would be
    overlap_coefficient: float
    expected_overlap_coefficient: float
    overlap_ratio: float


def _ratio(num: float, den: float) -> float:
    """num / den, NaN where either is NaN or den is 0."""
    return num / den if den and not math.isnan(den) else math.nan


def _row(density: float, a: str, b: str, module: str, o: Overlap) -> OverlapRow:
    """One row from circuitlib's set sizes."""
    return OverlapRow(
        density,
        a,
        b,
        module,
        o.jaccard,
        o.expected_jaccard,
        _ratio(o.jaccard, o.expected_jaccard),
        o.overlap_coefficient,
        o.expected_overlap_coefficient,
        _ratio(o.overlap_coefficient, o.expected_overlap_coefficient),
    )


def _missing(density: float, a: str, b: str) -> OverlapRow:
    """A whole-model row of NaNs for a pair where a circuit is missing: a visible gap, not a zero."""
    return OverlapRow(density, a, b, WHOLE_MODEL, *[math.nan] * 6)


def pair_overlap(density: float, a: str, ca: Circuit, b: str, cb: Circuit) -> list[OverlapRow]:
    """Whole-model and per-module-type rows for one pair, from a single packed pass over both circuits."""
    by_module = overlap_by_module(ca, cb)
    whole = Overlap(
        *(
            sum(getattr(o, f) for o in by_module.values())
            for f in ("intersection", "union", "kept_a", "kept_b", "total")
        )
    )
    return [_row(density, a, b, WHOLE_MODEL, whole)] + [_row(density, a, b, m, o) for m, o in by_module.items()]


def density_overlaps(density: float, circuits: Mapping[str, Circuit | None]) -> list[OverlapRow]:
    """Rows for every pair of labels at one density, in label order; a pair with a missing circuit gets a NaN row."""
    rows: list[OverlapRow] = []
    for a, b in combinations(sorted(circuits), 2):
        ca, cb = circuits[a], circuits[b]
        rows += [_missing(density, a, b)] if ca is None or cb is None else pair_overlap(density, a, ca, b, cb)
    return rows
