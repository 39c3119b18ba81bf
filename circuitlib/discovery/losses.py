"""The training losses of discovery: how far the masked model is from the full model on a batch of training rows.

Each loss is one function of (task, masked features [batch, d_model], row indices [batch]) and one line in LOSSES;
`DiscoveryConfig.loss` names it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # config.py reads LOSSES for its choices
    from circuitlib.discovery.task import Task

Loss = Callable[["Task", torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(task: Task, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """CE of the head's logits against the full model's predicted labels (the paper's)."""
    return F.cross_entropy(task.head(features), task.train_full_logits[index].argmax(dim=1))


def kl(task: Task, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """KL(full || masked) over the two classes: soft targets that keep the full model's confidence."""
    logits, full = task.head(features), task.train_full_logits[index]
    return F.kl_div(logits.log_softmax(dim=1), full.log_softmax(dim=1), log_target=True, reduction="batchmean")


def logit_mse(task: Task, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Squared error to the full model's head logits, over their variance: keeps margins and errors."""
    return F.mse_loss(task.head(features), task.train_full_logits[index]) / task.train_full_logits.var()


def feature_mse(task: Task, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Squared error to the full model's last-token features, each dimension over its spread: the circuit keeps the
    representation the head reads, not only its verdicts on the training rows."""
    return ((features - task.train_full_features[index]) / task.feature_scale).square().mean()


def features_and(decision: Loss) -> Loss:
    """feature_mse plus a loss on the head's decision: the features keep the circuit from fitting the training rows'
    verdicts alone, the decision term weighs the one direction of the features the head reads above the other
    dimensions."""

    def loss(task: Task, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return feature_mse(task, features, index) + decision(task, features, index)

    loss.__doc__ = f"feature_mse + {decision.__name__}"
    return loss


def uninformed(task: Task, features: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the head's logits against the uniform distribution over the classes: smallest (log of the
    number of classes) where the head cannot tell the classes apart. DiscoGP's completeness target for a circuit's
    complement, which should no longer do the task."""
    return -task.head(features).log_softmax(dim=1).mean()


LOSSES: dict[str, Loss] = {
    "ce": cross_entropy,
    "kl": kl,
    "mse": logit_mse,
    "features": feature_mse,
    "features+mse": features_and(logit_mse),
    "features+ce": features_and(cross_entropy),
}
