"""Task importance of each masked weight, to start a mask from an informed order instead of a random one.

On a fragile model (smollm2-135m loses a binary task once 5% of its weights are dropped at random) a
mask that starts from identical logits drops random weights first and breaks the task before it learns
anything. The importance init orders weights by |w| * ||x|| (Wanda, Sun et al. 2023) with x the
weight's input on the task's own texts, ranked within each output row; vectors (norm weights, biases)
rank first. Discovery then refines this order on the task loss (docs/design.md §3.3).
"""

from __future__ import annotations

import torch

from circuitlib.classifier import Tokenized
from circuitlib.masks import FlatLayout
from circuitlib.models import LoadedModel


@torch.no_grad()
def input_norms(lm: LoadedModel, data: Tokenized, batch_size: int) -> dict[str, torch.Tensor]:
    """For each masked matrix: the L2 norm over the task's non-pad tokens of each input feature, [in_features]."""
    modules = dict(lm.model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    current: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].float() * current["mask"].unsqueeze(-1)
            sums[name] = sums.get(name, 0) + x.square().sum(dim=(0, 1))

        return hook

    hooks = [
        modules[p.name.rsplit(".", 1)[0]].register_forward_pre_hook(hook_for(p.name))
        for p in lm.params
        if len(p.shape) == 2
    ]
    try:
        for batch in data.batches(batch_size, lm.device):
            current["mask"] = batch["attention_mask"].float()
            lm.model.base_model(**batch)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: total.sqrt() for name, total in sums.items()}


@torch.no_grad()
def importance_offsets(
    lm: LoadedModel, data: Tokenized, layout: FlatLayout, spread: float, batch_size: int = 64
) -> torch.Tensor:
    """Offsets [total] in [-spread, spread] to add to the initial logits, linear in each weight's rank in its row.

    Ranks repeat across rows, so the seeded N(init_mean, init_std) logits they are added to break the ties.
    nn.Linear stores [out, in]; other matrices (GPT-2's Conv1D) store [in, out] and are ranked transposed.
    """
    named, modules = dict(lm.model.named_parameters()), dict(lm.model.named_modules())
    norms = input_norms(lm, data, batch_size)
    parts = []
    for p in layout.params:
        w = named[p.name].detach().float()
        if len(p.shape) != 2:
            parts.append(torch.ones(p.numel, device=w.device))
            continue
        transposed = not isinstance(modules[p.name.rsplit(".", 1)[0]], torch.nn.Linear)
        score = (w.T if transposed else w).abs() * norms[p.name]
        rank = score.argsort(dim=1).argsort(dim=1).float().add_(0.5).div_(score.shape[1])
        parts.append((rank.T if transposed else rank).reshape(-1))
    return (torch.cat(parts) * 2 - 1) * spread
