"""Held-out evaluation of a mask, and the record of it that a snapshot circuit carries in its provenance."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from circuitlib.classifier import cached_features
from circuitlib.discovery.task import Task
from circuitlib.masks import apply_masks, complement_masks
from circuitlib.models import LoadedModel


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: sound at small n and at 0 or 1, unlike the normal one."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@torch.no_grad()
def evaluate(lm: LoadedModel, task: Task, masks: dict[str, torch.Tensor], batch_size: int) -> dict[str, float]:
    """Faithfulness (with its 95% interval), KL(full || circuit), and accuracies of the circuit and its complement.

    All on the held-out rows, with the deterministic mask; with `task.select`, on the rows that do not choose
    snapshots, and `selection_faithfulness` on those that do.
    """
    circuit = apply_masks(lm.model, masks)
    circuit_logits = task.head(cached_features(lm, task.eval, batch_size, circuit))
    del circuit
    complement = apply_masks(lm.model, complement_masks(masks))
    complement_preds = task.head(cached_features(lm, task.eval, batch_size, complement)).argmax(dim=1)
    full_logits, labels = task.eval_full_logits, task.eval_labels
    selection = {}
    if task.select is not None:
        select = task.select.to(circuit_logits.device)
        chosen = circuit_logits[select].argmax(dim=1) == full_logits[select].argmax(dim=1)
        selection = {"selection_faithfulness": chosen.float().mean().item(), "selection_rows": int(select.sum())}
        report = ~select
        circuit_logits, complement_preds = circuit_logits[report], complement_preds[report]
        full_logits, labels = full_logits[report], labels[report]
    circuit_preds, full_preds = circuit_logits.argmax(dim=1), full_logits.argmax(dim=1)
    agree = int((circuit_preds == full_preds).sum())
    low, high = wilson_interval(agree, len(circuit_preds))
    kl = F.kl_div(
        circuit_logits.log_softmax(dim=1), full_logits.log_softmax(dim=1), log_target=True, reduction="batchmean"
    )
    return {
        "faithfulness": agree / len(circuit_preds),
        "faithfulness_low": low,
        "faithfulness_high": high,
        "kl": kl.item(),
        "circuit_accuracy": (circuit_preds == labels).float().mean().item(),
        "complement_accuracy": (complement_preds == labels).float().mean().item(),
        "full_accuracy": (full_preds == labels).float().mean().item(),
        "eval_rows": len(circuit_preds),
        **selection,
    }


@dataclass(frozen=True)
class SnapshotRecord:
    """The evaluation a snapshot circuit was chosen by, as its provenance holds it: the one reader of those keys.

    NaN where an older circuit did not record a figure; `selection_*` only where `select_rows` chose it apart from
    the rows that report it.
    """

    step: float = math.nan
    density: float = math.nan
    faithfulness: float = math.nan
    faithfulness_low: float = math.nan
    faithfulness_high: float = math.nan
    kl: float = math.nan
    circuit_accuracy: float = math.nan
    complement_accuracy: float = math.nan
    full_accuracy: float = math.nan
    eval_rows: float = math.nan
    selected_among: float = math.nan  # held-out evaluations at or below the target it was the most faithful of
    selection_faithfulness: float | None = None  # on the rows that chose it
    selection_rows: int | None = None

    @classmethod
    def from_provenance(cls, provenance: Mapping[str, Any]) -> SnapshotRecord:
        """The record in a circuit's provenance; a missing or non-numeric figure reads as NaN (None for selection)."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = provenance.get(f.name)
            number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
            if f.name.startswith("selection_"):
                values[f.name] = number
            else:
                values[f.name] = float(number) if number is not None else math.nan
        return cls(**values)

    @property
    def chosen_apart(self) -> bool:
        """Whether rows of their own chose it, so its reported figures are not the best of several looks at them."""
        return self.selection_rows is not None

    @property
    def optimistic(self) -> bool:
        """Chosen as the best of several evaluations on the very rows that report it: biased up by about the noise."""
        return not self.chosen_apart and self.selected_among > 1
