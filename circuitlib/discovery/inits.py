"""Where the mask logits start. An init is one function here and one line in INITS.

Every init starts from N(init_mean, init_std) (`masks.init_logits`, seeded by mask_seed); an init then moves the
logits in place, before the schedule's own start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from circuitlib.importance import importance_offsets

if TYPE_CHECKING:  # config.py reads INITS for its choices
    from circuitlib.discovery.config import DiscoveryConfig
    from circuitlib.discovery.state import DiscoveryState
    from circuitlib.discovery.task import Task
    from circuitlib.models import LoadedModel

Init = Callable[["LoadedModel", "Task", "DiscoveryState", "DiscoveryConfig"], None]


def uniform(lm: LoadedModel, task: Task, state: DiscoveryState, config: DiscoveryConfig) -> None:
    """The paper's: every logit from N(init_mean, init_std), as initialised."""


@torch.no_grad()
def importance(lm: LoadedModel, task: Task, state: DiscoveryState, config: DiscoveryConfig) -> None:
    """init_mean +- init_spread by each weight's task importance (|w| * ||x||, circuitlib.importance)."""
    state.logits.add_(importance_offsets(lm, task.train, state.layout, config.init_spread, config.feature_batch_size))


INITS: dict[str, Init] = {"uniform": uniform, "importance": importance}
