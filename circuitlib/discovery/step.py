"""One mask step: sample the masked weights, run the masked model on a batch, and take an AdamW step on the logits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from circuitlib.classifier import final_hidden
from circuitlib.discovery.config import DiscoveryConfig
from circuitlib.discovery.losses import LOSSES, Run, uninformed
from circuitlib.discovery.schedules import penalty_weight
from circuitlib.discovery.state import DiscoveryState
from circuitlib.discovery.task import Task
from circuitlib.masks import FlatLayout, flat_weights, mean_keep_probability, sample_masked_weights
from circuitlib.models import LoadedModel

FUSE_ABOVE = 10_000_000  # below this, compiling the fused mask kernels costs more than it saves

MaskedHidden = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


def masked_hidden(
    lm: LoadedModel,
    layout: FlatLayout,
    precision: str = "fp32",
    compile_model: bool = False,
    grad_buffer: torch.Tensor | None = None,
) -> MaskedHidden:
    """(flat masked weights, batch) -> final hidden states [batch, width, d_model] (float32) with those weights
    swapped in.

    With `compile_model`, the whole forward (and so its backward) is one torch.compile'd graph: far fewer kernel
    launches and Python calls per step, which is what bounds a mask step on a GPU. Eager, `grad_buffer` (a reused
    tensor like the flat weights) receives the flat weights' gradient (`FlatLayout.split`).
    """

    def forward(flat: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = layout.split(flat, None if compile_model else grad_buffer)
        if precision == "bf16":
            # Vectors (norm weights, biases) back to float32: autocast runs normalisation in float32, which needs it.
            weights = {name: w if w.dim() > 1 else w.float() for name, w in weights.items()}
        with torch.autocast(lm.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return final_hidden(lm, inputs, weights).float()

    return torch.compile(forward) if compile_model else forward


@dataclass
class StepBuffers:
    """The flat per-weight tensors every mask step reuses: frozen weights, noise, the masked weights and, on CPU, their
    gradient.

    Reused rather than allocated per step: on CPU, touching 1e8 fresh floats costs more in page faults than the
    kernels that fill them. A GPU's caching allocator reuses memory without that cost, so there the gradient is not
    kept between steps (it would add to the peak memory).
    """

    weights: torch.Tensor
    noise: torch.Tensor
    masked: torch.Tensor
    grad: torch.Tensor | None

    @classmethod
    def for_run(cls, lm: LoadedModel, layout: FlatLayout, config: DiscoveryConfig) -> StepBuffers:
        weights = flat_weights(lm.model, layout, config.weights_dtype)
        grad = torch.empty_like(weights) if lm.device.type == "cpu" else None
        return cls(weights, torch.empty(layout.total, device=lm.device), torch.empty_like(weights), grad)


def complement_step(
    task: Task,
    state: DiscoveryState,
    config: DiscoveryConfig,
    buffers: StepBuffers,
    fused: bool,
    forward: MaskedHidden,
    inputs: dict[str, torch.Tensor],
) -> torch.Tensor:
    """The completeness term's backward into the logits' gradient; returns its (detached) value.

    The complement keeps a weight where the mask drops it: 1 - 1[l + g > 0] = 1[-l - g > 0], the same straight-through
    sample taken on the negated logits (whose gradient autograd negates back). Its noise is a fresh draw.
    """
    method = config.method
    complement = sample_masked_weights(
        -state.logits,
        buffers.weights,
        buffers.noise,
        state.noise_gen,
        method.temperature,
        fused,
        out=buffers.masked,
        noise=method.noise,
    )
    loss = config.completeness * uninformed(task, Run(forward(complement, inputs), inputs["attention_mask"]))
    loss.backward()
    return loss.detach()


def mask_step(
    lm: LoadedModel,
    task: Task,
    state: DiscoveryState,
    config: DiscoveryConfig,
    buffers: StepBuffers,
    fused: bool,
    forward: MaskedHidden | None = None,
    width: int | None = None,
) -> torch.Tensor:
    """One AdamW step of the mask logits on the next training batch; returns the (detached) loss.

    With `config.samples` > 1, that many Gumbel masks each run the batch and the step follows the mean of their
    losses (the gradients add up in the logits' `.grad`; each sample's backward runs before the next sample reuses
    the buffers). With `config.completeness`, the complement of the mask runs the batch too (`complement_step`).
    `forward` is a `masked_hidden` (default: an eager one), `width` a fixed width to pad batches to.
    """
    method = config.method  # derived from the schedule: read once a step
    index = state.next_batch(config.batch_size)
    inputs = task.train.batch(index.tolist(), lm.device, width)
    lam = penalty_weight(config, state.epoch)
    # The penalty lam * mean(sigmoid(logits)) enters through the mask's backward pass; here only its value (a pass
    # over every logit, skipped where there is no penalty).
    penalty = lam * mean_keep_probability(state.logits, fused) if lam else torch.zeros((), device=lm.device)
    forward = forward or masked_hidden(lm, state.layout, config.precision, grad_buffer=buffers.grad)
    state.optimizer.zero_grad(set_to_none=False)  # the mask backward adds into the kept gradient buffer
    task_loss, rows = torch.zeros((), device=lm.device), index.to(lm.device)
    for _ in range(config.samples):
        masked = sample_masked_weights(
            state.logits,
            buffers.weights,
            buffers.noise,
            state.noise_gen,
            method.temperature,
            fused,
            lam / config.samples,
            out=buffers.masked,
            noise=method.noise,
        )
        run = Run(forward(masked, inputs), inputs["attention_mask"])
        sample_loss = LOSSES[method.loss](task, run, rows) / config.samples
        sample_loss.backward()
        task_loss += sample_loss.detach()
    if config.completeness:
        task_loss += complement_step(task, state, config, buffers, fused, forward, inputs)
    state.optimizer.step()
    state.step += 1
    return task_loss + penalty
