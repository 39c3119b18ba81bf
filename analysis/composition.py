"""Composition of circuits by module type and layer, and which module types a circuit over-represents."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from circuitlib.circuits import Circuit, CompositionRow, composition, composition_by_module

ALL_LAYERS = -1  # the layer of by-module-type rows


@dataclass(frozen=True)
class CompositionEntry:
    """A group of weights (a module type in one layer, or in all layers) of a circuit, and the circuit's part of it."""

    source: str
    density: float  # the circuit's target density
    module_type: str
    layer: int  # ALL_LAYERS for the module type as a whole
    kept: int
    total: int
    share_of_circuit: float  # kept / circuit's kept
    fraction_kept: float  # kept / total
    share_of_model: float  # total / all masked weights: the share a uniformly random circuit would give
    representation: float  # share_of_circuit / share_of_model: > 1 means the circuit over-represents the group


def _entries(source: str, density: float, rows: Sequence[CompositionRow], model_total: int) -> list[CompositionEntry]:
    """Entries from circuitlib's composition rows."""
    out = []
    for r in rows:
        share_of_model = r.total / model_total
        out.append(
            CompositionEntry(
                source,
                density,
                r.module_type,
                r.layer,
                r.kept,
                r.total,
                r.share_of_circuit,
                r.fraction_kept,
                share_of_model,
                r.share_of_circuit / share_of_model,
            )
        )
    return out


def circuit_composition(source: str, density: float, c: Circuit) -> list[CompositionEntry]:
    """By-module-type entries (layer ALL_LAYERS) then by-layer entries of one circuit, counted on its packed bits."""
    total = c.total
    return _entries(source, density, composition_by_module(c), total) + _entries(source, density, composition(c), total)


def mean_representation(entries: Sequence[CompositionEntry]) -> dict[str, float]:
    """Per module type, the mean over circuits of its over-representation ratio (by-module entries only)."""
    ratios: dict[str, list[float]] = defaultdict(list)
    for e in entries:
        if e.layer == ALL_LAYERS and not math.isnan(e.representation):
            ratios[e.module_type].append(e.representation)
    return {m: sum(v) / len(v) for m, v in ratios.items()}


def over_represented(entries: Sequence[CompositionEntry]) -> list[str]:
    """Module types whose mean over-representation ratio exceeds 1, most over-represented first."""
    means = mean_representation(entries)
    return sorted((m for m, r in means.items() if r > 1), key=lambda m: -means[m])
