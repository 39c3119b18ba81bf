"""PNG figures of a sweep's analysis, drawn on matplotlib Figures (Agg, no pyplot state); missing data stays a gap.

Each function writes one file and returns its path.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.bootstrap import Estimate
from analysis.composition import ALL_LAYERS, CompositionEntry
from analysis.overlap import ALL as WHOLE_MODEL
from analysis.overlap import OverlapRow
from analysis.pipeline import Snapshot
from analysis.sweep_data import Discovery, Source
from analysis.window import MASKED, Window, WindowRow

DPI = 110
HEATMAP = matplotlib.colormaps["viridis"].with_extremes(bad="lightgray")  # grey: a missing circuit


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _density_axis(ax: Axes, densities: Sequence[float]) -> None:
    """A log density axis ticked at the sweep's densities."""
    ax.set_xscale("log")
    ax.set_xticks(list(densities), [f"{d:g}" for d in densities])
    ax.minorticks_off()
    ax.set_xlabel("circuit density")


def _band(ax: Axes, x: Sequence[float], estimates: Sequence[Estimate | None], label: str) -> None:
    """Means joined by a line, with the interval as a band; a missing estimate breaks both."""
    mean, low, high = (np.array([getattr(e, f) if e else np.nan for e in estimates]) for f in ("mean", "low", "high"))
    (line,) = ax.plot(x, mean, marker="o", label=label)
    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)


def _footnote(fig: Figure, missing: Sequence[str]) -> None:
    """A line under the figure naming what is missing from it."""
    if missing:
        fig.text(0.01, 0.005, "gaps: " + "; ".join(missing), fontsize=7, va="bottom", wrap=True)


def size_window(rows: Sequence[WindowRow], window: Window, threshold: float, path: Path) -> Path:
    """Learning per variant, the gaps to the circuit with their intervals, and faithfulness, against density."""
    rows = sorted(rows, key=lambda r: r.density)
    x = [r.density for r in rows]
    fig = Figure(figsize=(7.5, 9), layout="constrained")
    learn, gap, faith = fig.subplots(3, 1, sharex=True)
    for v in MASKED:
        _band(learn, x, [getattr(r, f"drop_{v}") for r in rows], v)
    full = next((r.drop_full for r in rows if r.drop_full), None)
    if full:
        learn.axhline(full.mean, color="black", linestyle="--", label="full")
        learn.axhspan(full.low, full.high, color="black", alpha=0.08)
    learn.set_ylabel("drop in NLL of new target")
    learn.set_title("Learning of the new target (mean, 95% CI over requests)")
    _band(gap, x, [r.gap_complement for r in rows], "complement − circuit")
    _band(gap, x, [r.gap_random for r in rows], "random − circuit")
    gap.axhline(0, color="gray", linewidth=0.8)
    if window.low is not None:
        gap.axvspan(window.low * 0.95, window.high * 1.05, color="green", alpha=0.12,
                    label=f"window {window.describe()}")
    gap.set_ylabel("gap in NLL drop")
    gap.set_title("Resistance of the circuit (gap > 0: the circuit learns less)")
    faith.plot(x, [r.faithfulness for r in rows], marker="o", color="tab:purple", label="faithfulness")
    faith.axhline(threshold, color="tab:purple", linestyle=":", label=f"threshold {threshold:g}")
    faith.set_ylabel("faithfulness")
    faith.set_ylim(0, 1.05)
    for ax in (learn, gap, faith):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    _density_axis(faith, x)
    missing = [f"{r.density:g}" for r in rows if r.gap_complement is None or math.isnan(r.faithfulness)]
    _footnote(fig, [f"no complement − circuit gap or faithfulness at {', '.join(missing)}"] if missing else [])
    return _save(fig, path)


def _matrix(rows: Sequence[OverlapRow], labels: Sequence[str], value: str) -> np.ndarray:
    """A symmetric label x label matrix of one overlap field, 1 on the diagonal and NaN where missing."""
    index = {label: i for i, label in enumerate(labels)}
    m = np.full((len(labels), len(labels)), np.nan)
    np.fill_diagonal(m, 1.0)
    for r in rows:
        m[index[r.a], index[r.b]] = m[index[r.b], index[r.a]] = getattr(r, value)
    return m


def overlap_heatmaps(rows: Sequence[OverlapRow], labels: Sequence[str], densities: Sequence[float], path: Path) -> Path:
    """Jaccard and overlap coefficient between every pair of circuits, one column per density; cells show the
    value and its ratio to chance, grey cells a missing circuit."""
    whole = [r for r in rows if r.module == WHOLE_MODEL]
    n = max(len(densities), 1)
    side = 1.2 + 0.6 * len(labels)
    fig = Figure(figsize=(side * n + 1, 2 * side + 1), layout="constrained")
    axes = np.asarray(fig.subplots(2, n, squeeze=False))
    for col, d in enumerate(densities):
        at = [r for r in whole if r.density == d]
        for ax, (value, ratio, title) in zip(axes[:, col], (("jaccard", "jaccard_ratio", "Jaccard"),
                                                            ("overlap_coefficient", "overlap_ratio", "overlap coef."))):
            m, r = _matrix(at, labels, value), _matrix(at, labels, ratio)
            image = ax.imshow(np.ma.masked_invalid(m), vmin=0, vmax=1, cmap=HEATMAP)
            for i in range(len(labels)):
                for j in range(len(labels)):
                    text = "n/a" if math.isnan(m[i, j]) else ("" if i == j else f"{m[i, j]:.2f}\n×{r[i, j]:.2g}")
                    color = "white" if m[i, j] < 0.5 else "black"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(labels)), labels, fontsize=8)
            ax.set_title(f"{title}, density {d:g}", fontsize=9)
    if not densities:
        axes[0, 0].text(0.5, 0.5, "no circuits", ha="center")
    else:
        fig.colorbar(image, ax=axes, shrink=0.6, label="value (×: ratio to chance)")
    return _save(fig, path)


def composition_by_layer(entries: Sequence[CompositionEntry], densities: Sequence[float], path: Path) -> Path:
    """Per density, each module type's share of the circuit and fraction of its own weights kept, by layer
    (mean over the circuits of that density)."""
    n = max(len(densities), 1)
    fig = Figure(figsize=(3.6 * n + 1, 6), layout="constrained")
    axes = np.asarray(fig.subplots(2, n, squeeze=False, sharey="row"))
    for col, d in enumerate(densities):
        groups: dict[str, dict[int, list[CompositionEntry]]] = defaultdict(lambda: defaultdict(list))
        for e in entries:
            if e.density == d and e.layer != ALL_LAYERS:
                groups[e.module_type][e.layer].append(e)
        for row, (field, label) in enumerate((("share_of_circuit", "share of circuit"),
                                              ("fraction_kept", "fraction of own weights kept"))):
            ax = axes[row, col]
            for module, by_layer in groups.items():
                layers = sorted(by_layer)
                ax.plot(layers, [np.mean([getattr(e, field) for e in by_layer[k]]) for k in layers], marker=".",
                        label=module)
            if not groups:
                ax.text(0.5, 0.5, "no circuits", ha="center", transform=ax.transAxes)
            ax.set_title(f"density {d:g}", fontsize=9)
            ax.set_xlabel("layer")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(label)
        if groups:
            axes[0, col].legend(fontsize=7)
    return _save(fig, path)


def discovery_curves(
    discoveries: Sequence[Discovery],
    labels: Mapping[Source, str],
    snapshots: Sequence[Snapshot],
    densities: Sequence[float],
    path: Path,
) -> Path:
    """Density and faithfulness against step for every discovery run, with its snapshots marked."""
    fig = Figure(figsize=(8, 6.5), layout="constrained")
    dens, faith = fig.subplots(2, 1, sharex=True)
    for d in discoveries:
        label = labels[d.source]
        for ax, key in ((dens, "density"), (faith, "faithfulness")):
            history = d.history.get(key, [])
            (line,) = ax.plot([s for s, _ in history], [v for _, v in history], label=label)
            shots = [s for s in snapshots if s.source == label]
            ax.scatter([s.step for s in shots], [getattr(s, key) for s in shots], color=line.get_color(), zorder=3)
    for t in densities:
        dens.axhline(t, color="gray", linestyle=":", linewidth=0.8)
    dens.set_ylabel("density")
    faith.set_ylabel("faithfulness")
    faith.set_xlabel("step")
    dens.set_title("Discovery (dots: circuit snapshots; dotted: target densities)")
    for ax in (dens, faith):
        ax.grid(alpha=0.3)
        if discoveries:
            ax.legend(fontsize=8)
    return _save(fig, path)
