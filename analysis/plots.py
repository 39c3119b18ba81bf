"""PNG figures of a sweep's analysis, drawn on matplotlib Figures (Agg, no pyplot state); missing data stays a gap.

Each function writes one file and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

from analysis.bootstrap import Estimate
from analysis.composition import ALL_LAYERS, CompositionEntry
from analysis.overlap import WHOLE_MODEL, OverlapRow
from analysis.snapshots import Snapshot, flags
from analysis.window import CONTROLS, MASKED, Window, WindowRow
from circuitlib.types import FULL, MODULE_TYPES
from record.reader import Discovery, Source

DPI = 110
RATIO = matplotlib.colormaps["RdBu_r"].with_extremes(bad="lightgray")  # white at chance; grey: a missing circuit


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
    for used, marker, color, label in (
        (True, "o", "tab:purple", "faithful circuit (used)"),
        (False, "x", "gray", "left out"),
    ):
        shots = [s for s in snapshots if (not s.excluded) == used]
        if shots:
            low = [max(0.0, s.faithfulness - s.faithfulness_low) for s in shots]  # 0 where unrecorded
            high = [max(0.0, s.faithfulness_high - s.faithfulness) for s in shots]
            ax.errorbar(
                [s.density for s in shots],
                [s.faithfulness for s in shots],
                yerr=[low, high],
                linestyle="none",
                capsize=2,
                marker=marker,
                color=color,
                label=label,
            )
    flagged = [s for s in snapshots if s.below_target or s.shares_with]
    if flagged:
        ax.scatter(
            [s.density for s in flagged],
            [s.faithfulness for s in flagged],
            s=140,
            facecolors="none",
            edgecolors="tab:red",
            label="flagged snapshot (listed below)",
            zorder=3,
        )
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
        _band(learn, x, [r.drop[v] for r in placed], v)
    full = next((r.drop[FULL] for r in rows if r.drop[FULL]), None)
    if full:
        learn.axhline(full.mean, color="black", linestyle="--", label="full")
        learn.axhspan(full.low, full.high, color="black", alpha=0.08)
    targets: dict[float, list[str]] = {}  # targets whose circuits share one actual density share one label
    for r in placed:
        targets.setdefault(r.actual_density, []).append(f"{r.density:g}")
    for at, names in targets.items():
        learn.annotate(
            f"t={', '.join(names)}", (at, 1.0), xycoords=("data", "axes fraction"), fontsize=7, ha="center", va="bottom"
        )
    learn.set_ylabel("drop in NLL of new target")
    learn.set_title("Learning of the new target (mean, 95% CI over requests; t = target density)", pad=14)
    for v in CONTROLS:
        _band(gap, x, [r.gap[v] for r in placed], f"{v} − circuit")
    gap.axhline(0, color="gray", linewidth=0.8)
    inside = [r.actual_density for r in placed if r.in_window]
    if inside:
        gap.axvspan(
            min(inside) * 0.95,
            max(inside) * 1.05,
            color="green",
            alpha=0.12,
            label=f"window {window.describe()} (targets)",
        )
    gap.set_ylabel("gap in NLL drop")
    gap.set_title("Resistance of the circuit (gap > 0: the circuit learns less)")
    _faithfulness_panel(faith, snapshots, threshold)
    for ax in (learn, gap, faith):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    _density_axis(faith, x + [s.density for s in snapshots])
    missing = ", ".join(f"{r.density:g}" for r in rows if r.gap["complement"] is None)
    notes = [f"gap: no faithful circuit with a complement − circuit gap at target {missing}"] if missing else []
    _footnote(fig, notes + [f"flagged: {line}" for line in flags(snapshots)])
    return fig


def size_window(
    rows: Sequence[WindowRow], window: Window, snapshots: Sequence[Snapshot], threshold: float, path: Path
) -> Path:
    """The size-window figure (see size_window_figure) as a PNG."""
    return _save(size_window_figure(rows, window, snapshots, threshold), path)


def _matrix(rows: Sequence[OverlapRow], labels: Sequence[str], value: str) -> np.ndarray:
    """A symmetric label x label matrix of one overlap field, NaN on the diagonal (a circuit with itself says nothing
    about overlap) and where a pair is missing."""
    index = {label: i for i, label in enumerate(labels)}
    m = np.full((len(labels), len(labels)), np.nan)
    for r in rows:
        m[index[r.a], index[r.b]] = m[index[r.b], index[r.a]] = getattr(r, value)
    return m


def _ratio_norm(rows: Sequence[OverlapRow]) -> TwoSlopeNorm:
    """One colour scale for every panel: ratio to chance, white at 1 (chance), its range the pairs' own ratios."""
    ratios = [v for r in rows for v in (r.jaccard_ratio, r.overlap_ratio) if math.isfinite(v)]
    return TwoSlopeNorm(1.0, vmin=min([*ratios, 0.99]), vmax=max([*ratios, 1.01]))


def overlap_figure(rows: Sequence[OverlapRow], labels: Sequence[str], densities: Sequence[float]) -> Figure:
    """Jaccard and overlap coefficient between every pair of circuits, one column per density. The colour is the
    ratio to chance (independent masks of the same densities), so the scale is spent on the pairs themselves; the
    diagonal is masked (hatched); cells show the value and the ratio; grey cells a missing circuit or one left out
    for faithfulness."""
    whole = [r for r in rows if r.module == WHOLE_MODEL]
    n = max(len(densities), 1)
    side = 1.2 + 0.6 * len(labels)
    fig = Figure(figsize=(side * n + 1.5, 2 * side + 1.2), layout="constrained")
    axes = np.asarray(fig.subplots(2, n, squeeze=False))
    norm = _ratio_norm(whole)
    image = None
    for col, d in enumerate(densities):
        at = [r for r in whole if r.density == d]
        for ax, (value, ratio, title) in zip(
            axes[:, col],
            (("jaccard", "jaccard_ratio", "Jaccard"), ("overlap_coefficient", "overlap_ratio", "overlap coef.")),
            strict=True,
        ):
            m, r = _matrix(at, labels, value), _matrix(at, labels, ratio)
            image = ax.imshow(np.ma.masked_invalid(r), norm=norm, cmap=RATIO)
            for i in range(len(labels)):
                ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, facecolor="white", hatch="//", edgecolor="0.8"))
                for j in range(len(labels)):
                    text = "" if i == j else ("n/a" if math.isnan(m[i, j]) else f"{m[i, j]:.2f}\n×{r[i, j]:.3g}")
                    dark = not math.isnan(r[i, j]) and abs(float(norm(r[i, j])) - 0.5) > 0.35
                    ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(labels)), labels, fontsize=8)
            ax.set_title(f"{title}, density {d:g}", fontsize=9)
    fig.suptitle("Overlap of circuits (cell: value and ×ratio to chance)", fontsize=10)
    if image is None:
        axes[0, 0].text(0.5, 0.5, "no circuits", ha="center")
    else:
        fig.colorbar(
            image,
            ax=axes,
            shrink=0.6,
            label="colour: ratio to chance (1 = independent masks)\ndiagonal masked (hatched), grey: missing",
        )
    return fig


def overlap_heatmaps(rows: Sequence[OverlapRow], labels: Sequence[str], densities: Sequence[float], path: Path) -> Path:
    """The overlap figure (see overlap_figure) as a PNG."""
    return _save(overlap_figure(rows, labels, densities), path)


def composition_figure(entries: Sequence[CompositionEntry], densities: Sequence[float]) -> Figure:
    """Each module type's share of the circuit by layer (a row per module type, a column per density), one line per
    circuit (dataset), beside the module type's share of the model: what a uniformly random circuit would keep."""
    by_layer = [e for e in entries if e.layer != ALL_LAYERS]
    modules = [m for m in MODULE_TYPES if any(e.module_type == m for e in by_layer)]
    sources = sorted({e.source for e in by_layer})
    n, rows = max(len(densities), 1), max(len(modules), 1)
    fig = Figure(figsize=(3.6 * n + 1.5, 2.4 * rows + 1), layout="constrained")
    axes = np.asarray(fig.subplots(rows, n, squeeze=False, sharex=True, sharey="row"))
    for col, d in enumerate(densities):
        for row, module in enumerate(modules):
            ax = axes[row, col]
            cell = [e for e in by_layer if e.density == d and e.module_type == module]
            model = {e.layer: e.share_of_model for e in cell}
            layers = sorted(model)
            for source in sources:
                line = sorted((e.layer, e.share_of_circuit) for e in cell if e.source == source)
                if line:
                    ax.plot([k for k, _ in line], [v for _, v in line], marker=".", label=source)
            ax.plot(layers, [model[k] for k in layers], color="black", linestyle="--", label="share of model")
            ax.set_title(f"{module}, density {d:g}", fontsize=9)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("share of circuit")
            if row == len(modules) - 1:
                ax.set_xlabel("layer")
            if not cell:
                ax.text(0.5, 0.5, "no circuits", ha="center", transform=ax.transAxes)
    if not modules or not densities:
        axes[0, 0].text(0.5, 0.5, "no circuits", ha="center", transform=axes[0, 0].transAxes)
    handles, names = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside right upper", fontsize=8)
    fig.suptitle(
        "Composition: each module type's share of the circuit, by layer, per dataset\n"
        "(dashed: its share of the model, what a random circuit of any density keeps)",
        fontsize=10,
    )
    return fig


def composition_by_layer(entries: Sequence[CompositionEntry], densities: Sequence[float], path: Path) -> Path:
    """The composition figure (see composition_figure) as a PNG."""
    return _save(composition_figure(entries, densities), path)


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
