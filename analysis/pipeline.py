"""Everything the report needs from one sweep: circuits analysed one density at a time, then the size window.

Only one density's circuits are held in memory at once (each is ~190 MB at GPT2-XL scale), and every circuit is
used on its packed bits (overlap and composition never unpack it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis.composition import CompositionEntry, circuit_composition
from analysis.overlap import OverlapRow, density_overlaps
from analysis.sweep_data import FINISHED, Discovery, Source, Sweep
from analysis.window import ALL, Window, WindowRow, estimate_window, missing_edits, window_rows
from circuitlib import circuits
from circuitlib.circuits import Circuit
from circuitlib.errors import InputError


@dataclass(frozen=True)
class Options:
    """Settings of the analysis."""

    faithfulness_threshold: float = 0.9  # a circuit this faithful or more counts as faithful for the window
    n_boot: int = 2000  # bootstrap resamples per interval
    confidence: float = 0.95
    seed: int = 0  # of the bootstrap's generator


@dataclass(frozen=True)
class Snapshot:
    """One circuit found by discovery: where it came from, its actual size, and how faithful it was."""

    source: str
    target: float
    density: float
    kept: int
    total: int
    step: float  # discovery step of the snapshot (NaN where unrecorded)
    faithfulness: float  # NaN where unrecorded


@dataclass
class Analysis:
    """The results of analysing one sweep."""

    sweep: Sweep
    options: Options
    labels: dict[Source, str]
    snapshots: list[Snapshot]
    overlaps: list[OverlapRow]
    composition: list[CompositionEntry]
    window_rows: list[WindowRow]
    windows: list[Window]  # the pooled scope first, then one per source
    notes: list[str] = field(default_factory=list)  # missing pieces, for the report

    @property
    def window(self) -> Window:
        """The pooled window, the headline one."""
        return self.windows[0]


def _at_step(history: list[tuple[int, float]], step: float) -> float:
    """The value logged at `step`, NaN where none was."""
    return next((v for s, v in history if s == step), math.nan)


def snapshot(label: str, target: float, c: Circuit, discovery: Discovery) -> Snapshot:
    """A circuit's summary: faithfulness from its provenance, else from the discovery's metric at its step."""
    step = float(c.provenance.get("step", math.nan))
    faithfulness = c.provenance.get("faithfulness")
    if faithfulness is None:
        faithfulness = _at_step(discovery.history.get("faithfulness", []), step)
    kept = c.kept
    return Snapshot(label, target, kept / c.total, kept, c.total, step, float(faithfulness))


def _load(path: Path, label: str, target: float, notes: list[str]) -> Circuit | None:
    """A circuit file, or None with a note where it cannot be read."""
    try:
        return circuits.load(path)
    except InputError as e:
        notes.append(f"{label} at density {target:g}: unreadable circuit ({e})")
        return None


def analyse(sweep: Sweep, options: Options = Options()) -> Analysis:
    """Overlap, composition and snapshots density by density, then the size window and its estimate."""
    labels = {s: sweep.label(s) for s in sweep.sources}
    ordered = sorted(sweep.discoveries, key=lambda d: d.status == FINISHED)
    discoveries = {d.source: d for d in ordered}  # a finished run wins over a failed one of the same source
    notes = list(sweep.notes)
    notes += [f"{labels[s]}: no discovery run" for s in labels if s not in discoveries]
    snapshots, overlaps, composition = [], [], []
    faithfulness: dict[tuple[Source, float], float] = {}
    for target in sweep.densities:
        loaded: dict[str, Circuit | None] = {}
        for source, label in labels.items():
            d = discoveries.get(source)
            path = d.circuits.get(target) if d else None
            if d and path is None and d.status == FINISHED and target not in d.unreached:
                notes.append(f"{label} at density {target:g}: no circuit artifact")
            c = loaded[label] = _load(path, label, target, notes) if path else None
            if c is not None:
                snapshots.append(snapshot(label, target, c, d))
                faithfulness[source, target] = snapshots[-1].faithfulness
                composition += circuit_composition(label, target, c)
        overlaps += density_overlaps(target, loaded)
    rows = window_rows(
        sweep.edits, faithfulness, labels, sweep.densities, options.faithfulness_threshold,
        np.random.default_rng(options.seed), options.n_boot, options.confidence,
    )
    notes += missing_edits(sweep.edits, list(faithfulness), labels)
    windows = [estimate_window(rows, scope) for scope in (ALL, *labels.values())]
    return Analysis(sweep, options, labels, snapshots, overlaps, composition, rows, windows, notes)
