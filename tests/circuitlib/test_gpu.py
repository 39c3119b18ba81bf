"""GPU checks, skipped where CUDA is absent (CI has none): Triton-fused mask kernels, discovery and edits on CUDA."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from circuitlib.circuits import Circuit
from circuitlib.discovery import DiscoveryConfig, discover
from circuitlib.editing import EditConfig, Editor, edit_requests, variant_masks
from circuitlib.masks import mean_keep_probability, sample_masked_weights
from circuitlib.models import load_model
from sweeps.config import load_preset

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_kernels_match_unfused_on_cuda(dtype: torch.dtype) -> None:
    n = 1_000_003  # not a multiple of any block size
    gen = torch.Generator(device=CUDA).manual_seed(0)
    logits = torch.randn(n, generator=gen, device=CUDA) * 2
    weights = torch.randn(n, generator=gen, device=CUDA).to(dtype)
    upstream = torch.randn(n, generator=gen, device=CUDA).to(dtype)
    results = []
    for fused in (False, True):
        leaf = logits.clone().requires_grad_(True)
        noise_gen = torch.Generator(device=CUDA).manual_seed(5)
        noise = torch.empty(n, device=CUDA)
        out = sample_masked_weights(leaf, weights, noise, noise_gen, 0.3, fused=fused, penalty=11.0)
        out.backward(upstream)
        results.append((out.detach(), leaf.grad, mean_keep_probability(leaf, fused=fused)))
    (out_plain, grad_plain, keep_plain), (out_fused, grad_fused, keep_fused) = results
    assert out_fused.dtype == dtype
    assert torch.equal(out_plain, out_fused)
    # Triton's exp and log differ from ATen's in the last bits; s(1 - s) / T amplifies that on a few elements.
    torch.testing.assert_close(grad_fused, grad_plain, rtol=2e-3, atol=1e-5)
    torch.testing.assert_close(keep_fused, keep_plain)
    assert 0.2 < (out_plain != 0).float().mean().item() < 0.8


def discovery_config(**overrides) -> DiscoveryConfig:
    values: dict[str, Any] = dict(
        densities=(0.8, 0.5, 0.2),
        max_steps=100,
        batch_size=8,
        lr=0.05,
        init_mean=1.0,
        init_std=0.5,
        head_epochs=20,
        eval_every=5,
        checkpoint_every=5,
        mask_seed=0,
        fused=True,
    )
    return DiscoveryConfig(**(values | overrides))


PAPER = load_preset("paper").discovery  # the path a `paper` sweep runs on a GPU: float32 weights, its precision


@pytest.mark.parametrize(
    ("precision", "compile_model"),
    sorted({("fp32", False), ("bf16", False), ("fp32", True), (PAPER.precision, PAPER.compile_model)}),
)
def test_discovery_on_cuda_is_reproducible_and_snapshots_below_targets(
    tiny_data, precision: str, compile_model: bool
) -> None:
    runs = []
    config = discovery_config(precision=precision, compile_model=compile_model)
    for _ in range(2):
        lm = load_model("tiny-gpt2", device=CUDA)  # as a sweep's discovery trial loads it: float32 weights
        runs.append(discover(lm, tiny_data, tiny_data, config, progress=False))
        assert lm.model.dtype == torch.float32
    first, second = runs
    assert [c.target_density for c in first.circuits] == [0.8, 0.5, 0.2]
    assert all(c.density <= c.target_density for c in first.circuits)
    assert all(np.array_equal(a.bits, b.bits) for a, b in zip(first.circuits, second.circuits, strict=True))
    assert [r["density"] for r in first.history] == [r["density"] for r in second.history]


def test_edits_on_cuda_stay_in_the_circuit_restore_exactly_and_match_cpu(requests_few, monkeypatch) -> None:
    cpu_lm, gpu_lm = load_model("tiny-gpt2", device="cpu"), load_model("tiny-gpt2", device=CUDA)
    rng = np.random.default_rng(0)
    circuit = Circuit.from_masks(cpu_lm.params, {p.name: rng.random(p.shape) < 0.3 for p in cpu_lm.params}, "tiny-gpt2")
    masks = variant_masks(circuit, "circuit")
    assert masks is not None
    config = EditConfig(lr=1.0, max_steps=3, stop_loss=0.0)
    original = {k: v.detach().clone() for k, v in gpu_lm.model.state_dict().items()}
    edited: list[dict[str, torch.Tensor]] = []
    real_restore = Editor.restore

    def spy(self):
        edited.append({k: v.detach().clone() for k, v in self.lm.model.state_dict().items()})
        real_restore(self)

    monkeypatch.setattr(Editor, "restore", spy)
    gpu = edit_requests(gpu_lm, requests_few, "circuit", masks, config, progress=False)
    cpu = edit_requests(cpu_lm, requests_few, "circuit", masks, config, progress=False)
    assert all(torch.equal(v, original[k]) for k, v in gpu_lm.model.state_dict().items())
    moved = 0
    for state in edited[: len(requests_few)]:
        for p in gpu_lm.params:
            keep = masks[p.name].to(CUDA)
            assert torch.equal(state[p.name][~keep], torch.zeros_like(state[p.name][~keep])), p.name
            moved += int((state[p.name][keep] != original[p.name][keep]).sum())
    assert moved > 0
    for g, c in zip(gpu, cpu, strict=True):
        assert g.nll_new_post == pytest.approx(c.nll_new_post, rel=1e-3, abs=1e-3)
        assert g.nll_new_pre == pytest.approx(c.nll_new_pre, rel=1e-4, abs=1e-4)
