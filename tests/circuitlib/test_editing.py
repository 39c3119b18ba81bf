"""Constrained knowledge edits on the tiny GPT-2: what each variant may change, exact restoration, the NLL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import circuitlib.editing as editing
from circuitlib import circuits
from circuitlib.circuits import Circuit
from circuitlib.editing import (
    EditConfig,
    Editor,
    RequestResult,
    edit_requests,
    masked_weights,
    neighbor_prompts,
    results_as_rows,
    summarize,
    target_nll,
    variant_masks,
)
from circuitlib.errors import InputError
from circuitlib.types import EditRequest, Variant

# A large lr so the clamp at max_change binds; stop_loss 0 so every request takes every step.
CLAMPED = EditConfig(lr=1.0, max_steps=3, stop_loss=0.0, max_change=5e-4)


def make_circuit(lm, density: float = 0.3, seed: int = 0) -> Circuit:
    rng = np.random.default_rng(seed)
    masks = {p.name: rng.random(p.shape) < density for p in lm.params}
    return Circuit.from_masks(lm.params, masks, lm.model_id, target_density=density)


def hand_nll(lm, prompt: str, target: str) -> float:
    """Mean NLL of the tokens of " " + target after prompt, from one unpadded forward and log_softmax by hand."""
    prompt_ids = lm.tokenizer(prompt)["input_ids"]
    target_ids = lm.tokenizer(" " + target, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + target_ids])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0].double()
    logp = logits - logits.exp().sum(dim=-1, keepdim=True).log()
    total = sum(-logp[len(prompt_ids) - 1 + j, t].item() for j, t in enumerate(target_ids))
    return total / len(target_ids)


def test_target_nll_equals_a_hand_computation(tiny_lm) -> None:
    prompts = ["A cat is a kind of", "Paris is in", "The quick brown fox jumps over the lazy"]
    targets = ["animal", "France", "dog and cat"]
    assert all(len(tiny_lm.tokenizer(" " + t, add_special_tokens=False)["input_ids"]) > 3 for t in targets)
    got = target_nll(tiny_lm, prompts, targets)
    assert got.shape == (3,) and got.dtype == torch.float32
    for value, prompt, target in zip(got.tolist(), prompts, targets, strict=True):
        assert value == pytest.approx(hand_nll(tiny_lm, prompt, target), rel=1e-5, abs=1e-5)
    # Each pair's NLL does not depend on what else is in the batch (padding is ignored).
    assert got[1].item() == pytest.approx(target_nll(tiny_lm, prompts[1:2], targets[1:2])[0].item(), rel=1e-5)


# --- what each variant may change, and restoration ------------------------------------------------


def record_edits(monkeypatch, helpers) -> tuple[list, list]:
    """Spy on Editor.edit: the model's state as each request's edit starts and as it ends."""
    starts, ends = [], []
    real = Editor.edit

    def spy(self, request):
        starts.append(helpers.clone_state(self.lm.model))
        out = real(self, request)
        ends.append(helpers.clone_state(self.lm.model))
        return out

    monkeypatch.setattr(Editor, "edit", spy)
    return starts, ends


def within(after: torch.Tensor, before: torch.Tensor, eps: float) -> bool:
    """|after - before| <= eps, allowing float32 rounding (of eps itself and of before + change)."""
    slack = (before.abs().double() + after.abs().double() + eps) * torch.finfo(torch.float32).eps
    return bool(torch.all((after.double() - before.double()).abs() <= eps + slack))


@pytest.mark.parametrize("variant", ["circuit", "complement", "random", "full"])
def test_edits_change_only_what_the_variant_allows_and_restore_exactly(
    tiny_lm, requests_few, monkeypatch, helpers, variant: Variant
) -> None:
    original = helpers.clone_state(tiny_lm.model)
    circuit = make_circuit(tiny_lm)
    masks = variant_masks(circuit, variant, seed=3)
    starts, ends = record_edits(monkeypatch, helpers)
    results = edit_requests(tiny_lm, requests_few, variant, masks, CLAMPED, progress=False)
    assert helpers.differing(tiny_lm.model, original) == []  # the model is back, bit for bit
    assert [r.case_id for r in results] == [0, 1, 2] and all(r.steps == CLAMPED.max_steps for r in results)
    assert len(starts) == len(ends) == len(requests_few)

    masked_names = {p.name for p in tiny_lm.params}
    # Before each request the model is the same variant model: the original with the weights outside the mask zeroed.
    for start in starts:
        assert all(torch.equal(start[k], starts[0][k]) for k in start)
    for name, w in original.items():
        if masks is not None and name in masked_names:
            assert torch.equal(starts[0][name], torch.where(masks[name], w, torch.zeros_like(w))), name
        else:
            assert torch.equal(starts[0][name], w), name

    all_params = dict(tiny_lm.model.named_parameters(remove_duplicate=False))
    eps = CLAMPED.max_change
    for start, end in zip(starts, ends, strict=True):
        changed_somewhere = 0.0
        for name, before in start.items():
            after = end[name]
            if masks is None:
                editable = torch.full_like(before, name in all_params, dtype=torch.bool)  # every weight, tied included
            elif name in masked_names:
                editable = masks[name]
            else:
                editable = torch.zeros_like(before, dtype=torch.bool)  # embeddings, final norm: never edited
            assert torch.equal(after[~editable], before[~editable]), f"{variant}: {name} changed outside its mask"
            assert within(after[editable], before[editable], eps), f"{variant}: {name} moved more than {eps}"
            if editable.any():
                changed_somewhere = max(changed_somewhere, (after[editable] - before[editable]).abs().max().item())
        assert changed_somewhere > eps / 2  # the edit did move weights, as far as the clamp lets it


def test_circuit_and_complement_edits_keep_the_other_side_at_zero(tiny_lm, requests_few, monkeypatch, helpers) -> None:
    circuit = make_circuit(tiny_lm, density=0.5, seed=1)
    _, ends = record_edits(monkeypatch, helpers)
    for variant in ("circuit", "complement"):
        edit_requests(tiny_lm, requests_few[:1], variant, variant_masks(circuit, variant), CLAMPED, progress=False)
    circuit_end, complement_end = ends
    for name in (p.name for p in tiny_lm.params):
        m = circuit.mask(name)
        assert torch.all(circuit_end[name][~m] == 0)  # outside the circuit: still zero after the circuit edit
        assert torch.all(complement_end[name][m] == 0)  # inside the circuit: still zero after the complement edit
        assert torch.any(circuit_end[name][m] != 0) or not torch.any(tiny_lm.model.get_parameter(name)[m] != 0)


def test_state_is_restored_even_when_an_edit_fails(tiny_lm, requests_few, monkeypatch, helpers) -> None:
    original = helpers.clone_state(tiny_lm.model)
    calls = []
    real = editing.score_request

    def failing(lm, request, neighbors):
        calls.append(request.case_id)
        if len(calls) == 2:  # the post-edit score of the first request: the model is edited right now
            raise RuntimeError("boom")
        return real(lm, request, neighbors)

    monkeypatch.setattr(editing, "score_request", failing)
    with pytest.raises(RuntimeError, match="boom"):
        edit_requests(
            tiny_lm, requests_few, "circuit", variant_masks(make_circuit(tiny_lm), "circuit"), CLAMPED, progress=False
        )
    # Both the edit and the variant's zeroing are undone.
    assert helpers.differing(tiny_lm.model, original) == []


def test_masked_weights_context_zeroes_and_restores(tiny_lm, helpers) -> None:
    original = helpers.clone_state(tiny_lm.model)
    masks = make_circuit(tiny_lm).to_masks()
    with pytest.raises(KeyError):
        with masked_weights(tiny_lm, masks):
            for name, m in masks.items():
                assert torch.all(tiny_lm.model.get_parameter(name)[~m] == 0)
            raise KeyError("inside")
    assert helpers.differing(tiny_lm.model, original) == []
    with masked_weights(tiny_lm, None):
        assert helpers.differing(tiny_lm.model, original) == []


def test_editor_skips_parameters_with_empty_masks(tiny_lm) -> None:
    masks = {p.name: torch.zeros(p.shape, dtype=torch.bool) for p in tiny_lm.params}
    masks["transformer.h.1.mlp.c_fc.weight"][0, :5] = True
    editor = Editor(tiny_lm, masks, CLAMPED)
    assert list(editor.params) == ["transformer.h.1.mlp.c_fc.weight"]


def after_backward_edit(lm, request: EditRequest, masks, config: EditConfig) -> dict[str, torch.Tensor]:
    """The edit as the editor ran it before its updates moved into the backward: all gradients first, then one
    masked, clamped SGD step over every parameter; the edited weights, and the model put back."""
    named = dict(lm.model.named_parameters())
    names = list(named) if masks is None else [n for n, m in masks.items() if bool(m.any())]
    params = [named[n] for n in names]
    base = [p.detach().clone() for p in params]
    for p in params:
        p.requires_grad_(True)
    for _ in range(config.max_steps):
        for p in params:
            p.grad = None
        editing.nll(lm, [request.text], [request.target_new])[0].backward()
        with torch.no_grad():
            for name, p, b in zip(names, params, base, strict=True):
                assert p.grad is not None
                grad = p.grad * masks[name].to(torch.uint8) if masks is not None else p.grad
                p.add_(grad, alpha=-config.lr).sub_(b).clamp_min_(-config.max_change).clamp_max_(config.max_change)
                p.add_(b)
    edited = {n: p.detach().clone() for n, p in zip(names, params, strict=True)}
    with torch.no_grad():
        for p, b in zip(params, base, strict=True):
            p.requires_grad_(False)
            p.grad = None
            p.copy_(b)
    return edited


@pytest.mark.parametrize("variant", ["full", "circuit"])
def test_updates_inside_the_backward_equal_a_step_after_it_bit_for_bit(tiny_lm, requests_few, variant, helpers) -> None:
    """The editor steps each parameter from a hook as its gradient completes (the tied embedding and LM head too,
    once both of its gradients are summed); the weights must be exactly those of a step after the whole backward."""
    masks = variant_masks(make_circuit(tiny_lm), variant)
    original = helpers.clone_state(tiny_lm.model)
    config = EditConfig(lr=0.3, max_steps=3, stop_loss=0.0, max_change=0.02)  # some weights clamped, others not
    with masked_weights(tiny_lm, masks):
        expected = after_backward_edit(tiny_lm, requests_few[0], masks, config)
        editor = Editor(tiny_lm, masks, config)
        assert editor.edit(requests_few[0])[0] == 3
        named = dict(tiny_lm.model.named_parameters())
        assert set(editor.params) == set(expected)
        assert all(torch.equal(named[n], w) for n, w in expected.items())
        assert all(named[n].grad is None and not named[n].requires_grad for n in expected)
        editor.restore()
    assert helpers.differing(tiny_lm.model, original) == []
    assert any(not torch.equal(w, original[n]) for n, w in expected.items())


# --- metrics ---------------------------------------------------------------------------------------


def test_full_edit_learns_the_new_target_and_rows_are_consistent(tiny_lm, requests_few) -> None:
    config = EditConfig(lr=0.5, max_steps=8, stop_loss=0.0, max_change=0.05)
    results = edit_requests(tiny_lm, requests_few, "full", None, config, progress=False)
    for r in results:
        assert r.nll_new_post < r.nll_new_pre
        assert r.nll_new_drop == pytest.approx(r.nll_new_pre - r.nll_new_post)
        assert r.nll_new_pre == pytest.approx(
            target_nll(tiny_lm, [requests_few[r.case_id].text], [requests_few[r.case_id].target_new])[0].item(),
            rel=1e-5,
        )
        assert r.efficacy_score == float(r.nll_new_post < r.nll_true_post)
        assert r.efficacy_magnitude == pytest.approx(math.exp(-r.nll_new_post) - math.exp(-r.nll_true_post), abs=1e-6)
        assert r.variant == "full" and r.steps == 8
    assert not math.isnan(results[0].paraphrase_score) and math.isnan(results[2].paraphrase_score)
    rows = results_as_rows(results)
    assert rows[0]["case_id"] == 0 and set(rows[0]) == {f for f in RequestResult.__dataclass_fields__}


def test_stop_loss_ends_an_edit_before_any_step(tiny_lm, requests_few, helpers) -> None:
    [result] = edit_requests(tiny_lm, requests_few[:1], "full", None, EditConfig(stop_loss=1e9), progress=False)
    assert result.steps == 0
    assert result.nll_new_post == result.nll_new_pre and result.nll_new_drop == 0.0


def test_variant_masks() -> None:
    from circuitlib.types import MaskedParam

    params = [MaskedParam("h.0.w", (40, 50), "mlp", 0)]
    rng = np.random.default_rng(0)
    circuit = Circuit.from_masks(params, {"h.0.w": rng.random((40, 50)) < 0.3}, "m", target_density=0.3)
    assert variant_masks(circuit, "full") is None
    inside, outside, rand = (variant_masks(circuit, v, seed=1) for v in ("circuit", "complement", "random"))
    assert inside is not None and outside is not None and rand is not None
    assert torch.equal(inside["h.0.w"], circuit.mask("h.0.w"))
    assert torch.equal(outside["h.0.w"], ~circuit.mask("h.0.w"))
    random_mask = rand["h.0.w"]
    assert abs(random_mask.float().mean().item() - circuit.density) < 0.05
    assert torch.equal(random_mask, circuits.random_like(circuit, 1).mask("h.0.w"))
    with pytest.raises(InputError, match="must be one of"):
        variant_masks(circuit, "everything")  # pyright: ignore[reportArgumentType]  # an unknown variant, on purpose
    with pytest.raises(InputError, match="needs a circuit file"):
        variant_masks(None, "complement")


def test_neighbor_prompts_prefer_own_then_same_true_target() -> None:
    def req(case_id, subject, true, neighbors=()):
        return EditRequest(case_id, "{} is a kind of", subject, true, "rock", neighborhood_prompts=list(neighbors))

    pool = [
        req(0, "A cat", "animal"),
        req(1, "A rose", "flower"),
        req(2, "A dog", "animal"),
        req(3, "A cat", "animal"),
        req(4, "A cow", "animal"),
        req(5, "A tulip", "flower"),
    ]
    assert neighbor_prompts(req(9, "X", "y", ["own one"]), pool, 5) == ["own one"]
    got = neighbor_prompts(pool[0], pool, 3)
    assert got == ["A dog is a kind of", "A cow is a kind of", "A rose is a kind of"]  # same subject excluded


def test_summarize_means_and_harmonic_overall() -> None:
    def row(case_id, eff, para, neigh, drop):
        return RequestResult(
            case_id, "circuit", 3, 0.1, 2.0, 1.0, 2.0 - drop, 1.0, drop, 0.0, eff, 0.0, para, 0.0, 1.0, neigh, 0.0
        )

    summary = summarize([row(0, 1.0, 0.5, 1.0, 0.4), row(1, 0.0, float("nan"), 0.5, 0.2)])
    assert summary["requests"] == 2.0
    assert summary["efficacy_score"] == 0.5
    assert summary["paraphrase_score"] == 0.5  # NaN rows are left out of a mean
    assert summary["neighborhood_score"] == 0.75
    assert summary["nll_new_drop"] == pytest.approx(0.3)
    assert summary["overall_score"] == pytest.approx(3 / (1 / 0.5 + 1 / 0.5 + 1 / 0.75))
    assert summarize([row(0, 0.0, 1.0, 1.0, 0.1)])["overall_score"] == 0.0
