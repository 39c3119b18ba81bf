"""Everything the report needs from one sweep: circuits analysed one density at a time, then the size window.

Only faithful circuits (faithfulness at least the threshold) enter overlap, composition and the window; the others
are kept as snapshots with the reason they were left out.

Only one density's circuits are held in memory at once (each is ~190 MB at GPT2-XL scale), and every circuit is
used on its packed bits (overlap and composition never unpack it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis.baselines import BaselineRow, baseline_rows
from analysis.composition import CompositionEntry, circuit_composition
from analysis.overlap import OverlapRow, density_overlaps
from analysis.snapshots import Snapshot, flag_shared, snapshot
from analysis.window import POOLED, Window, WindowRow, estimate_window, missing_edits, window_rows
from circuitlib import circuits, settings
from circuitlib.circuits import Circuit
from circuitlib.errors import InputError
from circuitlib.settings import setting
from record.reader import FINISHED, Source, Sweep


@dataclass(frozen=True)
class Options:
    """Settings of the analysis, each declared once with its default, doc and check (`circuitlib.settings`)."""

    faithfulness_threshold: float = setting(
        0.9,
        "faithfulness threshold: a circuit below it (or of unknown faithfulness) is left out of every finding",
        check=settings.probability,
    )
    n_boot: int = setting(2000, "bootstrap resamples per interval", check=settings.at_least(100))
    confidence: float = setting(0.95, "confidence of the intervals", check=settings.fraction)
    seed: int = setting(0, "seed of the bootstrap", check=settings.at_least(0))

    def __post_init__(self) -> None:
        settings.validate(self)


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
    baselines: list[BaselineRow]  # cross-dataset overlap beside chance and stability, per density then pooled
    notes: list[str] = field(default_factory=list)  # missing pieces, for the report

    @property
    def window(self) -> Window:
        """The pooled window, the headline one."""
        return self.windows[0]

    @property
    def used(self) -> list[Snapshot]:
        """The faithful circuits: the only ones any finding is judged from."""
        return [s for s in self.snapshots if not s.excluded]

    @property
    def excluded(self) -> list[Snapshot]:
        """The circuits left out of every finding, each with its reason."""
        return [s for s in self.snapshots if s.excluded]


def _load(path: Path, label: str, target: float, notes: list[str]) -> Circuit | None:
    """A circuit file, or None with a note where it cannot be read."""
    try:
        return circuits.load(path)
    except InputError as e:
        notes.append(f"{label} at density {target:g}: unreadable circuit ({e})")
        return None


def analyse(sweep: Sweep, options: Options = Options()) -> Analysis:
    """Snapshots, then overlap and composition of the faithful circuits density by density, then the overlap
    baselines, the size window and its estimate."""
    labels = {s: sweep.label(s) for s in sweep.sources}
    ordered = sorted(sweep.discoveries, key=lambda d: d.status == FINISHED)
    discoveries = {d.source: d for d in ordered}  # a finished run wins over a failed one of the same source
    notes = list(sweep.notes)
    notes += [f"{labels[s]}: no discovery run" for s in labels if s not in discoveries]
    snapshots, overlaps, composition = [], [], []
    for target in sweep.densities:
        faithful: dict[str, Circuit | None] = {}  # an excluded or missing circuit is a gap in the overlaps
        for source, label in labels.items():
            d = discoveries.get(source)
            path = d.circuits.get(target) if d else None
            if d and path is None and d.status == FINISHED and target not in d.unreached:
                notes.append(f"{label} at density {target:g}: no circuit artifact")
            faithful[label] = None
            if d is None or path is None or (c := _load(path, label, target, notes)) is None:
                continue
            snapshots.append(snapshot(label, source, target, c, d.history, options.faithfulness_threshold))
            if not snapshots[-1].excluded:
                faithful[label] = c
                composition += circuit_composition(label, target, c)
        overlaps += density_overlaps(target, faithful)
    snapshots = flag_shared(snapshots)
    rng = np.random.default_rng(options.seed)
    rows = window_rows(
        sweep.edits,
        {s.key: s.faithfulness for s in snapshots},
        labels,
        sweep.densities,
        options.faithfulness_threshold,
        rng,
        options.n_boot,
        options.confidence,
        {s.key: s.density for s in snapshots},
    )
    notes += missing_edits(sweep.edits, [s.key for s in snapshots], labels)
    windows = [estimate_window(rows, scope) for scope in (POOLED, *labels.values())]
    sources = {label: source for source, label in labels.items()}
    baselines = baseline_rows(overlaps, sources, rng, options.n_boot, options.confidence)
    return Analysis(sweep, options, labels, snapshots, overlaps, composition, rows, windows, baselines, notes)
