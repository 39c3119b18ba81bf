"""Headline findings: each of the paper's claims (DESIGN.md section 1) beside what the sweep measured.

Verdicts follow fixed rules, stated with each claim below, so two sweeps are judged alike:
`consistent`, `partly`, `not consistent`, or `no data`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from analysis.bootstrap import finite_mean
from analysis.composition import ALL_LAYERS, mean_representation, over_represented
from analysis.overlap import ALL as WHOLE_MODEL
from analysis.pipeline import Analysis
from analysis.window import ALL, Window

PAPER_WINDOW = (0.05, 0.5)
LARGE_NORM_SHARE = 0.5  # a norm share of the circuit of this order or more matches "up to 60%"

CLAIMS = (
    "Circuits contain entity knowledge but resist new knowledge more than their complement (confirmation bias).",
    "The ideal circuit size lies between 5% and 50% of the parameters (the size window).",
    "Circuits from different datasets overlap moderately.",
    "Up to 60% of a circuit is LayerNorm parameters rather than attention or MLP.",
)


@dataclass(frozen=True)
class Finding:
    """One claim of the paper, what this sweep shows about it, and the verdict."""

    claim: str
    result: str
    verdict: str


@dataclass(frozen=True)
class Headline:
    """The summary figures the findings and the logged metrics are made of; NaN where the sweep has no data."""

    gap_densities: tuple[float, ...]  # pooled densities with a complement - circuit gap
    resists: tuple[float, ...]  # ... where the gap's interval lies above 0
    learns_more: tuple[float, ...]  # ... where it lies below 0
    knowledge_circuit: float  # mean pre-edit NLL of the true target over the pooled densities
    knowledge_complement: float
    window: Window
    pairs: int  # pairs of circuits of the same density from different datasets
    mean_jaccard: float
    min_jaccard: float
    max_jaccard: float
    mean_jaccard_ratio: float
    mean_overlap_coefficient: float
    mean_overlap_ratio: float
    max_norm_share: float
    max_norm_share_at: str
    norm_representation: float
    over_represented: tuple[str, ...]


def headline(a: Analysis) -> Headline:
    """The summary figures of an analysis."""
    pooled = [r for r in a.window_rows if r.scope == ALL]
    gaps = [r for r in pooled if r.gap_complement is not None]
    dataset = {label: s.dataset for s, label in a.labels.items()}
    whole = [r for r in a.overlaps
             if r.module == WHOLE_MODEL and dataset[r.a] != dataset[r.b] and not math.isnan(r.jaccard)]
    jaccard = [r.jaccard for r in whole]
    norm = [e for e in a.composition if e.layer == ALL_LAYERS and e.module_type == "norm"]
    top = max(norm, key=lambda e: e.share_of_circuit, default=None)
    return Headline(
        gap_densities=tuple(r.density for r in gaps),
        resists=tuple(r.density for r in gaps if r.gap_complement.above_zero),
        learns_more=tuple(r.density for r in gaps if r.gap_complement.below_zero),
        knowledge_circuit=finite_mean([r.knowledge_circuit for r in pooled]),
        knowledge_complement=finite_mean([r.knowledge_complement for r in pooled]),
        window=a.window,
        pairs=len(whole),
        mean_jaccard=finite_mean(jaccard),
        min_jaccard=min(jaccard, default=math.nan),
        max_jaccard=max(jaccard, default=math.nan),
        mean_jaccard_ratio=finite_mean([r.jaccard_ratio for r in whole]),
        mean_overlap_coefficient=finite_mean([r.overlap_coefficient for r in whole]),
        mean_overlap_ratio=finite_mean([r.overlap_ratio for r in whole]),
        max_norm_share=top.share_of_circuit if top else math.nan,
        max_norm_share_at=f"{top.source} at density {top.density:g}" if top else "",
        norm_representation=mean_representation(a.composition).get("norm", math.nan),
        over_represented=tuple(over_represented(a.composition)),
    )


def _densities(values: tuple[float, ...]) -> str:
    return ", ".join(f"{d:g}" for d in values) or "none"


def _confirmation_bias(h: Headline) -> Finding:
    """Consistent when the gap is significantly positive at half the densities or more and never negative."""
    n, k = len(h.gap_densities), len(h.resists)
    if n == 0:
        return Finding(CLAIMS[0], "no density has both circuit and complement edits", "no data")
    result = (
        f"complement − circuit gap in learning (drop in NLL of the new target) significantly above 0 at {k} of {n} "
        f"densities ({_densities(h.resists)}), below 0 at {len(h.learns_more)} ({_densities(h.learns_more)}); "
        f"pre-edit NLL of the true target: circuit {h.knowledge_circuit:.3g}, complement {h.knowledge_complement:.3g}"
    )
    if k == 0:
        verdict = "not consistent"
    elif 2 * k >= n and not h.learns_more:
        verdict = "consistent"
    else:
        verdict = "partly"
    return Finding(CLAIMS[0], result, verdict)


def _size_window(h: Headline, threshold: float) -> Finding:
    """Consistent when a window exists inside 5%-50%, partly when it reaches outside, not consistent when none."""
    if not h.gap_densities:
        return Finding(CLAIMS[1], "no density has both circuit and complement edits", "no data")
    w = h.window
    result = f"window {w.describe()} (gap interval above 0 and faithfulness ≥ {threshold:g}; densities pooled)"
    if w.low is None:
        verdict = "not consistent"
    elif PAPER_WINDOW[0] <= w.low and w.high <= PAPER_WINDOW[1]:
        verdict = "consistent"
    else:
        verdict = "partly"
    return Finding(CLAIMS[1], result, verdict)


def _overlap(h: Headline) -> Finding:
    """Consistent when circuits share more than chance (ratio > 1) but are far from identical (Jaccard < 0.9)."""
    if h.pairs == 0:
        return Finding(CLAIMS[2], "no two circuits of the same density from different datasets", "no data")
    result = (
        f"mean Jaccard {h.mean_jaccard:.3g} (range {h.min_jaccard:.3g}–{h.max_jaccard:.3g}, "
        f"{h.mean_jaccard_ratio:.3g}× chance) and overlap coefficient {h.mean_overlap_coefficient:.3g} "
        f"({h.mean_overlap_ratio:.3g}× chance) over {h.pairs} pairs of circuits from different datasets"
    )
    if not h.mean_jaccard_ratio > 1:
        verdict = "not consistent"
    else:
        verdict = "consistent" if h.mean_jaccard < 0.9 else "partly"
    return Finding(CLAIMS[2], result, verdict)


def _norm_share(h: Headline) -> Finding:
    """Consistent when norms reach LARGE_NORM_SHARE of some circuit, partly when only over-represented."""
    if math.isnan(h.max_norm_share):
        return Finding(CLAIMS[3], "no circuit with norm parameters", "no data")
    result = (
        f"norm parameters are at most a share of {h.max_norm_share:.2g} of a circuit ({h.max_norm_share_at}); "
        f"their share is {h.norm_representation:.3g}× their share of the model on average; "
        f"over-represented module types: {', '.join(h.over_represented) or 'none'}"
    )
    if h.max_norm_share >= LARGE_NORM_SHARE:
        verdict = "consistent"
    else:
        verdict = "partly" if h.norm_representation > 1 else "not consistent"
    return Finding(CLAIMS[3], result, verdict)


def findings(h: Headline, threshold: float) -> list[Finding]:
    """The four findings, in the paper's order."""
    return [_confirmation_bias(h), _size_window(h, threshold), _overlap(h), _norm_share(h)]


def metrics(h: Headline) -> dict[str, float]:
    """Headline metrics to log on the analysis run (only the finite ones; the window's bounds only when found)."""
    values = {
        "window_found": float(h.window.low is not None),
        "window_low": h.window.low if h.window.low is not None else math.nan,
        "window_high": h.window.high if h.window.high is not None else math.nan,
        "densities_resisting": float(len(h.resists)),
        "densities_with_gap": float(len(h.gap_densities)),
        "mean_jaccard": h.mean_jaccard,
        "mean_jaccard_ratio": h.mean_jaccard_ratio,
        "mean_overlap_coefficient": h.mean_overlap_coefficient,
        "mean_overlap_ratio": h.mean_overlap_ratio,
        "max_norm_share": h.max_norm_share,
        "norm_representation": h.norm_representation,
    }
    return {k: float(v) for k, v in values.items() if not math.isnan(v)}
