"""What is fixed during a discovery: the tokenized rows, the head on the full model's features, its predictions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitlib.classifier import Tokenized, cached_features, cached_hidden, tokenize, train_head
from circuitlib.discovery.config import DiscoveryConfig
from circuitlib.discovery.losses import OVER_TOKENS
from circuitlib.errors import InputError
from circuitlib.models import LoadedModel
from circuitlib.types import ClassificationData

# mask_seed + this seeds the draw of the selection rows, clear of the noise (+1), batch order (+2) and cross-fit
# heads' (+1 + fold) streams
SELECT_STREAM = 104_729


@dataclass
class TokenTargets:
    """The full model's final hidden states at every token of the training rows, for the losses over tokens."""

    hidden: torch.Tensor  # [n_train, max_width, d_model], 0 past each row's end
    scale: torch.Tensor  # [d_model]: each dimension's spread over every token of every row

    @classmethod
    def of(cls, lm: LoadedModel, rows: Tokenized, batch_size: int) -> TokenTargets:
        hidden = cached_hidden(lm, rows, batch_size)
        real = torch.zeros(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        for i, ids in enumerate(rows.ids):
            real[i, : len(ids)] = True
        return cls(hidden, hidden[real].std(dim=0).clamp_min(1e-6))


@dataclass
class Task:
    """Everything about the task that is fixed during discovery: tokens, head, full-model predictions."""

    train: Tokenized
    eval: Tokenized
    eval_labels: torch.Tensor  # [n_eval]
    head: torch.nn.Linear
    train_full_logits: torch.Tensor  # [n_train, 2]
    eval_full_logits: torch.Tensor  # [n_eval, 2]
    train_full_features: torch.Tensor  # [n_train, d_model]
    feature_scale: torch.Tensor  # [d_model]
    select: torch.Tensor | None = None  # held-out rows (bool) that choose snapshots; the others report (select_rows)
    train_tokens: TokenTargets | None = None  # only for a loss over tokens (OVER_TOKENS)

    @property
    def train_targets(self) -> torch.Tensor:
        return self.train_full_logits.argmax(dim=1)

    @property
    def eval_full_preds(self) -> torch.Tensor:
        return self.eval_full_logits.argmax(dim=1)


def prepare_task(
    lm: LoadedModel, train: ClassificationData, eval_data: ClassificationData, config: DiscoveryConfig
) -> Task:
    """Cache full-model features once, train the head on them, and fix the full model's predictions."""
    device = lm.device
    train_tok = tokenize(lm.tokenizer, train.texts, config.max_length)
    eval_tok = tokenize(lm.tokenizer, eval_data.texts, config.max_length)
    train_features = cached_features(lm, train_tok, config.feature_batch_size)
    eval_features = cached_features(lm, eval_tok, config.feature_batch_size)
    labels = torch.tensor(train.labels, device=device)
    head = train_head(
        train_features, labels, config.head_epochs, config.head_lr, config.batch_size, config.mask_seed, config.head_l2
    )
    with torch.no_grad():
        train_full_logits = head(train_features)
        eval_full_logits = head(eval_features)
    if config.cross_fit:
        train_full_logits = out_of_fold_logits(train_features, labels, config)
    return Task(
        train_tok,
        eval_tok,
        torch.tensor(eval_data.labels, device=device),
        head,
        train_full_logits,
        eval_full_logits,
        train_features,
        train_features.std(dim=0).clamp_min(1e-6),
        selection_rows(len(eval_data), eval_data.name, config),
        TokenTargets.of(lm, train_tok, config.feature_batch_size) if config.method.loss in OVER_TOKENS else None,
    )


def selection_rows(n_eval: int, name: str, config: DiscoveryConfig) -> torch.Tensor | None:
    """Which held-out rows choose snapshots (`select_rows` of them, drawn with `mask_seed`); None when all do."""
    if not config.select_rows:
        return None
    if config.select_rows >= n_eval:
        raise InputError(
            f"select_rows {config.select_rows}: must be fewer than the {n_eval} held-out rows of "
            f"{name}, so some rows are left to report the snapshot's figures"
        )
    order = torch.randperm(n_eval, generator=torch.Generator().manual_seed(config.mask_seed + SELECT_STREAM))
    select = torch.zeros(n_eval, dtype=torch.bool)
    select[order[: config.select_rows]] = True
    return select


def out_of_fold_logits(features: torch.Tensor, labels: torch.Tensor, config: DiscoveryConfig) -> torch.Tensor:
    """The full model's head logits on each training row from a head that never saw that row's label.

    A head fitted on fewer rows than hidden dimensions separates its training rows perfectly, so its in-sample
    predictions are the true labels, and a mask trained on them learns the task rather than the model: it then
    disagrees with the full model exactly where the model errs. Out-of-fold predictions carry those errors.
    """
    fold = torch.arange(len(features), device=features.device) % config.cross_fit
    fold = fold[torch.randperm(len(features), generator=torch.Generator().manual_seed(config.mask_seed))]
    logits = torch.empty(len(features), 2, device=features.device)
    for k in range(config.cross_fit):
        held = fold == k
        head = train_head(
            features[~held],
            labels[~held],
            config.head_epochs,
            config.head_lr,
            config.batch_size,
            config.mask_seed + k + 1,
            config.head_l2,
        )
        with torch.no_grad():
            logits[held] = head(features[held])
    return logits
