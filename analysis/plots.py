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
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

from analysis.bootstrap import Estimate
from analysis.composition import ALL_LAYERS, CompositionEntry
from analysis.overlap import ALL as WHOLE_MODEL
from analysis.overlap import OverlapRow
from analysis.snapshots import Snapshot, flags
from analysis.sweep_data import Discovery, Source
from analysis.window import MASKED, Window, WindowRow

DPI = 110
HEATMAP = matplotlib.colormaps["viridis"].with_extremes(bad="lightgray")  # grey: a missing circuit


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _density_axis(ax: Axes, densities: Sequence[float]) -> None:
    """An axis of actual density: log, ticked at 1, 2 and 5 times powers of ten, where some density is above 0."""
    if any(d > 0 for d in densities):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.minorticks_off()
    ax.set_xlabel("actual circuit density (kept / masked weights)")


def _band(ax: Axes, x: Sequence[float], estimates: Sequence[Estimate | None], label: str) -> None:
    """Means joined by a line, with the interval as a band; a missing estimate breaks both."""
    mean, low, high = (np.array([getattr(e, f) if e else np.nan for e in estimates]) for f in ("mean", "low", "high"))
    (line,) = ax.plot(x, mean, marker="o", label=label)
    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)


def _footnote(fig: Figure, lines: Sequence[str]) -> None:
    """Lines under the figure (what is missing from it, what to read with care), with room made for them."""
    if lines:
        height = 0.012 + 0.014 * len(lines)
        fig.set_layout_engine("constrained", rect=(0, height, 1, 1 - height))
        fig.text(0.01, 0.004, "\n".join(lines), fontsize=7, va="bottom")


def _faithfulness_panel(ax: Axes, snapshots: Sequence[Snapshot], threshold: float) -> None:
    """Every snapshot's faithfulness (with its interval where known) at its actual density: filled where the circuit
    is used, a cross where it is left out; flagged snapshots ringed in red."""
    for used, marker, color, label in ((True, "o", "tab:purple", "faithful circuit (used)"),
                                       (False, "x", "gray", "left out")):
        shots = [s for s in snapshots if (not s.excluded) == used]
        if shots:
            low = [max(0.0, s.faithfulness - s.faithfulness_low) for s in shots]  # 0 where unrecorded
            high = [max(0.0, s.faithfulness_high - s.faithfulness) for s in shots]
            ax.errorbar([s.density for s in shots], [s.faithfulness for s in shots], yerr=[low, high],
                        linestyle="none", capsize=2, marker=marker, color=color, label=label)
    flagged = [s for s in snapshots if s.below_target or s.shares_with]
    if flagged:
        ax.scatter([s.density for s in flagged], [s.faithfulness for s in flagged], s=140, facecolors="none",
                   edgecolors="tab:red", label="flagged snapshot (listed below)", zorder=3)
    ax.axhline(threshold, color="tab:purple", linestyle=":", label=f"threshold {threshold:g}")
    ax.set_ylabel("faithfulness")
    ax.set_ylim(0, 1.05)


def size_window_figure(
    rows: Sequence[WindowRow], window: Window, snapshots: Sequence[Snapshot], threshold: float
) -> Figure:
    """Learning per variant and the gaps to the circuit (faithful circuits pooled per target) against their actual
    density, each point labelled with its target, and every snapshot's faithfulness; flagged snapshots named."""
    placed = sorted((r for r in rows if not math.isnan(r.actual_density)), key=lambda r: r.actual_density)
    x = [r.actual_density for r in placed]
    fig = Figure(figsize=(7.5, 9), layout="constrained")
    learn, gap, faith = fig.subplots(3, 1, sharex=True)
    for v in MASKED:
        _band(learn, x, [getattr(r, f"drop_{v}") for r in placed], v)
    full = next((r.drop_full for r in rows if r.drop_full), None)
    if full:
        learn.axhline(full.mean, color="black", linestyle="--", label="full")
        learn.axhspan(full.low, full.high, color="black", alpha=0.08)
    for r in placed:
        learn.annotate(f"t={r.density:g}", (r.actual_density, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                       ha="center", va="bottom")
    learn.set_ylabel("drop in NLL of new target")
    learn.set_title("Learning of the new target (mean, 95% CI over requests; t = target density)", pad=14)
    _band(gap, x, [r.gap_complement for r in placed], "complement − circuit")
    _band(gap, x, [r.gap_random for r in placed], "random − circuit")
    gap.axhline(0, color="gray", linewidth=0.8)
    inside = [r.actual_density for r in placed if r.in_window]
    if inside:
        gap.axvspan(min(inside) * 0.95, max(inside) * 1.05, color="green", alpha=0.12,
                    label=f"window {window.describe()} (targets)")
    gap.set_ylabel("gap in NLL drop")
    gap.set_title("Resistance of the circuit (gap > 0: the circuit learns less)")
    _faithfulness_panel(faith, snapshots, threshold)
    for ax in (learn, gap, faith):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    _density_axis(faith, x + [s.density for s in snapshots])
    missing = ", ".join(f"{r.density:g}" for r in rows if r.gap_complement is None)
    notes = [f"gap: no faithful circuit with a complement − circuit gap at target {missing}"] if missing else []
    _footnote(fig, notes + [f"flagged: {line}" for line in flags(snapshots)])
    return fig


def size_window(
    rows: Sequence[WindowRow], window: Window, snapshots: Sequence[Snapshot], threshold: float, path: Path
) -> Path:
    """The size-window figure (see size_window_figure) as a PNG."""
    return _save(size_window_figure(rows, window, snapshots, threshold), path)


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
    value and its ratio to chance, grey cells a missing circuit or one left out for faithfulness."""
    whole = [r for r in rows if r.module == WHOLE_MODEL]
    n = max(len(densities), 1)
    side = 1.2 + 0.6 * len(labels)
    fig = Figure(figsize=(side * n + 1, 2 * side + 1), layout="constrained")
    axes = np.asarray(fig.subplots(2, n, squeeze=False))
    for col, d in enumerate(densities):
        at = [r for r in whole if r.density == d]
        for ax, (value, ratio, title) in zip(axes[:, col], (("jaccard", "jaccard_ratio", "Jaccard"),
                                                            ("overlap_coefficient", "overlap_ratio", "overlap coef.")),
                                             strict=True):
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
