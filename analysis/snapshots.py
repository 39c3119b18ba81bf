"""Circuit snapshots as the analysis judges them: actual size, the discovery's held-out figures at the snapshot,
whether the circuit is faithful enough to count in any finding, and flags for snapshots that do not honestly stand
for their target (actual density well below it, or one snapshot serving several targets)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from circuitlib.circuits import Circuit
from circuitlib.discovery import SnapshotRecord
from record.names import WELL_BELOW as WELL_BELOW  # re-exported: the report states the rule
from record.names import well_below
from record.reader import Source

UNKNOWN = "faithfulness unknown"


@dataclass(frozen=True)
class Snapshot:
    """One circuit found by discovery: where it came from, its actual size, how faithful it was, and its flags."""

    source: str  # the circuit's label in the report
    dataset: str
    seed: int
    target: float
    density: float  # actual: kept / masked weights
    kept: int
    total: int
    step: float  # discovery step of the snapshot (NaN where unrecorded)
    faithfulness: float  # held-out agreement with the full model (NaN where unrecorded)
    faithfulness_low: float  # its 95% interval (NaN where unrecorded)
    faithfulness_high: float
    complement_accuracy: float
    kl: float  # KL(full || circuit) over the classes
    digest: str
    excluded: str  # why the circuit is left out of every finding; empty when it counts
    below_target: bool  # density < WELL_BELOW x target
    shares_with: tuple[float, ...] = ()  # the discovery's other targets that got this very snapshot
    selected_among: float = math.nan  # held-out evaluations the snapshot was the most faithful of (NaN: unrecorded)
    chosen_apart: bool = False  # chosen on held-out rows of its own (discovery.select_rows), not those that score it
    optimistic: bool = False  # its faithfulness is the best of several looks at the rows that report it (biased up)
    complement_floor: float = math.nan  # the complement's accuracy with no masked weight (NaN: unrecorded)

    @property
    def key(self) -> tuple[Source, float]:
        """The circuit's (source, target density), as edits and window rows know it."""
        return Source(self.dataset, self.seed), self.target


def is_faithful(faithfulness: float, threshold: float) -> bool:
    """The rule for a circuit to count: faithfulness known and at least the threshold."""
    return faithfulness >= threshold  # False for NaN


def exclusion(faithfulness: float, threshold: float) -> str:
    """Why a circuit of this faithfulness is left out of the findings; empty when it is not."""
    if math.isnan(faithfulness):
        return UNKNOWN
    return "" if is_faithful(faithfulness, threshold) else f"faithfulness {faithfulness:.3g} < {threshold:g}"


def _at_step(history: Sequence[tuple[int, float]], step: float) -> float:
    """The value logged at `step`, NaN where none was."""
    return next((v for s, v in history if s == step), math.nan)


def complement_floor(history: Mapping[str, Sequence[tuple[int, float]]]) -> float:
    """The complement's accuracy at step 0 where the circuit then kept every weight, so the complement kept none of
    the masked ones: what the parts never masked (embeddings, and norms under mask_norms false) predict alone. A
    complement accuracy near it is no trace of the task left behind (NaN where the history does not say)."""
    if _at_step(history.get("density", []), 0) != 1.0:
        return math.nan
    return _at_step(history.get("complement_accuracy", []), 0)


def snapshot(
    label: str,
    source: Source,
    target: float,
    c: Circuit,
    history: Mapping[str, Sequence[tuple[int, float]]],
    threshold: float,
) -> Snapshot:
    """A circuit's summary from its provenance (the discovery's history row at the snapshot); faithfulness falls
    back on the discovery's logged metric at the snapshot's step."""
    r = SnapshotRecord.from_provenance(c.provenance)
    faithfulness = r.faithfulness
    if math.isnan(faithfulness):
        faithfulness = _at_step(history.get("faithfulness", []), r.step)
    kept = c.kept
    density = kept / c.total
    return Snapshot(
        source=label,
        dataset=source.dataset,
        seed=source.seed,
        target=target,
        density=density,
        kept=kept,
        total=c.total,
        step=r.step,
        faithfulness=faithfulness,
        faithfulness_low=r.faithfulness_low,
        faithfulness_high=r.faithfulness_high,
        complement_accuracy=r.complement_accuracy,
        kl=r.kl,
        digest=c.digest,
        excluded=exclusion(faithfulness, threshold),
        below_target=well_below(density, target),
        selected_among=r.selected_among,
        chosen_apart=r.chosen_apart,
        optimistic=r.optimistic,  # SnapshotRecord's rule, the one the sweep's trials flag by
        complement_floor=complement_floor(history),
    )


def flag_shared(snapshots: Sequence[Snapshot]) -> list[Snapshot]:
    """The snapshots with `shares_with` set where targets of one discovery got the same circuit or the same step."""
    by_source: dict[tuple[str, int], list[Snapshot]] = defaultdict(list)
    for s in snapshots:
        by_source[s.dataset, s.seed].append(s)

    def shared(s: Snapshot) -> tuple[float, ...]:
        same = [
            o.target
            for o in by_source[s.dataset, s.seed]
            if o.target != s.target and (o.digest == s.digest or o.step == s.step)
        ]  # NaN steps never match
        return tuple(sorted(same, reverse=True))

    return [replace(s, shares_with=shared(s)) for s in snapshots]


def _why_shared(group: Sequence[Snapshot]) -> str:
    """What a group of targets sharing a snapshot has in common: the circuit itself, the step, or both."""
    reasons = ["same circuit"] if len({s.digest for s in group}) == 1 else []
    steps = {s.step for s in group}
    reasons += [f"step {group[0].step:g}"] if len(steps) == 1 and not math.isnan(group[0].step) else []
    return ", ".join(reasons)


def flags(snapshots: Sequence[Snapshot]) -> list[str]:
    """One line per snapshot well below its target and per group of targets sharing one snapshot."""
    lines, seen = [], set()
    for s in snapshots:
        if s.below_target:
            lines.append(
                f"{s.source} target {s.target:g}: actual density {s.density:.3g} is below {WELL_BELOW:g} × target"
            )
        targets = tuple(sorted((s.target, *s.shares_with), reverse=True))
        if s.shares_with and (s.source, targets) not in seen:
            seen.add((s.source, targets))
            group = [o for o in snapshots if o.source == s.source and o.target in targets]
            lines.append(
                f"{s.source} targets {', '.join(f'{t:g}' for t in targets)} share one snapshot "
                f"({_why_shared(group)}; density {s.density:.3g})"
            )
    return lines
