"""Flat masks: the Gumbel-sigmoid straight-through sample, its gradient and distribution, and masked forwards."""

from __future__ import annotations

import pytest
import torch

from circuitlib.masks import (
    NOISE_CLAMP,
    FlatLayout,
    apply_masks,
    call_with_weights,
    complement_masks,
    count_kept,
    flat_weights,
    hard_masks,
    init_logits,
    mean_keep_probability,
    sample_masked_weights,
)
from circuitlib.types import MaskedParam

CLAMP = NOISE_CLAMP  # sample_masked_weights keeps the uniform noise within [CLAMP, 1 - CLAMP]


def expected_noise(generator: torch.Generator, n: int) -> torch.Tensor:
    """The uniform draw sample_masked_weights makes from a generator in this state, clamped like it."""
    return torch.empty(n).uniform_(generator=generator).clamp_(CLAMP, 1 - CLAMP)


def twin_generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)


def straight_through_case(n: int = 997, seed: int = 0):
    """Logits spread around 0, weights, and an upstream gradient (a non-multiple of the vector width)."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, generator=gen) * 2).requires_grad_(True)
    weights = torch.randn(n, generator=gen)
    upstream = torch.randn(n, generator=gen)
    return logits, weights, upstream


def analytic(logits, weights, upstream, u, temperature):
    """Forward w * 1[sigmoid((l + log(u/(1-u))) / T) > 0.5]; gradient upstream * w * s(1 - s) / T, by hand."""
    logit = logits.detach().double()
    z = logit + torch.log(u.double()) - torch.log1p(-u.double())
    s = torch.sigmoid(z / temperature)
    forward = torch.where(s > 0.5, weights.double(), torch.zeros((), dtype=torch.float64))
    grad = upstream.double() * weights.double() * s * (1 - s) / temperature
    return forward, grad


@pytest.mark.parametrize("temperature", [1.0, 0.3, 0.01])
def test_straight_through_forward_and_gradient_match_the_formula(temperature: float) -> None:
    logits, weights, upstream = straight_through_case()
    gen, twin = twin_generators(7)
    noise = torch.empty_like(logits)
    out = sample_masked_weights(logits, weights, noise, gen, temperature)
    out.backward(upstream)
    u = expected_noise(twin, logits.numel())
    forward, grad = analytic(logits, weights, upstream, u, temperature)
    kept = forward != 0
    assert torch.equal(out.detach()[kept], weights[kept])  # kept weights pass through bit for bit
    assert torch.equal(out.detach()[~kept], torch.zeros(int((~kept).sum())))
    assert 0.2 < kept.float().mean() < 0.8
    # float32: s(1 - s) loses digits where s is near 1 and sigmoid saturates earlier; the error scales as 1/T.
    assert logits.grad is not None
    torch.testing.assert_close(logits.grad.double(), grad, rtol=1e-4, atol=1e-6 / temperature)
    assert (logits.grad != 0).sum() > 0


def test_gradient_of_a_sample_with_sharp_temperature_is_zero_away_from_the_threshold() -> None:
    logits = torch.full((100,), 20.0, requires_grad=True)
    out = sample_masked_weights(logits, torch.ones(100), torch.empty(100), torch.Generator().manual_seed(0), 0.01)
    out.sum().backward()
    assert torch.equal(out.detach(), torch.ones(100))
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros(100))


def test_sample_is_reproducible_from_the_generator_and_fresh_each_call() -> None:
    logits, weights, _ = straight_through_case(n=4096)
    gen_a, gen_b = twin_generators(3)
    noise = torch.empty_like(logits)
    first = sample_masked_weights(logits, weights, noise, gen_a, 0.01).detach().clone()
    second = sample_masked_weights(logits, weights, noise, gen_a, 0.01).detach().clone()
    assert torch.equal(first, sample_masked_weights(logits, weights, torch.empty_like(logits), gen_b, 0.01).detach())
    assert not torch.equal(first, second)


def test_hard_sample_is_bernoulli_of_sigmoid_logit() -> None:
    levels = torch.tensor([-2.0, -0.7, 0.0, 0.4, 1.5, 3.0])
    per_level, draws = 5000, 8
    logits = levels.repeat_interleave(per_level).requires_grad_(True)
    weights = torch.ones_like(logits)
    noise = torch.empty_like(logits)
    gen = torch.Generator().manual_seed(11)
    kept = torch.zeros(len(levels))
    for _ in range(draws):
        mask = sample_masked_weights(logits, weights, noise, gen, 0.01).detach()
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        kept += mask.view(len(levels), per_level).mean(dim=1)
    frequency = kept / draws
    p = torch.sigmoid(levels)
    sigma = (p * (1 - p) / (per_level * draws)).sqrt()
    assert torch.all((frequency - p).abs() <= 5 * sigma + 1e-3), (frequency, p)


@pytest.mark.parametrize("temperature", [1.0, 0.01])
def test_penalty_gradient_is_added_in_the_backward_pass(temperature: float) -> None:
    """sample_masked_weights(..., penalty=lam) gives the gradient of out . upstream + lam * mean(sigmoid(logits))."""
    logits, weights, upstream = straight_through_case()
    lam = 37.0
    grads = []
    for folded in (True, False):
        leaf = logits.detach().clone().requires_grad_(True)
        gen = torch.Generator().manual_seed(7)
        penalty = lam if folded else 0.0
        out = sample_masked_weights(leaf, weights, torch.empty_like(leaf), gen, temperature, penalty=penalty)
        loss = (out * upstream).sum() + (0.0 if folded else lam * torch.sigmoid(leaf).mean())
        loss.backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    with_penalty_only = logits.detach().clone().requires_grad_(True)
    sample_masked_weights(
        with_penalty_only,
        weights,
        torch.empty(logits.numel()),
        torch.Generator().manual_seed(7),
        temperature,
        penalty=lam,
    ).backward(torch.zeros_like(upstream))
    p = torch.sigmoid(logits.detach())
    torch.testing.assert_close(with_penalty_only.grad, lam * p * (1 - p) / logits.numel())


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_out_buffer_and_an_existing_gradient_are_used_in_place(fused: bool) -> None:
    """With `out` the sample lands in that buffer; an existing logits.grad is added to in place, as autograd would."""
    logits, weights, upstream = straight_through_case()
    fresh = logits.detach().clone().requires_grad_(True)
    expected = sample_masked_weights(
        fresh, weights, torch.empty_like(logits), torch.Generator().manual_seed(7), 0.3, fused, penalty=5.0
    )
    expected.backward(upstream)
    out = torch.empty_like(weights)
    previous = torch.randn(logits.shape)
    logits.grad = previous.clone()
    buffer = logits.grad
    got = sample_masked_weights(
        logits, weights, torch.empty_like(logits), torch.Generator().manual_seed(7), 0.3, fused, penalty=5.0, out=out
    )
    assert got.data_ptr() == out.data_ptr() and torch.equal(got.detach(), expected.detach())
    got.backward(upstream)
    assert logits.grad is buffer and fresh.grad is not None
    torch.testing.assert_close(logits.grad, previous + fresh.grad)


def test_bfloat16_weights_give_a_bfloat16_sample_and_a_float32_gradient() -> None:
    logits, weights, upstream = straight_through_case()
    noise, gen = torch.empty_like(logits), torch.Generator().manual_seed(7)
    out = sample_masked_weights(logits, weights.bfloat16(), noise, gen, 1.0)
    assert out.dtype == torch.bfloat16
    kept = out != 0
    assert torch.equal(out[kept], weights.bfloat16()[kept])
    out.backward(upstream.bfloat16())
    assert logits.grad is not None and logits.grad.dtype == torch.float32 and (logits.grad != 0).any()


@pytest.mark.slow
def test_fused_kernels_match_unfused() -> None:
    for n in (1000, 4099):  # two sizes: the compiled kernels are dynamic in the length
        logits, weights, upstream = straight_through_case(n=n, seed=n)
        results = []
        for fused in (False, True):
            gen = torch.Generator().manual_seed(5)
            leaf = logits.detach().clone().requires_grad_(True)
            out = sample_masked_weights(leaf, weights, torch.empty(n), gen, 0.3, fused=fused, penalty=11.0)
            out.backward(upstream)
            results.append((out.detach(), leaf.grad, mean_keep_probability(leaf, fused=fused)))
        (out_plain, grad_plain, keep_plain), (out_fused, grad_fused, keep_fused) = results
        assert torch.equal(out_plain, out_fused)
        torch.testing.assert_close(grad_fused, grad_plain, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(keep_fused, keep_plain)
        assert (grad_plain != 0).any()


# --- layout, logits and deterministic masks ---------------------------------------------------------

PARAMS = (
    MaskedParam("a.weight", (3, 4), "attention", 0),
    MaskedParam("a.bias", (4,), "attention", 0),
    MaskedParam("n.weight", (), "norm", 1),
)


def test_layout_split_and_flatten_round_trip() -> None:
    layout = FlatLayout(PARAMS)
    assert layout.sizes == [12, 4, 1] and layout.total == 17
    flat = torch.arange(17.0)
    parts = layout.split(flat)
    assert [tuple(v.shape) for v in parts.values()] == [(3, 4), (4,), ()]
    assert parts["a.bias"].tolist() == [12.0, 13.0, 14.0, 15.0]
    assert parts["a.weight"].data_ptr() == flat.data_ptr()  # views, not copies
    assert torch.equal(torch.cat([parts[p.name].reshape(-1) for p in PARAMS]), flat)


def test_split_gathers_its_gradient_into_a_given_buffer_with_the_same_values() -> None:
    """The reused gradient buffer of a CPU mask step (FlatLayout.split's grad_buffer) changes where the flat gradient
    lives, not its value; a piece the loss does not use gets zeros."""
    layout = FlatLayout(
        (
            MaskedParam("a.weight", (3, 4), "mlp", 0),
            MaskedParam("a.bias", (4,), "mlp", 0),
            MaskedParam("b.weight", (2,), "norm", 0),
        )
    )
    grads = []
    buffer = torch.full((layout.total,), float("nan"))
    for grad_buffer in (None, buffer):
        flat = torch.randn(layout.total, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        source = flat * 1.5  # a non-leaf, as the masked weights are
        parts = layout.split(source, grad_buffer)
        assert parts["a.weight"].shape == (3, 4) and parts["a.bias"].data_ptr() == source.data_ptr() + 12 * 4
        (parts["a.weight"].sin().sum() + (parts["a.bias"] ** 2).sum()).backward()
        assert flat.grad is not None
        grads.append(flat.grad)
    assert torch.equal(grads[0], grads[1])
    assert torch.equal(buffer[16:], torch.zeros(2)) and torch.equal(buffer * 1.5, grads[0])


def test_init_logits_are_seeded_normal_float32_leaves() -> None:
    layout = FlatLayout((MaskedParam("w", (200, 100), "mlp", 0),))
    a = init_logits(layout, torch.device("cpu"), mean=2.7, std=0.01, seed=4)
    assert a.dtype == torch.float32 and a.requires_grad and a.is_leaf and a.shape == (20000,)
    assert torch.equal(a, init_logits(layout, torch.device("cpu"), mean=2.7, std=0.01, seed=4))
    assert not torch.equal(a, init_logits(layout, torch.device("cpu"), mean=2.7, std=0.01, seed=5))
    assert abs(a.mean().item() - 2.7) < 1e-3 and abs(a.std().item() - 0.01) < 1e-3


def test_hard_masks_complement_and_counts() -> None:
    layout = FlatLayout(PARAMS)
    logits = torch.linspace(-1, 1, 17).requires_grad_(True)  # no entry exactly 0
    masks = hard_masks(logits, layout)
    assert all(m.dtype == torch.bool for m in masks.values())
    assert torch.equal(torch.cat([masks[p.name].reshape(-1) for p in PARAMS]), logits.detach() > 0)
    comp = complement_masks(masks)
    for name in masks:
        assert torch.equal(comp[name], ~masks[name])
    assert count_kept(logits) == (8, 17)
    torch.testing.assert_close(mean_keep_probability(logits), torch.sigmoid(logits).mean())


def test_apply_masks_multiplies_without_touching_the_model(tiny_lm, helpers) -> None:
    before = helpers.clone_state(tiny_lm.model)
    layout = FlatLayout(tuple(tiny_lm.params))
    masks = hard_masks(torch.randn(layout.total, generator=torch.Generator().manual_seed(0)), layout)
    applied = apply_masks(tiny_lm.model, masks)
    named = dict(tiny_lm.model.named_parameters())
    for name, m in masks.items():
        assert torch.equal(applied[name][m], named[name][m])
        assert torch.all(applied[name][~m] == 0)
    assert helpers.differing(tiny_lm.model, before) == []


def test_flat_weights_is_a_detached_copy_in_layout_order(tiny_lm) -> None:
    layout = FlatLayout(tuple(tiny_lm.params))
    flat = flat_weights(tiny_lm.model, layout)
    named = dict(tiny_lm.model.named_parameters())
    assert flat.shape == (layout.total,) and not flat.requires_grad
    for name, view in layout.split(flat).items():
        assert torch.equal(view, named[name])
    flat.zero_()
    assert named[tiny_lm.params[0].name].abs().sum() > 0


def test_call_with_weights_swaps_parameters_functionally(tiny_lm, helpers) -> None:
    model = tiny_lm.model
    ids = torch.tensor([tiny_lm.tokenizer("the cat sat")["input_ids"]])
    reference = model(ids).logits
    before = helpers.clone_state(model)
    named = dict(model.named_parameters())
    same = {p.name: named[p.name].detach().clone() for p in tiny_lm.params}
    assert torch.equal(call_with_weights(model, same, input_ids=ids).logits, reference)
    base = model.base_model
    hidden = call_with_weights(base, same, prefix="transformer.", input_ids=ids).last_hidden_state
    assert torch.equal(hidden, base(input_ids=ids).last_hidden_state)
    c_proj = "transformer.h.1.mlp.c_proj.weight"
    zeroed = dict(same, **{c_proj: torch.zeros_like(same[c_proj])})
    changed = call_with_weights(model, zeroed, input_ids=ids).logits
    assert not torch.allclose(changed, reference)
    # The same as zeroing that weight in place.
    with torch.no_grad():
        named["transformer.h.1.mlp.c_proj.weight"].zero_()
    torch.testing.assert_close(changed, model(ids).logits, rtol=0, atol=0)
    with torch.no_grad():
        named["transformer.h.1.mlp.c_proj.weight"].copy_(before["transformer.h.1.mlp.c_proj.weight"])
    assert helpers.differing(model, before) == []


def test_masked_forward_backward_reaches_every_logit_through_the_model(tiny_lm) -> None:
    """One discovery-style step: gradients flow from the model's output back into the flat logits."""
    layout = FlatLayout(tuple(tiny_lm.params))
    logits = init_logits(layout, torch.device("cpu"), mean=0.0, std=0.1, seed=0)
    weights = flat_weights(tiny_lm.model, layout)
    masked = sample_masked_weights(logits, weights, torch.empty(layout.total), torch.Generator().manual_seed(0), 1.0)
    ids = torch.tensor([tiny_lm.tokenizer("the cat sat")["input_ids"]])
    out = call_with_weights(tiny_lm.model, layout.split(masked), input_ids=ids).logits
    out.square().mean().backward()
    assert logits.grad is not None and logits.grad.shape == logits.shape
    named = dict(tiny_lm.model.named_parameters())
    for name, grad in layout.split(logits.grad).items():
        # every parameter's logits receive a gradient, except where the weights are all 0 (GPT-2's biases at init)
        assert (grad.abs().sum() > 0) == bool(named[name].any()), name
    assert all(p.grad is None for p in tiny_lm.model.parameters())
