"""A linear classification head on the last non-pad token's hidden state, trained on cached features."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from circuitlib.masks import call_with_weights
from circuitlib.models import LoadedModel, token_id


@dataclass
class Tokenized:
    """Texts tokenized once, unpadded; batches are padded on the fly."""

    ids: list[list[int]]
    pad_id: int

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def max_width(self) -> int:
        """The longest row, in tokens."""
        return max(len(r) for r in self.ids)

    def batch(self, index: Sequence[int], device: torch.device, width: int | None = None) -> dict[str, torch.Tensor]:
        """Right-padded input_ids and attention_mask for the rows in `index` (to `width`, default their longest)."""
        rows = [self.ids[i] for i in index]
        width = width or max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            attention_mask[i, : len(r)] = 1
        return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}

    def batches(self, batch_size: int, device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
        """All rows in order, `batch_size` at a time."""
        for start in range(0, len(self), batch_size):
            yield self.batch(range(start, min(start + batch_size, len(self))), device)


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int = 64) -> Tokenized:
    """Tokenize every text once, truncated to `max_length` tokens."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return Tokenized([list(r) for r in ids], token_id(tokenizer, "pad"))


def final_hidden(
    lm: LoadedModel, inputs: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """Final hidden state [batch, width, d_model] at every position, optionally with `weights` swapped in."""
    base = lm.model.base_model
    if weights is None:
        return base(**inputs).last_hidden_state
    prefix = lm.model.base_model_prefix + "."
    return call_with_weights(base, weights, prefix=prefix, **inputs).last_hidden_state


def last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's state at its last non-pad token: [batch, width, d_model] -> [batch, d_model]."""
    last = attention_mask.sum(dim=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def last_token_features(
    lm: LoadedModel, inputs: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """Final hidden state [batch, d_model] at each row's last non-pad token, optionally with `weights` swapped in."""
    return last_token(final_hidden(lm, inputs, weights), inputs["attention_mask"]).float()


@torch.no_grad()
def cached_features(
    lm: LoadedModel, data: Tokenized, batch_size: int = 64, weights: Mapping[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """Features of every row in one pass: [n, d_model] float32."""
    return torch.cat([last_token_features(lm, b, weights) for b in data.batches(batch_size, lm.device)])


@torch.no_grad()
def cached_hidden(lm: LoadedModel, data: Tokenized, batch_size: int = 64) -> torch.Tensor:
    """Final hidden states of every row at every token in one pass: [n, max_width, d_model] float32, 0 past each
    row's end."""
    states = []
    for batch in data.batches(batch_size, lm.device):
        hidden = final_hidden(lm, batch).float() * batch["attention_mask"].unsqueeze(-1)
        states.append(F.pad(hidden, (0, 0, 0, data.max_width - hidden.shape[1])))
    return torch.cat(states)


def train_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    epochs: int = 400,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    l2: float = 0.0,
) -> torch.nn.Linear:
    """Fit a 2-way linear head on cached features (the LM is frozen, so its features never change).

    Features are standardised for training and the scaling is folded back into the returned layer. `l2` adds
    l2/2 * ||weight||² (over the standardised features) to the mean cross-entropy: ridge-penalised logistic regression.
    """
    gen = torch.Generator().manual_seed(seed)
    mean, std = features.mean(dim=0), features.std(dim=0).clamp_min(1e-6)
    features = (features - mean) / std
    head = torch.nn.Linear(features.shape[1], 2, device=features.device)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen).to(features.device) * 0.01)
        head.bias.zero_()
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr)
    n = features.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size].to(features.device)
            loss = F.cross_entropy(head(features[idx]), labels[idx])
            if l2:
                loss = loss + 0.5 * l2 * head.weight.square().sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        head.weight.div_(std)
        head.bias.sub_(head.weight @ mean)
    head.requires_grad_(False)
    return head
