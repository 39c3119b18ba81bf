"""The training losses of discovery: how far the masked model is from the full model on a batch of training rows.

Each loss is one function of (task, the masked model's `Run` on the batch, row indices [batch]) and one line in
LOSSES; `DiscoveryConfig.loss` names it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from circuitlib.classifier import last_token

if TYPE_CHECKING:  # config.py reads LOSSES for its choices
    from circuitlib.discovery.task import Task


@dataclass
class Run:
    """The masked model's final hidden states on a batch, and which of their positions are tokens (not padding)."""

    hidden: torch.Tensor  # [batch, width, d_model] float32
    attention_mask: torch.Tensor  # [batch, width]

    @cached_property
    def features(self) -> torch.Tensor:
        """The last-token features the head reads: [batch, d_model]."""
        return last_token(self.hidden, self.attention_mask)


Loss = Callable[["Task", Run, torch.Tensor], torch.Tensor]


def cross_entropy(task: Task, run: Run, index: torch.Tensor) -> torch.Tensor:
    """CE of the head's logits against the full model's predicted labels (the paper's)."""
    return F.cross_entropy(task.head(run.features), task.train_full_logits[index].argmax(dim=1))


def kl(task: Task, run: Run, index: torch.Tensor) -> torch.Tensor:
    """KL(full || masked) over the two classes: soft targets that keep the full model's confidence."""
    logits, full = task.head(run.features), task.train_full_logits[index]
    return F.kl_div(logits.log_softmax(dim=1), full.log_softmax(dim=1), log_target=True, reduction="batchmean")


def logit_mse(task: Task, run: Run, index: torch.Tensor) -> torch.Tensor:
    """Squared error to the full model's head logits, over their variance: keeps margins and errors."""
    return F.mse_loss(task.head(run.features), task.train_full_logits[index]) / task.train_full_logits.var()


def feature_mse(task: Task, run: Run, index: torch.Tensor) -> torch.Tensor:
    """Squared error to the full model's last-token features, each dimension over its spread: the circuit keeps the
    representation the head reads, not only its verdicts on the training rows."""
    return ((run.features - task.train_full_features[index]) / task.feature_scale).square().mean()


def token_mse(task: Task, run: Run, index: torch.Tensor) -> torch.Tensor:
    """feature_mse over every token of each row, not only the last: a row gives the mask one target per token rather
    than one in all, for sets of few rows (each dimension over its spread across all tokens; padding left out)."""
    if task.train_tokens is None:
        raise ValueError("token_mse needs the full model's states at every token: prepare_task caches them")
    width = min(run.hidden.shape[1], task.train_tokens.hidden.shape[1])  # past the set's longest row is padding
    real = run.attention_mask[:, :width].unsqueeze(-1)
    error = (run.hidden[:, :width] - task.train_tokens.hidden[index, :width]) / task.train_tokens.scale
    return (error.square() * real).sum() / (real.sum() * error.shape[-1])


def features_and(other: Loss) -> Loss:
    """feature_mse plus another loss. With a loss on the head's decision: the features keep the circuit from fitting
    the training rows' verdicts alone, the decision term weighs the one direction of the features the head reads above
    the other dimensions. With token_mse: the last token, which the head reads, counts on its own as well."""

    def loss(task: Task, run: Run, index: torch.Tensor) -> torch.Tensor:
        return feature_mse(task, run, index) + other(task, run, index)

    loss.__doc__ = f"feature_mse + {other.__name__}"
    return loss


def uninformed(task: Task, run: Run) -> torch.Tensor:
    """Cross-entropy of the head's logits against the uniform distribution over the classes: smallest (log of the
    number of classes) where the head cannot tell the classes apart. DiscoGP's completeness target for a circuit's
    complement, which should no longer do the task."""
    return -task.head(run.features).log_softmax(dim=1).mean()


LOSSES: dict[str, Loss] = {
    "ce": cross_entropy,
    "kl": kl,
    "mse": logit_mse,
    "features": feature_mse,
    "features+mse": features_and(logit_mse),
    "features+ce": features_and(cross_entropy),
    "tokens": token_mse,
    "features+tokens": features_and(token_mse),
}
OVER_TOKENS = frozenset({"tokens", "features+tokens"})
"""The losses that read the full model's states at every token (`Task.train_tokens`)."""
