"""Headline findings: each of the paper's claims (docs/design.md §1.2, §5.5) beside what the sweep measured.

Every claim is judged from the faithful circuits alone (pipeline.py leaves the others out of overlap, composition
and the window). Verdicts follow fixed rules, stated with each claim below, so two sweeps are judged alike:
`consistent`, `partly`, `not consistent`, or `not assessable` where no faithful circuit (or too few) is left to
judge from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from analysis.baselines import CROSS, BaselineRow, pair_kind
from analysis.bootstrap import Estimate, finite_mean
from analysis.composition import ALL_LAYERS, mean_representation, over_represented
from analysis.overlap import WHOLE_MODEL
from analysis.pipeline import Analysis
from analysis.tables import estimate
from analysis.window import POOLED, Window, edited_circuits

PAPER_WINDOW = (0.05, 0.5)
LARGE_NORM_SHARE = 0.5  # a norm share of the circuit of this order or more matches "up to 60%"
MIN_PAIRS = 2  # pairs of circuits a bootstrap interval of mean overlap needs (one pair has no spread)

CONSISTENT, PARTLY, NOT_CONSISTENT, NOT_ASSESSABLE = "consistent", "partly", "not consistent", "not assessable"

CLAIMS = (
    "Circuits contain entity knowledge but resist new knowledge more than their complement (confirmation bias).",
    "The ideal circuit size lies between 5% and 50% of the parameters (the size window).",
    "Circuits from different datasets overlap moderately.",
    "Up to 60% of a circuit is LayerNorm parameters rather than attention or MLP.",
)


@dataclass(frozen=True)
class Finding:
    """One claim of the paper, what this sweep shows about it, the verdict, and the circuits it was judged from."""

    claim: str
    result: str
    verdict: str
    circuits_used: int  # faithful circuits the result is computed from
    circuits_excluded: int  # circuits left out for want of faithfulness (the same for every claim)


@dataclass(frozen=True)
class Headline:
    """The summary figures the findings and the logged metrics are made of, from the faithful circuits alone; NaN or
    None where the sweep has no data."""

    circuits: int  # every circuit snapshot
    excluded: int  # ... left out of every finding (below the faithfulness threshold, or unknown)
    gap_circuits: int  # faithful circuits with circuit and complement edits: what claims 1 and 2 are judged from
    gap_densities: tuple[float, ...]  # pooled densities with a complement - circuit gap
    resists: tuple[float, ...]  # ... where the gap's interval lies above 0
    learns_more: tuple[float, ...]  # ... where it lies below 0
    knowledge_circuit: float  # mean pre-edit NLL of the true target over the pooled densities
    knowledge_complement: float
    window: Window
    window_actual: tuple[float, float] | None  # lowest and highest actual density of the window's circuits
    above_window: float | None  # the lowest density with a gap above the window: its upper edge, observed
    below_window: float | None  # the highest density with a gap below it: its lower edge (None: not observed)
    gap_actual: tuple[float, ...]  # actual densities of the pooled densities with a gap (what claim 2 can test)
    faithful_datasets: tuple[str, ...]
    overlap: BaselineRow | None  # cross-dataset overlap beside chance and stability, pooled over densities
    overlap_circuits: int  # faithful circuits in some cross-dataset or stability pair
    mean_jaccard_ratio: float  # cross-dataset pairs
    mean_overlap_coefficient: float
    mean_overlap_ratio: float
    composition_circuits: int  # faithful circuits whose composition was counted
    max_norm_share: float
    max_norm_share_at: str
    norm_representation: float
    over_represented: tuple[str, ...]


def headline(a: Analysis) -> Headline:
    """The summary figures of an analysis."""
    pooled = [r for r in a.window_rows if r.scope == POOLED]
    gaps = [(r.density, gap) for r in pooled if (gap := r.gap["complement"]) is not None]
    sources = {label: s for s, label in a.labels.items()}
    whole = [
        r
        for r in a.overlaps
        if r.module == WHOLE_MODEL and not math.isnan(r.jaccard) and pair_kind(sources[r.a], sources[r.b]) is not None
    ]
    cross = [r for r in whole if pair_kind(sources[r.a], sources[r.b]) == CROSS]
    inside = [r.actual_density for r in pooled if r.in_window and not math.isnan(r.actual_density)]
    norm = [e for e in a.composition if e.layer == ALL_LAYERS and e.module_type == "norm"]
    top = max(norm, key=lambda e: e.share_of_circuit, default=None)
    low, high = a.window.low, a.window.high
    return Headline(
        circuits=len(a.snapshots),
        excluded=len(a.excluded),
        gap_circuits=len(edited_circuits(a.sweep.edits) & {s.key for s in a.used}),
        gap_densities=tuple(d for d, _ in gaps),
        resists=tuple(d for d, gap in gaps if gap.above_zero),
        learns_more=tuple(d for d, gap in gaps if gap.below_zero),
        knowledge_circuit=finite_mean([r.knowledge["circuit"] for r in pooled]),
        knowledge_complement=finite_mean([r.knowledge["complement"] for r in pooled]),
        window=a.window,
        window_actual=(min(inside), max(inside)) if inside else None,
        above_window=min((d for d, _ in gaps if d > high), default=None) if high is not None else None,
        below_window=max((d for d, _ in gaps if d < low), default=None) if low is not None else None,
        gap_actual=tuple(
            r.actual_density for r in pooled if r.gap["complement"] is not None and not math.isnan(r.actual_density)
        ),
        faithful_datasets=tuple(sorted({s.dataset for s in a.used})),
        overlap=next((b for b in a.baselines if b.scope == POOLED), None),
        overlap_circuits=len({(c, r.density) for r in whole for c in (r.a, r.b)}),
        mean_jaccard_ratio=finite_mean([r.jaccard_ratio for r in cross]),
        mean_overlap_coefficient=finite_mean([r.overlap_coefficient for r in cross]),
        mean_overlap_ratio=finite_mean([r.overlap_ratio for r in cross]),
        composition_circuits=len({(e.source, e.density) for e in a.composition}),
        max_norm_share=top.share_of_circuit if top else math.nan,
        max_norm_share_at=f"{top.source} at density {top.density:g}" if top else "",
        norm_representation=mean_representation(a.composition).get("norm", math.nan),
        over_represented=tuple(over_represented(a.composition)),
    )


def _densities(values: tuple[float, ...]) -> str:
    return ", ".join(f"{d:g}" for d in values) or "none"


def _finding(i: int, h: Headline, used: int, result: str, verdict: str) -> Finding:
    return Finding(CLAIMS[i], result, verdict, used, h.excluded)


def _confirmation_bias(h: Headline) -> Finding:
    """Consistent when the gap is significantly positive at half the densities or more and never negative."""
    n, k = len(h.gap_densities), len(h.resists)
    if n == 0:
        return _finding(0, h, 0, "no faithful circuit has both circuit and complement edits", NOT_ASSESSABLE)
    result = (
        f"complement − circuit gap in learning (drop in NLL of the new target) significantly above 0 at {k} of {n} "
        f"densities ({_densities(h.resists)}), below 0 at {len(h.learns_more)} ({_densities(h.learns_more)}); "
        f"pre-edit NLL of the true target: circuit {h.knowledge_circuit:.3g}, complement {h.knowledge_complement:.3g}"
    )
    if k == 0:
        verdict = NOT_CONSISTENT
    elif 2 * k >= n and not h.learns_more:
        verdict = CONSISTENT
    else:
        verdict = PARTLY
    return _finding(0, h, h.gap_circuits, result, verdict)


def _beyond(density: float, up: bool) -> str:
    """A density to test past an unobserved edge of the window at `density`: 0.7 above or 0.02 below (beyond the
    claimed 5%-50%), or halfway to 1 or 0 where the window already reaches past those."""
    if up:
        return f"{0.7 if density < 0.7 else (1 + density) / 2:.2g}"
    return f"{0.02 if density > 0.02 else density / 2:.2g}"


def _size_window(h: Headline, threshold: float) -> Finding:
    """Judged from the pooled window (target densities; a density counts when faithful circuits of it have circuit
    and complement edits, i.e. its row has a gap):

    - not assessable: no faithful, edited circuit, or none whose actual density lies in 5%-50% (the sweep does not
      test the range the claim is about);
    - not consistent: there is no window;
    - consistent: the window's circuits' actual densities lie inside 5%-50% and both its edges were observed: some
      density tested above the window's highest and some below its lowest, both outside the window (no significant
      resistance there);
    - partly: a window that reaches an edge of the densities tested (its highest is the highest density tested, or
      its lowest the lowest), so that edge was not observed (the result names it and a density to test beyond it),
      or whose actual densities reach outside 5%-50% (or are unknown).
    """
    if not h.gap_densities:
        return _finding(1, h, 0, "no faithful circuit has both circuit and complement edits", NOT_ASSESSABLE)
    if not any(PAPER_WINDOW[0] <= d <= PAPER_WINDOW[1] for d in h.gap_actual):
        tested = ", ".join(f"{d:.3g}" for d in sorted(h.gap_actual)) or "none known"
        return _finding(
            1,
            h,
            h.gap_circuits,
            f"no faithful circuit with circuit and complement edits lies within "
            f"{PAPER_WINDOW[0]:.0%}–{PAPER_WINDOW[1]:.0%} (actual densities {tested}): the sweep does not "
            "test the claimed range",
            NOT_ASSESSABLE,
        )
    w = h.window
    actual = f", actual density {h.window_actual[0]:.3g}–{h.window_actual[1]:.3g}" if h.window_actual else ""
    result = (
        f"window {w.describe()} in target density{actual} (gap interval above 0 and faithfulness ≥ "
        f"{threshold:g}; faithful circuits pooled)"
    )
    if w.low is None or w.high is None:
        return _finding(1, h, h.gap_circuits, result, NOT_CONSISTENT)
    paper = f"{PAPER_WINDOW[0]:.0%}–{PAPER_WINDOW[1]:.0%}"
    notes = []
    if h.above_window is None:
        notes.append(
            f"upper edge not observed: {w.high:g} is the highest density tested with faithful, edited "
            f"circuits; test a density above it (e.g. {_beyond(w.high, up=True)})"
        )
    else:
        notes.append(f"upper edge observed (no significant resistance at {h.above_window:g})")
    if h.below_window is None:
        notes.append(
            f"lower edge not observed: {w.low:g} is the lowest density tested with faithful, edited "
            f"circuits; test a density below it (e.g. {_beyond(w.low, up=False)})"
        )
    else:
        notes.append(f"lower edge observed (no significant resistance at {h.below_window:g})")
    inside = h.window_actual is not None and (
        PAPER_WINDOW[0] <= h.window_actual[0] and h.window_actual[1] <= PAPER_WINDOW[1]
    )
    if h.window_actual is None:
        notes.append(f"the actual density of its circuits is unknown, so it cannot be placed within {paper}")
    elif not inside:
        notes.append(f"its circuits' actual densities reach outside {paper}")
    bounded = h.above_window is not None and h.below_window is not None
    verdict = CONSISTENT if bounded and inside else PARTLY
    return _finding(1, h, h.gap_circuits, f"{result}; {'; '.join(notes)}", verdict)


def _overlap(h: Headline) -> Finding:
    """Consistent ("moderate") when the cross-dataset Jaccard lies significantly above chance and significantly below
    stability (same dataset, other seeds); partly when only above chance; not consistent when not above chance; not
    assessable without faithful circuits of two datasets, MIN_PAIRS pairs of them, or a stability baseline."""
    o, used = h.overlap, h.overlap_circuits
    if len(h.faithful_datasets) < 2:
        have = ", ".join(h.faithful_datasets) or "none"
        return _finding(2, h, used, f"needs faithful circuits from at least two datasets; from: {have}", NOT_ASSESSABLE)
    above = o.above_chance if o else None
    if o is None or above is None or above.n < MIN_PAIRS:
        pairs = above.n if above else 0
        return _finding(
            2,
            h,
            used,
            f"{pairs} pair(s) of faithful circuits of one density from different datasets; "
            f"an interval needs {MIN_PAIRS}",
            NOT_ASSESSABLE,
        )
    result = (
        f"cross-dataset Jaccard {estimate(o.cross_dataset)} over {above.n} pairs "
        f"({h.mean_jaccard_ratio:.3g}× chance; overlap coefficient {h.mean_overlap_coefficient:.3g}, "
        f"{h.mean_overlap_ratio:.3g}× chance); chance {estimate(o.chance)}, excess over chance {estimate(above)}"
    )
    if not above.above_zero:
        return _finding(2, h, used, f"{result}: not significantly above chance", NOT_CONSISTENT)
    below = o.below_stability
    if below is None or o.stability is None or below.n < MIN_PAIRS:
        return _finding(
            2,
            h,
            used,
            f"{result}: above chance, but too few same-dataset pairs from other seeds at the "
            f'same densities for a stability baseline, so "moderate" cannot be judged '
            f"(needs two or more seeds)",
            NOT_ASSESSABLE,
        )
    result += (
        f"; stability (same dataset, other seed) {estimate(o.stability)} over {o.stability.n} pairs, "
        f"stability − cross-dataset {estimate(below)} (within densities)"
    )
    if below.above_zero:
        return _finding(2, h, used, f"{result}: above chance and below stability", CONSISTENT)
    return _finding(2, h, used, f"{result}: above chance but not significantly below stability", PARTLY)


def _norm_share(h: Headline) -> Finding:
    """Consistent when norms reach LARGE_NORM_SHARE of some circuit, partly when only over-represented."""
    if math.isnan(h.max_norm_share):
        return _finding(3, h, h.composition_circuits, "no faithful circuit with norm parameters", NOT_ASSESSABLE)
    result = (
        f"norm parameters are at most a share of {h.max_norm_share:.2g} of a circuit ({h.max_norm_share_at}); "
        f"their share is {h.norm_representation:.3g}× their share of the model on average; "
        f"over-represented module types: {', '.join(h.over_represented) or 'none'}"
    )
    if h.max_norm_share >= LARGE_NORM_SHARE:
        verdict = CONSISTENT
    else:
        verdict = PARTLY if h.norm_representation > 1 else NOT_CONSISTENT
    return _finding(3, h, h.composition_circuits, result, verdict)


def findings(h: Headline, threshold: float) -> list[Finding]:
    """The four findings, in the paper's order."""
    return [_confirmation_bias(h), _size_window(h, threshold), _overlap(h), _norm_share(h)]


def _mean(e: Estimate | None) -> float:
    return e.mean if e else math.nan


def metrics(h: Headline) -> dict[str, float]:
    """Headline metrics to log on the analysis run (only the finite ones; the window's bounds only when found)."""
    o = h.overlap
    values = {
        "circuits": float(h.circuits),
        "circuits_excluded": float(h.excluded),
        "window_found": float(h.window.low is not None),
        "window_low": h.window.low if h.window.low is not None else math.nan,
        "window_high": h.window.high if h.window.high is not None else math.nan,
        "window_low_actual": h.window_actual[0] if h.window_actual else math.nan,
        "window_high_actual": h.window_actual[1] if h.window_actual else math.nan,
        "window_upper_edge_observed": float(h.above_window is not None) if h.window.high is not None else math.nan,
        "window_lower_edge_observed": float(h.below_window is not None) if h.window.low is not None else math.nan,
        "densities_resisting": float(len(h.resists)),
        "densities_with_gap": float(len(h.gap_densities)),
        "mean_jaccard": _mean(o.cross_dataset) if o else math.nan,
        "mean_jaccard_ratio": h.mean_jaccard_ratio,
        "stability_jaccard": _mean(o.stability) if o else math.nan,
        "jaccard_above_chance": _mean(o.above_chance) if o else math.nan,
        "jaccard_below_stability": _mean(o.below_stability) if o else math.nan,
        "mean_overlap_coefficient": h.mean_overlap_coefficient,
        "mean_overlap_ratio": h.mean_overlap_ratio,
        "max_norm_share": h.max_norm_share,
        "norm_representation": h.norm_representation,
    }
    return {k: float(v) for k, v in values.items() if not math.isnan(v)}
