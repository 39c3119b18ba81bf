"""Differentiable binary weight masks over one flat logit vector, and masked forwards without weight copies.

All masked weights of a model are laid end to end in the order of `LoadedModel.params`: one flat
float32 logit per weight, one flat frozen copy of the weights. A step samples Gumbel-sigmoid noise
into a reused buffer and forms w * hard(logit + noise) in one fused pass; the straight-through
gradient d sigmoid((logit + noise) / T) / d logit is recomputed in the backward pass, so nothing
per weight is stored beyond the noise buffer. The sparsity penalty's gradient is added in that
same backward pass, so the penalty costs no pass of its own over the logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

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

    def split(self, flat: torch.Tensor, grad_buffer: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Views of `flat`, one per parameter, in its shape.

        With `grad_buffer` (a reused tensor like `flat`), the backward gathers their gradients into it instead of
        into a fresh tensor: on CPU, the page faults of a fresh 1e8-element gradient cost four times the copy.
        """
        if grad_buffer is None:
            views = [v.view(p.shape) for p, v in zip(self.params, flat.split(self.sizes), strict=True)]
        else:
            views = _GatherGrad.apply(flat, grad_buffer, self.sizes, [p.shape for p in self.params])
        return {p.name: v for p, v in zip(self.params, views, strict=True)}


class _GatherGrad(torch.autograd.Function):
    """Views of `flat` split by `sizes` in `shapes`; the backward copies their gradients into a given buffer (each as it
    comes, whatever its strides: no temporary copies)."""

    @staticmethod
    def forward(ctx, flat, grad_buffer, sizes, shapes):
        ctx.grad_buffer, ctx.sizes = grad_buffer, sizes
        return tuple(v.view(shape) for v, shape in zip(flat.split(sizes), shapes, strict=True))

    @staticmethod
    def backward(ctx, *grads):
        for piece, grad in zip(ctx.grad_buffer.split(ctx.sizes), grads, strict=True):
            piece.view(grad.shape).copy_(grad)  # a piece without gradient arrives as zeros
        return ctx.grad_buffer, None, None, None


def init_logits(
    layout: FlatLayout, device: torch.device, mean: float = 2.7, std: float = 0.01, seed: int = 0
) -> torch.Tensor:
    """One trainable float32 logit per masked weight, from N(mean, std) with a seeded generator: [total]."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(layout.total, generator=gen) * std + mean).to(device).requires_grad_(True)


NOISE_CLAMP = 1e-6  # uniform noise is kept within [NOISE_CLAMP, 1 - NOISE_CLAMP], so its logistic transform is finite


def _logistic(noise: torch.Tensor) -> torch.Tensor:
    u = noise.clamp(NOISE_CLAMP, 1 - NOISE_CLAMP)
    return torch.log(u / (1 - u))


def _backward(
    grad: torch.Tensor,
    logits: torch.Tensor,
    gumbel: torch.Tensor,
    weights: torch.Tensor,
    temperature: float,
    penalty: torch.Tensor,
) -> torch.Tensor:
    s = torch.sigmoid((logits + gumbel) / temperature)
    p = torch.sigmoid(logits)
    return grad.float() * weights.float() * s * (1 - s) / temperature + penalty * p * (1 - p)


def _keep_probability(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits).mean()


def _forward_into(out: torch.Tensor, logits: torch.Tensor, noise: torch.Tensor, weights: torch.Tensor) -> None:
    """w * hard mask into `out`; the uniform `noise` becomes its logistic transform in place, which the backward
    reads instead of recomputing the logarithm (a third of the backward's time on CPU)."""
    gumbel = _logistic(noise)
    noise.copy_(gumbel)
    out.copy_(torch.where(logits + gumbel > 0, weights, torch.zeros_like(weights)))


def _backward_into(
    grad_logits: torch.Tensor,
    grad: torch.Tensor,
    logits: torch.Tensor,
    gumbel: torch.Tensor,
    weights: torch.Tensor,
    temperature: float,
    penalty: torch.Tensor,
) -> None:
    grad_logits.add_(_backward(grad, logits, gumbel, weights, temperature, penalty))


@dataclass(frozen=True)
class _Kernels:
    """The four kernels, eager or compiled by torch.compile; the signatures of the functions above."""

    forward_into: Callable[..., Any]
    backward: Callable[..., Any]
    backward_into: Callable[..., Any]
    keep_probability: Callable[..., Any]


@cache
def _kernels(fused: bool) -> _Kernels:
    kernels = (_forward_into, _backward, _backward_into, _keep_probability)
    if fused:
        kernels = tuple(torch.compile(k, dynamic=True) for k in kernels)
    return _Kernels(*kernels)


class _StraightThrough(torch.autograd.Function):
    """w * hard mask forward; straight-through Gumbel-sigmoid gradient (plus the penalty's) to the logits backward.

    Forward writes into the given `out` buffer and backward adds into an existing `logits.grad` in place: fresh
    tensors of 1e8 elements cost more in page faults than the kernels that fill them.
    """

    @staticmethod
    def forward(ctx, logits, noise, weights, temperature, fused, penalty, out):
        _kernels(fused).forward_into(out, logits, noise, weights)  # noise now holds the logistic noise
        ctx.save_for_backward(logits, noise, weights, penalty)
        ctx.temperature, ctx.fused, ctx.leaf = temperature, fused, logits
        ctx.mark_dirty(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        logits, gumbel, weights, penalty = ctx.saved_tensors
        kernels = _kernels(ctx.fused)
        existing = ctx.leaf.grad if ctx.leaf.is_leaf else None
        if existing is not None and existing.shape == logits.shape and existing.is_contiguous():
            kernels.backward_into(existing, grad, logits, gumbel, weights, ctx.temperature, penalty)
            grad_logits = None  # already accumulated
        else:
            grad_logits = kernels.backward(grad, logits, gumbel, weights, ctx.temperature, penalty)
        return grad_logits, None, None, None, None, None, None


def sample_masked_weights(
    logits: torch.Tensor,
    weights: torch.Tensor,
    noise_buffer: torch.Tensor,
    generator: torch.Generator,
    temperature: float,
    fused: bool = False,
    penalty: float = 0.0,
    out: torch.Tensor | None = None,
    noise: bool = True,
) -> torch.Tensor:
    """w * m for a fresh Gumbel-sigmoid hard sample m (threshold 0.5), differentiable in the logits.

    The output has the dtype of `weights` (float32, or bfloat16 for mixed precision); with `out` (a reused
    buffer like `weights`) it is written there. `noise_buffer` is a reused float32 buffer of the logits' size; the
    sample leaves the logistic transform of its uniform noise there, and it must not be refilled before backward.
    With `noise=False` the sample is the deterministic mask (logit > 0).
    The backward pass also adds the gradient of `penalty * mean(sigmoid(logits))`
    to the logits: the sparsity term of the discovery loss, whose value `mean_keep_probability` gives. Where the
    logits (a leaf) already have a `.grad`, backward adds into it in place, as autograd would.
    """
    if noise:
        noise_buffer.uniform_(generator=generator)
    else:  # logistic(0.5) = 0: the deterministic mask, with the same straight-through gradient
        noise_buffer.fill_(0.5)
    scale = torch.tensor(penalty / logits.numel(), dtype=torch.float32, device=logits.device)
    # detach: a buffer returned by an earlier step carries that step's (freed) graph
    out = torch.empty_like(weights) if out is None else out.detach()
    return _StraightThrough.apply(logits, noise_buffer, weights, temperature, fused, scale, out)


def hard_masks(logits: torch.Tensor, layout: FlatLayout) -> dict[str, torch.Tensor]:
    """The deterministic mask: keep a weight where sigmoid(logit) > 0.5."""
    return layout.split(logits.detach() > 0)


def complement_masks(masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights a boolean mask drops."""
    return {name: ~m for name, m in masks.items()}


COUNT_CHUNK = 1 << 22  # counted a chunk at a time: a fresh 1e8-element bool tensor costs more in page faults


def count_kept(logits: torch.Tensor) -> tuple[int, int]:
    """(kept, total) under the deterministic mask."""
    flat = logits.detach().reshape(-1)
    # count_nonzero, not sum: summing a bool chunk widens it to int64 first, about 7x slower on CPU at 1e8 logits
    return sum(int(torch.count_nonzero(chunk > 0)) for chunk in flat.split(COUNT_CHUNK)), flat.numel()


def mean_keep_probability(logits: torch.Tensor, fused: bool = False) -> torch.Tensor:
    """mean(sigmoid(logits)) over all masked weights: the sparsity penalty (no gradient; see sample_masked_weights)."""
    with torch.no_grad():
        return _kernels(fused).keep_probability(logits.detach())


QUANTILE_SAMPLE = 1_000_000  # logits sampled to place the density threshold; exact below this many


def density_sample(total: int, device: torch.device) -> torch.Tensor | None:
    """Fixed indices of the logits that estimate the density threshold (None: use them all)."""
    if total <= QUANTILE_SAMPLE:
        return None
    return torch.randint(0, total, (QUANTILE_SAMPLE,), generator=torch.Generator().manual_seed(0)).to(device)


def density_margin(density: float, sample: torch.Tensor | None) -> float:
    """How far below a density to aim so that the sampled threshold keeps the true density at or below it."""
    return 0.0 if sample is None else 4 * (density * (1 - density) / sample.numel()) ** 0.5


@torch.no_grad()
def shift_to_density(logits: torch.Tensor, density: float, sample: torch.Tensor | None = None) -> None:
    """Shift every logit by one offset so that (about) `density` of them are positive: an exact density control."""
    values = logits.detach() if sample is None else logits.detach()[sample]
    drop = min(values.numel() - 1, max(0, math.ceil((1.0 - density) * values.numel() - 1e-9)))  # kept <= density
    ordered = values.kthvalue(drop + 1).values if drop > 0 else values.min() - 1.0
    below = values.kthvalue(drop).values if drop > 0 else ordered - 1.0
    logits.sub_((ordered + below) / 2)


def flat_weights(model: torch.nn.Module, layout: FlatLayout, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One frozen flat copy of the masked weights on the model's device, in `dtype` (default: the model's)."""
    named = dict(model.named_parameters())
    flat = torch.cat([named[p.name].detach().reshape(-1) for p in layout.params])
    return flat if dtype is None else flat.to(dtype)


def apply_masks(model: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """w * m for each masked parameter, as new tensors (the model's own weights are untouched)."""
    named = dict(model.named_parameters())
    return {name: named[name].detach() * m.to(named[name].dtype) for name, m in masks.items()}


def call_with_weights(module: torch.nn.Module, weights: Mapping[str, torch.Tensor], prefix: str = "", **inputs):
    """Run `module` with some parameters replaced by `weights` (named for the full model; `prefix` is stripped)."""
    replaced = {name[len(prefix) :] if prefix and name.startswith(prefix) else name: w for name, w in weights.items()}
    return functional_call(module, replaced, args=(), kwargs=inputs, strict=False)
