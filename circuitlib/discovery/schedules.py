"""How density falls during discovery. A schedule is one class here and one line in SCHEDULES.

- `paper`: the sparsity weight lambda grows each epoch and the density falls wherever the penalty drives it; a
  snapshot is taken where it first passes each target (Ge, Rudzicz and Zhu 2024).
- `controlled`: no penalty; after every step one common shift of the logits sets the density to a plan that ramps
  linearly from one target to the next and holds each reached target (docs/design.md §3.2).
- `geometric`: as `controlled`, but the density falls at one pace in log-density, `ramp_steps` steps per halving, so
  a ramp's length follows the ratio of its densities, not their difference (0.25 to 0.05 takes 2.3 times the steps
  of 1.0 to 0.5, where a linear ramp gives both the same).

Each schedule also names the method it goes with (`method`): the settings a DiscoveryConfig leaves unset take
these values, so `schedule: paper` alone is the paper's whole procedure and `schedule: controlled` alone the one
measured for the size window (benchmarks/results/README.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from circuitlib.masks import density_margin, shift_to_density

if TYPE_CHECKING:  # config.py reads SCHEDULES for its choices
    from circuitlib.discovery.config import DiscoveryConfig
    from circuitlib.discovery.state import DiscoveryState


@dataclass(frozen=True)
class Method:
    """The settings of a discovery method that a schedule goes with (`DiscoveryConfig.method`)."""

    init: str
    noise: bool
    temperature: float
    loss: str
    hold_steps: int


class Schedule(Protocol):
    """What a schedule decides: the penalty weight, the starting logits, and the density after each step; and the
    method it goes with, the values of the settings a config leaves unset."""

    @property
    def method(self) -> Method: ...

    def penalty(self, config: DiscoveryConfig, epoch: int) -> float:
        """The sparsity weight lambda at `epoch` (0: no penalty, and its pass over the logits is skipped)."""
        ...

    def start(self, logits: torch.Tensor) -> None:
        """Shape freshly initialised logits in place (a resumed run skips this)."""
        ...

    def planned(self, state: DiscoveryState, config: DiscoveryConfig, remaining: list[float]) -> float | None:
        """The density the schedule aims at now (None: wherever the penalty leaves it)."""
        ...

    def steer(
        self, state: DiscoveryState, config: DiscoveryConfig, remaining: list[float], sample: torch.Tensor | None
    ) -> None:
        """Move the logits after a step (in place), given the targets not reached yet."""
        ...


class Paper:
    """The paper's schedule: lambda = lambda_init + lambda_step * epoch, capped at lambda_max."""

    # The paper's procedure: a uniform start, Gumbel-sampled masks at temperature 0.01, cross-entropy against the
    # full model's labels, and the first mask below each target as its circuit.
    method = Method(init="uniform", noise=True, temperature=0.01, loss="ce", hold_steps=0)

    def penalty(self, config: DiscoveryConfig, epoch: int) -> float:
        return min(config.lambda_init + config.lambda_step * epoch, config.lambda_max)

    def start(self, logits: torch.Tensor) -> None:
        pass

    def planned(self, state: DiscoveryState, config: DiscoveryConfig, remaining: list[float]) -> float | None:
        return None

    def steer(
        self, state: DiscoveryState, config: DiscoveryConfig, remaining: list[float], sample: torch.Tensor | None
    ) -> None:
        pass


class Controlled:
    """Density ramps linearly over `ramp_steps` from where the last hold ended to the next target, then holds it."""

    # What the size-window measurements chose (benchmarks/results/README.md): the importance order as the start,
    # the deterministic mask, the full model's features as the target, and a hold that keeps its most faithful mask.
    method = Method(init="importance", noise=False, temperature=1.0, loss="features", hold_steps=120)

    def penalty(self, config: DiscoveryConfig, epoch: int) -> float:
        return 0.0

    def start(self, logits: torch.Tensor) -> None:
        shift_to_density(logits, 1.0)  # the plan starts from the whole model

    def planned(self, state: DiscoveryState, config: DiscoveryConfig, remaining: list[float]) -> float | None:
        if state.holds:
            return min(h.target for h in state.holds)
        if not remaining:
            return state.ramp_start[1]
        start_step, start_density = state.ramp_start
        ramp_steps = config.ramp_steps * state.slowdown  # each back-off from a collapse doubles it (backoff.py)
        return self.along(start_density, remaining[0], state.step - start_step, ramp_steps)

    def length(self, start: float, target: float, ramp_steps: int) -> float:
        """Steps of the ramp from density `start` to `target`: `ramp_steps`, whatever the two densities."""
        return ramp_steps

    def along(self, start: float, target: float, steps: int, ramp_steps: int) -> float:
        """The planned density `steps` into the ramp from `start` to `target`: linear in density."""
        return start + (target - start) * min(1.0, steps / self.length(start, target, ramp_steps))

    def steer(
        self, state: DiscoveryState, config: DiscoveryConfig, remaining: list[float], sample: torch.Tensor | None
    ) -> None:
        aim = self.planned(state, config, remaining)
        assert aim is not None
        shift_to_density(state.logits, aim - density_margin(aim, sample), sample)


class Geometric(Controlled):
    """Density falls geometrically, `ramp_steps` steps per halving, from where the last hold ended to the next
    target, then holds it. A linear ramp from 0.25 to 0.05 spends half its steps above 0.15, though faithfulness dips
    below that (benchmarks/results/README.md); this one spends a ramp's steps in proportion to log(start / target)."""

    def length(self, start: float, target: float, ramp_steps: int) -> float:
        """Steps of the ramp from density `start` to `target`: `ramp_steps` per halving."""
        return ramp_steps * math.log2(start / target) if start > target else 0.0

    def along(self, start: float, target: float, steps: int, ramp_steps: int) -> float:
        """The planned density `steps` into the ramp from `start` to `target`: linear in log-density."""
        length = self.length(start, target, ramp_steps)
        return target if steps >= length else start * (target / start) ** (steps / length)


SCHEDULES: dict[str, Schedule] = {"paper": Paper(), "controlled": Controlled(), "geometric": Geometric()}


def penalty_weight(config: DiscoveryConfig, epoch: int) -> float:
    """The sparsity weight lambda of `config`'s schedule at `epoch`."""
    return SCHEDULES[config.schedule].penalty(config, epoch)
