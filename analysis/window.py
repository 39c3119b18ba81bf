"""The size window: per density, how readily each variant learns the new target, the gaps to the circuit with
bootstrap intervals over requests, and the densities where the circuit resists significantly while staying faithful.

Rows come for the pooled scope POOLED (every circuit of that density together) and for each circuit source alone.
Only faithful circuits count: the edits of a circuit below the faithfulness threshold (or of unknown faithfulness)
are left out of every row. Requests are keyed by (source, case_id), so the gaps pair each request's circuit edit
with its complement (or random) edit of the same circuit wherever both exist.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from analysis.bootstrap import Estimate, bootstrap_gap, bootstrap_mean, finite_mean
from analysis.snapshots import is_faithful
from circuitlib.types import MASKED_VARIANTS
from record.names import FULL
from record.reader import EditRun, Source

POOLED = "all"  # the scope of rows pooled over every circuit source (and, in baselines, every density)
MASKED = MASKED_VARIANTS  # the variants edited under a circuit's mask, declared in circuitlib.types
CIRCUIT = MASKED[0]  # the circuit itself; the other masked variants are its controls
CONTROLS = MASKED[1:]  # complement and random: each compared with the circuit
Key = tuple[Source, int]  # (circuit source, case_id)


@dataclass(frozen=True)
class WindowRow:
    """One density of one scope, its figures keyed by variant (circuitlib.types.VARIANTS); None or NaN where the
    sweep has no data for it."""

    scope: str
    density: float  # the target density
    faithfulness: float  # mean over the scope's faithful circuits of this density
    # per variant (the full model's: the same reference at every density), drop in NLL of the new target (pre - post):
    # how much the variant learned
    drop: Mapping[str, Estimate | None]
    gap: Mapping[str, Estimate | None]  # per control, its drop - the circuit's: > 0 means the circuit resists
    success: Mapping[str, float]  # per variant, the edit success rate (efficacy score after the edit)
    knowledge: Mapping[str, float]  # per masked variant, pre-edit NLL of the true target: lower = knows it better
    in_window: bool
    circuits: int = 0  # faithful circuits of this scope and density: the only ones the row is made of
    actual_density: float = math.nan  # their mean actual density (kept / masked weights)


@dataclass(frozen=True)
class Window:
    """The densities of one scope where the circuit resists significantly while staying faithful."""

    scope: str
    densities: tuple[float, ...]  # ascending
    contiguous: bool  # no tested density between the lowest and highest falls outside

    @property
    def low(self) -> float | None:
        return self.densities[0] if self.densities else None

    @property
    def high(self) -> float | None:
        return self.densities[-1] if self.densities else None

    def describe(self) -> str:
        """`[0.15, 0.25]`, with the densities themselves where they are not contiguous, or `none`."""
        if not self.densities:
            return "none"
        text = f"[{self.low:g}, {self.high:g}]"
        return text if self.contiguous else f"{text} (only at {', '.join(f'{d:g}' for d in self.densities)})"


def _index(edits: Sequence[EditRun]) -> dict[tuple[Source, float, str], dict[Key, dict]]:
    """Per (source, density, variant), the request rows of all its shards keyed by (source, case_id)."""
    cells: dict[tuple[Source, float, str], dict[Key, dict]] = defaultdict(dict)
    for e in edits:
        if e.variant in MASKED:
            assert e.source is not None and e.target is not None, "a masked variant's edit names its circuit"
            for row in e.rows:
                cells[e.source, e.target, e.variant][e.source, int(row["case_id"])] = row
    return cells


def _column(rows: Mapping[Key, dict], field: str) -> dict[Key, float]:
    """One per-request quantity keyed by request."""
    return {k: float(r[field]) for k, r in rows.items()}


def _row(
    scope: str,
    density: float,
    cells: Mapping[str, Mapping[Key, dict]],
    faithfulness: float,
    circuits: int,
    actual_density: float,
    full: tuple[Estimate | None, float],
    threshold: float,
    rng: np.random.Generator,
    n_boot: int,
    confidence: float,
) -> WindowRow:
    """The row of one scope and density from its per-variant request rows and the full model's (drop, success)."""
    drop = {v: _column(cells[v], "nll_new_drop") for v in MASKED}
    mean = {v: bootstrap_mean(drop[v].values(), rng, n_boot, confidence) for v in MASKED}
    gap = {v: bootstrap_gap(drop[v], drop[CIRCUIT], rng, n_boot, confidence) for v in CONTROLS}
    resists = gap["complement"] is not None and gap["complement"].above_zero
    return WindowRow(
        scope=scope,
        density=density,
        faithfulness=faithfulness,
        drop={**mean, FULL: full[0]},
        gap=gap,
        success={**{v: finite_mean(_column(cells[v], "efficacy_score").values()) for v in MASKED}, FULL: full[1]},
        knowledge={v: finite_mean(_column(cells[v], "nll_true_pre").values()) for v in MASKED},
        in_window=resists and is_faithful(faithfulness, threshold),
        circuits=circuits,
        actual_density=actual_density,
    )


def window_rows(
    edits: Sequence[EditRun],
    faithfulness: Mapping[tuple[Source, float], float],
    labels: Mapping[Source, str],
    densities: Sequence[float],
    threshold: float = 0.9,
    rng: np.random.Generator | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    actual: Mapping[tuple[Source, float], float] | None = None,
) -> list[WindowRow]:
    """Rows for the pooled scope then each source, each over `densities`, from the faithful circuits alone.

    `faithfulness` has one entry per circuit (NaN where unknown); `actual` its actual density, where known.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    actual = actual or {}
    faithful = {key for key, f in faithfulness.items() if is_faithful(f, threshold)}
    cells = {key: rows for key, rows in _index(edits).items() if key[:2] in faithful}
    full_rows = {int(r["case_id"]): r for e in edits if e.variant == FULL for r in e.rows}.values()
    full = (
        bootstrap_mean([r["nll_new_drop"] for r in full_rows], rng, n_boot, confidence),
        finite_mean(r["efficacy_score"] for r in full_rows),
    )
    scopes: list[tuple[str, list[Source]]] = [(POOLED, list(labels))] + [(labels[s], [s]) for s in labels]
    rows = []
    for scope, sources in scopes:
        for d in densities:
            merged = {v: {k: r for s in sources for k, r in cells.get((s, d, v), {}).items()} for v in MASKED}
            used = [(s, d) for s in sources if (s, d) in faithful]
            rows.append(
                _row(
                    scope,
                    d,
                    merged,
                    finite_mean(faithfulness[k] for k in used),
                    len(used),
                    finite_mean(actual.get(k, math.nan) for k in used),
                    full,
                    threshold,
                    rng,
                    n_boot,
                    confidence,
                )
            )
    return rows


def missing_edits(
    edits: Sequence[EditRun], circuits: Sequence[tuple[Source, float]], labels: Mapping[Source, str]
) -> list[str]:
    """Notes for circuits that exist but lack edits of some variant, and for a sweep without `full` edits."""
    cells = _index(edits)
    notes = []
    for source, d in circuits:
        absent = [v for v in MASKED if not cells.get((source, d, v))]
        if absent:
            notes.append(f"{labels[source]} at density {d:g}: no {', '.join(absent)} edits")
    if not any(e.rows for e in edits if e.variant == FULL):
        notes.append("no edits of the full model: its reference line is missing")
    return notes


def edited_circuits(edits: Sequence[EditRun]) -> set[tuple[Source, float]]:
    """The circuits (source, density) with request rows of both their circuit and complement edits."""
    cells = _index(edits)
    return {(s, d) for s, d, v in cells if v == CIRCUIT and cells.get((s, d, "complement"))}


def estimate_window(rows: Sequence[WindowRow], scope: str = POOLED) -> Window:
    """The window of one scope: its densities with in_window rows, and whether they are contiguous."""
    tested = sorted(r.density for r in rows if r.scope == scope)
    inside = tuple(sorted(r.density for r in rows if r.scope == scope and r.in_window))
    between = [d for d in tested if inside and inside[0] <= d <= inside[-1]]
    return Window(scope, inside, len(between) == len(inside))
