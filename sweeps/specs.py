"""The trials of a sweep as frozen specs: what each Ray Tune trial computes, and its key (its MLflow run name).

Tune carries a spec as plain data (`tune_config`) and a trial reads it back with `from_tune`, so a sweep resumed by
a newer circuitlib gets the defaults of settings added since.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from circuitlib import data, options
from circuitlib.seeds import Seeds, sweep_seeds
from circuitlib.types import FULL, Variant
from record import names
from sweeps.config import SweepConfig

Spec = TypeVar("Spec", "DiscoveryTrial", "EditTrial")


@dataclass(frozen=True)
class SweepRun:
    """What every trial of one sweep shares: its config and its MLflow parent run."""

    config: SweepConfig
    experiment_id: str
    parent_run_id: str

    @property
    def settings_hash(self) -> str:
        """What the sweep's parent and child runs are tagged with: they are reused only under the same settings."""
        return self.config.settings_hash()


@dataclass(frozen=True)
class DiscoveryTrial:
    """Phase 1: discover circuits on one dataset under one sweep seed."""

    sweep: SweepRun
    dataset: str  # the dataset's spec
    seed: int  # the sweep seed

    @property
    def name(self) -> str:
        """The dataset's name."""
        return data.dataset_name(self.dataset)

    @property
    def seeds(self) -> Seeds:
        return sweep_seeds(self.name, self.seed)

    @property
    def key(self) -> str:
        return names.discover_run_name(self.name, self.seed)


@dataclass(frozen=True)
class CircuitRef:
    """One circuit a finished discovery run logged: its dataset's name, sweep seed, target density and run."""

    dataset: str
    seed: int
    target: float
    run_id: str

    @property
    def artifact(self) -> str:
        return names.circuit_artifact(self.target)


@dataclass(frozen=True)
class EditTrial:
    """Phase 2: edit one shard of the requests on one variant of a circuit, or of the full model (no circuit)."""

    sweep: SweepRun
    variant: Variant
    shard: int
    circuit: CircuitRef | None = None

    @property
    def random_mask_seed(self) -> int:
        """The random variant's seed (0 for the full model, which has no mask)."""
        return sweep_seeds(self.circuit.dataset, self.circuit.seed).random_mask_seed if self.circuit else 0

    @property
    def key(self) -> str:
        c = self.circuit
        if c is None:
            return names.edit_run_name(None, None, self.variant, self.shard)
        return names.edit_run_name(c.dataset, c.target, self.variant, self.shard, c.seed)


def discovery_trials(run: SweepRun) -> list[DiscoveryTrial]:
    """One discovery per dataset x sweep seed."""
    return [DiscoveryTrial(run, spec, seed) for spec in run.config.datasets for seed in run.config.seeds]


def edit_trials(run: SweepRun, found: list[CircuitRef]) -> list[EditTrial]:
    """Every found circuit x variant x shard, plus the full model x shard."""
    shards = range(run.config.shards())
    trials = [
        EditTrial(run, variant, shard, ref) for ref in found for variant in run.config.variants for shard in shards
    ]
    if run.config.include_full:
        trials += [EditTrial(run, FULL, shard) for shard in shards]
    return trials


def tune_config(trial: DiscoveryTrial | EditTrial) -> dict[str, Any]:
    """The trial as Tune carries it: its key (Tune's trial name) and the spec as plain data."""
    return {"key": trial.key, "spec": dataclasses.asdict(trial)}


def from_tune(cls: type[Spec], config: dict[str, Any]) -> Spec:
    """The spec a trial's Tune config carries."""
    return options.build(cls, config["spec"])
