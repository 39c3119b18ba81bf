"""Backing off a collapse: a mask whose faithfulness falls off a cliff between two evaluations goes back to the last
evaluation before the fall, and the ramp from there takes twice the steps (`backoff`, docs/design.md §3.2).

Near 5% of the weights a mask can lose the task between two evaluations and not regain it: a geometric ramp on
blimp_dna1 fell from 0.867 to 0.520 at density 0.055 and stayed at chance through its hold
(benchmarks/results/README.md). Without a guard the controller keeps shifting to its plan, and a hold can only
choose among masks after the fall.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Kept:
    """The mask logits and AdamW state of the last evaluation that did not collapse (on the CPU), and its score."""

    score: float
    logits: torch.Tensor
    optimizer: dict[str, Any]


def score(row: Mapping[str, float]) -> float:
    """What the guard compares: faithfulness on the rows that choose snapshots where `select_rows` sets them apart
    (so the rows that report a circuit steer nothing), else on every held-out row."""
    return row.get("selection_faithfulness", row["faithfulness"])


def collapsed(kept: Kept | None, row: Mapping[str, float], drop: float) -> bool:
    """Whether `row` scores more than `drop` below the last evaluation kept."""
    return kept is not None and kept.score - score(row) > drop


def keep(logits: torch.Tensor, optimizer: torch.optim.Optimizer, row_score: float) -> Kept:
    """A copy of the logits and optimizer state to go back to."""
    return Kept(row_score, logits.detach().to("cpu", copy=True), _cpu_copy(optimizer.state_dict()))


def restore(logits: torch.Tensor, optimizer: torch.optim.Optimizer, kept: Kept) -> None:
    """Put `kept` back into the logits and the optimizer (a copy, so `kept` stays as it was for a later fall)."""
    with torch.no_grad():
        logits.copy_(kept.logits)
    optimizer.load_state_dict(_cpu_copy(kept.optimizer))


def _cpu_copy(state_dict: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict whose tensors are CPU copies, sharing no storage with the live state."""
    tensors = {
        index: {
            key: value.detach().to("cpu", copy=True) if torch.is_tensor(value) else value
            for key, value in moments.items()
        }
        for index, moments in state_dict["state"].items()
    }
    return {"state": tensors, "param_groups": copy.deepcopy(state_dict["param_groups"])}
