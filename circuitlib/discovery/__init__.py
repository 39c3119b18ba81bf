"""Circuit discovery: learn a binary weight mask that keeps the model's task behaviour while shrinking.

The method of Ge, Rudzicz and Zhu (2024), docs/design.md §3: a frozen LM plus a linear head, one logit per
masked weight, straight-through binary masks, a loss toward the full model plus a density control. The parts:

- `config`: DiscoveryConfig, every hyperparameter declared once;
- `task`: the rows, the head and the full model's predictions, fixed for the run;
- `losses`, `inits`, `schedules`: registries of the swappable parts (a new one is one function or class there and
  one registry line); a schedule also names the method (`Method`) its runs default to;
- `state`: the run's mutable state and its checkpoint; `step`: one mask step; `evaluation`: held-out figures and the
  SnapshotRecord a circuit carries; `backoff`: the guard that sends a collapsed mask back to the evaluation before
  its fall; `loop`: `discover`, which ties them together.
"""

from circuitlib.discovery.config import PRECISIONS, DiscoveryConfig
from circuitlib.discovery.evaluation import SnapshotRecord, evaluate, wilson_interval
from circuitlib.discovery.inits import INITS
from circuitlib.discovery.loop import DiscoveryResult, discover
from circuitlib.discovery.losses import LOSSES, OVER_TOKENS, Run
from circuitlib.discovery.schedules import SCHEDULES, Method, Schedule, penalty_weight
from circuitlib.discovery.state import DiscoveryState, Hold
from circuitlib.discovery.step import FUSE_ABOVE, StepBuffers, mask_step, masked_hidden
from circuitlib.discovery.task import Task, TokenTargets, out_of_fold_logits, prepare_task, selection_rows

__all__ = [
    "FUSE_ABOVE",
    "INITS",
    "LOSSES",
    "OVER_TOKENS",
    "PRECISIONS",
    "SCHEDULES",
    "DiscoveryConfig",
    "DiscoveryResult",
    "DiscoveryState",
    "Hold",
    "Method",
    "Run",
    "Schedule",
    "SnapshotRecord",
    "StepBuffers",
    "Task",
    "TokenTargets",
    "discover",
    "evaluate",
    "mask_step",
    "masked_hidden",
    "out_of_fold_logits",
    "penalty_weight",
    "prepare_task",
    "selection_rows",
    "wilson_interval",
]
