"""Differentiable binary weight masks over one flat logit vector, and masked forwards without weight copies.

All masked weights of a model are laid end to end in the order of `LoadedModel.params`: one flat
float32 logit per weight, one flat frozen copy of the weights. A step samples Gumbel-sigmoid noise
into a reused buffer and forms w * hard(logit + noise) in one fused pass; the straight-through
gradient d sigmoid((logit + noise) / T) / d logit is recomputed in the backward pass, so nothing
per weight is stored beyond the noise buffer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import torch
from torch.func import functional_call

from circuitlib.types import MaskedParam


@dataclass(frozen=True)
class FlatLayout:
    """Where each masked parameter lives in a flat vector (in `params` order)."""

    params: tuple[MaskedParam, ...]

    @property
    def sizes(self) -> list[int]:
        return [p.numel for p in self.params]

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of `flat`, one per parameter, in its shape."""
        return {p.name: v.view(p.shape) for p, v in zip(self.params, flat.split(self.sizes))}

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors into one flat vector."""
        return torch.cat([tensors[p.name].reshape(-1) for p in self.params])


def init_logits(layout: FlatLayout, device: torch.device, mean: float = 2.7, std: float = 0.01, seed: int = 0) -> torch.Tensor:
    """One trainable float32 logit per masked weight, from N(mean, std) with a seeded generator: [total]."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(layout.total, generator=gen) * std + mean).to(device).requires_grad_(True)


def _forward(logits: torch.Tensor, noise: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    z = logits + torch.log(noise / (1 - noise))
    return torch.where(z > 0, weights, torch.zeros_like(weights))


def _backward(grad: torch.Tensor, logits: torch.Tensor, noise: torch.Tensor, weights: torch.Tensor, temperature: float) -> torch.Tensor:
    s = torch.sigmoid((logits + torch.log(noise / (1 - noise))) / temperature)
    return grad.float() * weights.float() * s * (1 - s) / temperature


@cache
def _kernels(fused: bool):
    if not fused:
        return _forward, _backward
    return torch.compile(_forward, dynamic=True), torch.compile(_backward, dynamic=True)


class _StraightThrough(torch.autograd.Function):
    """w * hard mask forward; straight-through Gumbel-sigmoid gradient to the logits backward."""

    @staticmethod
    def forward(ctx, logits, noise, weights, temperature, fused):
        ctx.save_for_backward(logits, noise, weights)
        ctx.temperature, ctx.fused = temperature, fused
        return _kernels(fused)[0](logits, noise, weights)

    @staticmethod
    def backward(ctx, grad):
        logits, noise, weights = ctx.saved_tensors
        return _kernels(ctx.fused)[1](grad, logits, noise, weights, ctx.temperature), None, None, None, None


def sample_masked_weights(
    logits: torch.Tensor,
    weights: torch.Tensor,
    noise: torch.Tensor,
    generator: torch.Generator,
    temperature: float,
    fused: bool = False,
) -> torch.Tensor:
    """w * m for a fresh Gumbel-sigmoid hard sample m (threshold 0.5), differentiable in the logits.

    `noise` is a reused float32 buffer of the logits' size; it must not be refilled before backward.
    """
    noise.uniform_(generator=generator).clamp_(1e-6, 1 - 1e-6)
    return _StraightThrough.apply(logits, noise, weights, temperature, fused)


def hard_masks(logits: torch.Tensor, layout: FlatLayout) -> dict[str, torch.Tensor]:
    """The deterministic mask: keep a weight where sigmoid(logit) > 0.5."""
    return layout.split(logits.detach() > 0)


def complement_masks(masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights a boolean mask drops."""
    return {name: ~m for name, m in masks.items()}


def count_kept(logits: torch.Tensor) -> tuple[int, int]:
    """(kept, total) under the deterministic mask."""
    return int((logits.detach() > 0).sum()), logits.numel()


def mean_keep_probability(logits: torch.Tensor) -> torch.Tensor:
    """mean(sigmoid(logits)) over all masked weights: the sparsity penalty."""
    return torch.sigmoid(logits).mean()


def flat_weights(model: torch.nn.Module, layout: FlatLayout) -> torch.Tensor:
    """One frozen flat copy of the masked weights, in the model's dtype and device."""
    named = dict(model.named_parameters())
    return torch.cat([named[p.name].detach().reshape(-1) for p in layout.params])


def apply_masks(model: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """w * m for each masked parameter, as new tensors (the model's own weights are untouched)."""
    named = dict(model.named_parameters())
    return {name: named[name].detach() * m.to(named[name].dtype) for name, m in masks.items()}


def call_with_weights(module: torch.nn.Module, weights: Mapping[str, torch.Tensor], prefix: str = "", **inputs):
    """Run `module` with some parameters replaced by `weights` (named for the full model; `prefix` is stripped)."""
    replaced = {name[len(prefix):] if prefix and name.startswith(prefix) else name: w for name, w in weights.items()}
    return functional_call(module, replaced, args=(), kwargs=inputs, strict=False)
