"""Circuit discovery on the tiny GPT-2: snapshots, determinism, checkpoint/resume, evaluation, the head."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import circuitlib.discovery as discovery
from circuitlib import options, settings
from circuitlib.circuits import Circuit
from circuitlib.classifier import cached_features, last_token, last_token_features, tokenize, train_head
from circuitlib.discovery import DiscoveryConfig, Method, discover, evaluate, evaluation, prepare_task
from circuitlib.editing import masked_weights
from circuitlib.errors import InputError
from circuitlib.masks import FlatLayout, flat_weights, hard_masks, init_logits, shift_to_density
from circuitlib.models import load_model
from circuitlib.types import PAPER_DENSITIES

TARGETS = (0.8, 0.5, 0.2)


def config(**overrides) -> DiscoveryConfig:
    """A fast discovery on the toy task: logits spread (std 0.5) so the three targets are reached at distinct steps."""
    values: dict[str, Any] = dict(
        densities=TARGETS,
        max_steps=100,
        batch_size=8,
        lr=0.05,
        init_mean=1.0,
        init_std=0.5,
        head_epochs=20,
        eval_every=5,
        checkpoint_every=5,
        mask_seed=0,
    )
    return DiscoveryConfig(**(values | overrides))


def bits(result: discovery.DiscoveryResult) -> list[np.ndarray]:
    return [c.bits for c in result.circuits]


def same_circuits(a: discovery.DiscoveryResult, b: discovery.DiscoveryResult) -> bool:
    return [c.target_density for c in a.circuits] == [c.target_density for c in b.circuits] and all(
        np.array_equal(x, y) for x, y in zip(bits(a), bits(b), strict=True)
    )


@pytest.fixture
def run(tiny_lm, tiny_data):
    def go(**overrides) -> discovery.DiscoveryResult:
        return discover(tiny_lm, tiny_data, tiny_data, config(**overrides), progress=False)

    return go


def test_config_defaults_are_the_papers() -> None:
    c = DiscoveryConfig()
    assert c.densities == PAPER_DENSITIES
    assert (c.lr, c.batch_size, c.init_mean, c.init_std, c.method.temperature) == (0.01, 128, 2.7, 0.01, 0.01)
    assert (c.lambda_init, c.lambda_step, c.lambda_max, c.head_epochs) == (10.0, 1.0, 1000.0, 400)
    assert c.method == Method(init="uniform", noise=True, temperature=0.01, loss="ce", hold_steps=0)


def test_the_schedule_brings_its_method_and_a_setting_given_wins() -> None:
    """One setting picks the whole procedure: what a config leaves unset comes from its schedule's method."""
    controlled = DiscoveryConfig(schedule="controlled")
    assert controlled.method == Method(init="importance", noise=False, temperature=1.0, loss="features", hold_steps=120)
    assert (controlled.init, controlled.loss) == (None, None)  # unset in the config (and in a sweep's settings)
    resolved = DiscoveryConfig(schedule="controlled", loss="kl", hold_steps=0).resolved()
    assert (resolved.init, resolved.noise, resolved.temperature) == ("importance", False, 1.0)
    assert (resolved.loss, resolved.hold_steps) == ("kl", 0)  # given, so kept
    assert resolved.resolved() == resolved
    with pytest.raises(InputError, match="init"):
        DiscoveryConfig(init="zeros")
    assert options.build(DiscoveryConfig, {"densities": [0.5, 0.3]}).densities == (0.5, 0.3)  # a YAML list


@pytest.mark.parametrize(
    ("densities", "named"), [((0.1, 0.5, 0.3), "0.5 follows 0.1"), ((0.5, 0.5), "0.5 follows 0.5")]
)
def test_config_refuses_densities_that_do_not_decrease(densities, named: str) -> None:
    with pytest.raises(InputError, match=f"densities .*must decrease strictly.*{named}"):
        DiscoveryConfig(densities=densities)


def test_config_refuses_a_ramp_longer_than_the_budget() -> None:
    with pytest.raises(
        InputError, match="ramp_steps 300: makes the first ramp 300 steps, longer than the whole budget"
    ):
        DiscoveryConfig(schedule="controlled", ramp_steps=300, max_steps=200)
    with pytest.raises(
        InputError,
        match="ramp_steps 100: makes the first ramp 332 steps, longer than the whole budget \\(max_steps 300\\)",
    ):
        DiscoveryConfig(schedule="geometric", densities=(0.1, 0.05), ramp_steps=100, max_steps=300)  # log2(10) halvings
    assert DiscoveryConfig(schedule="geometric", densities=(0.5, 0.05), ramp_steps=100, max_steps=100).ramp_steps
    assert DiscoveryConfig(schedule="paper", ramp_steps=300, max_steps=200).ramp_steps == 300  # the paper's ignores it


def test_config_refuses_fewer_than_one_sample_and_several_without_noise() -> None:
    with pytest.raises(InputError, match="samples 0: must be an integer of at least 1"):
        DiscoveryConfig(samples=0)
    with pytest.raises(InputError, match="samples 4: needs noise"):
        DiscoveryConfig(schedule="controlled", samples=4)  # the controlled schedule trains without noise
    assert DiscoveryConfig(schedule="controlled", noise=True, samples=4).samples == 4


def test_config_refuses_a_negative_completeness_weight() -> None:
    with pytest.raises(InputError, match="completeness -0.5: must be"):
        DiscoveryConfig(completeness=-0.5)


def test_several_samples_step_on_the_mean_of_their_gradients(tiny_lm, tiny_data) -> None:
    """A step with two Gumbel samples follows the mean of the gradients (and losses) of two one-sample steps taken
    from the same logits on the same batch with the next two draws of the noise."""
    task = prepare_task(tiny_lm, tiny_data, tiny_data, config())
    two = config(samples=2)
    state = discovery.DiscoveryState(tiny_lm, two, len(tiny_data))
    loss = discovery.mask_step(
        tiny_lm, task, state, two, discovery.StepBuffers.for_run(tiny_lm, state.layout, two), False
    )
    assert state.logits.grad is not None
    together = state.logits.grad.clone()

    one = config()
    state = discovery.DiscoveryState(tiny_lm, one, len(tiny_data))
    start = state.logits.detach().clone()
    buffers = discovery.StepBuffers.for_run(tiny_lm, state.layout, one)
    grads, losses = [], []
    for _ in range(2):
        with torch.no_grad():
            state.logits.copy_(start)
        state.position = 0  # the same batch again; the noise generator goes on to its next draw
        losses.append(discovery.mask_step(tiny_lm, task, state, one, buffers, fused=False))
        assert state.logits.grad is not None
        grads.append(state.logits.grad.clone())
    assert not torch.equal(grads[0], grads[1])  # two different samples
    torch.testing.assert_close(together, (grads[0] + grads[1]) / 2)
    torch.testing.assert_close(loss, (losses[0] + losses[1]) / 2)


def test_the_completeness_term_adds_the_complements_straight_through_gradient(tiny_lm, tiny_data) -> None:
    """With `completeness` c, a step's gradient is the one without it plus c times the gradient, through the
    complement's straight-through mask, of the head's cross-entropy to 50/50 on the complement's features."""
    task = prepare_task(tiny_lm, tiny_data, tiny_data, config())
    grads, losses = {}, {}
    for weight in (0.0, 0.5):
        cfg = config(schedule="controlled", completeness=weight)  # deterministic mask, temperature 1
        state = discovery.DiscoveryState(tiny_lm, cfg, len(tiny_data))
        buffers = discovery.StepBuffers.for_run(tiny_lm, state.layout, cfg)
        start, index = state.logits.detach().clone(), state.order[: cfg.batch_size].clone()
        losses[weight] = discovery.mask_step(tiny_lm, task, state, cfg, buffers, fused=False)
        assert state.logits.grad is not None
        grads[weight] = state.logits.grad.clone()

    weights = flat_weights(tiny_lm.model, state.layout)
    complement = (weights * (start <= 0)).requires_grad_()
    inputs = task.train.batch(index.tolist(), tiny_lm.device)
    features = last_token(discovery.masked_hidden(tiny_lm, state.layout)(complement, inputs), inputs["attention_mask"])
    uninformed = -task.head(features).log_softmax(dim=1).mean()
    uninformed.backward()
    assert complement.grad is not None
    s = torch.sigmoid(start)
    expected = -0.5 * complement.grad * weights * s * (1 - s)  # d(1 - mask)/dlogit = -s(1 - s)
    assert expected.abs().max() > 0
    torch.testing.assert_close(grads[0.5] - grads[0.0], expected)
    torch.testing.assert_close(losses[0.5] - losses[0.0], 0.5 * uninformed.detach())


def test_each_registry_name_is_a_choice_of_its_setting() -> None:
    fields = {f.name: f for f in dataclasses.fields(DiscoveryConfig)}
    for name, registry in (("schedule", discovery.SCHEDULES), ("init", discovery.INITS), ("loss", discovery.LOSSES)):
        assert settings.choices(fields[name]) == tuple(registry)
        with pytest.raises(InputError, match=f"{name} 'bogus': must be one of"):
            options.build(DiscoveryConfig, {name: "bogus"})


@pytest.mark.parametrize("densities", [(0.0,), (1.0,), (0.5, 1.5), (-0.1,), ()])
def test_config_rejects_densities_outside_the_open_unit_interval(densities) -> None:
    with pytest.raises(InputError, match="must lie in \\(0, 1\\)"):
        DiscoveryConfig(densities=densities)


@pytest.mark.parametrize("field", ["max_steps", "batch_size"])
def test_config_rejects_non_positive_budgets(field: str) -> None:
    with pytest.raises(InputError, match="must be an integer of at least 1"):
        values: dict[str, Any] = {field: 0}
        DiscoveryConfig(**values)


def test_snapshots_at_or_below_their_targets(tiny_lm, tiny_data, helpers) -> None:
    before = helpers.clone_state(tiny_lm.model)
    seen, rows = [], []
    result = discover(
        tiny_lm, tiny_data, tiny_data, config(), on_snapshot=seen.append, on_eval=rows.append, progress=False
    )
    assert result.unreached == []
    assert [c.target_density for c in result.circuits] == list(TARGETS)
    steps = [c.provenance["step"] for c in result.circuits]
    assert steps == sorted(set(steps)), "targets should be reached at distinct steps"
    for circuit in result.circuits:
        assert circuit.target_density is not None and circuit.density <= circuit.target_density
        assert circuit.provenance["density"] == circuit.density
        assert circuit.model_id == "tiny-gpt2" and circuit.provenance["dataset"] == "toy"
        assert [p.name for p in circuit.params] == [p.name for p in tiny_lm.params]
    assert seen == result.circuits and rows == result.history
    first = result.history[0]
    assert first["step"] == 0 and TARGETS[0] < first["density"] < 1.0  # the initial logits are N(1, 0.5)
    assert first["full_accuracy"] == result.full_accuracy
    assert all(0.0 <= r["faithfulness"] <= 1.0 for r in result.history)
    assert [r["step"] for r in result.history] == sorted(r["step"] for r in result.history)
    assert result.history[-1]["step"] == steps[-1]  # stops at the lowest target
    assert helpers.differing(tiny_lm.model, before) == []  # discovery never writes the model's weights


def test_lambda_grows_per_epoch_and_is_capped(run) -> None:
    result = run(lambda_init=10.0, lambda_step=1.0)
    for row in result.history:
        assert row["lambda"] == 10.0 + row["epoch"]
    assert discovery.penalty_weight(config(lambda_max=12.0), 50) == 12.0


def test_same_seed_same_bits_different_seed_different_bits(run, helpers) -> None:
    a, b, c = run(mask_seed=0), run(mask_seed=0), run(mask_seed=1)
    assert same_circuits(a, b)
    assert helpers.same_rows(a.history, b.history)
    assert [x.digest for x in a.circuits] == [x.digest for x in b.circuits]
    assert len(c.circuits) == len(a.circuits)
    assert all(not np.array_equal(x, y) for x, y in zip(bits(a), bits(c), strict=True))


def test_step_budget_leaves_targets_unreached(run) -> None:
    result = run(max_steps=14)
    assert [c.target_density for c in result.circuits] == [0.8]
    assert result.unreached == [0.5, 0.2]
    assert result.history[-1]["step"] <= 14


@pytest.mark.parametrize(("interrupt_at", "snapshots_before"), [(3, 0), (16, 1)])  # 16: after the first, mid interval
def test_resume_from_checkpoint_equals_an_uninterrupted_run(
    tiny_lm, tiny_data, tmp_path: Path, helpers, interrupt_at: int, snapshots_before: int
) -> None:
    whole = discover(tiny_lm, tiny_data, tiny_data, config(), checkpoint_dir=tmp_path / "whole", progress=False)
    saved = []
    part = discover(
        tiny_lm,
        tiny_data,
        tiny_data,
        config(max_steps=interrupt_at),
        checkpoint_dir=tmp_path / "cut",
        on_checkpoint=saved.append,
        progress=False,
    )
    assert saved and saved[-1] == tmp_path / "cut"
    assert len(part.circuits) == snapshots_before
    assert torch.load(tmp_path / "cut" / "state.pt", weights_only=True)["step"] == interrupt_at
    resumed = discover(tiny_lm, tiny_data, tiny_data, config(), checkpoint_dir=tmp_path / "cut", progress=False)
    assert same_circuits(resumed, whole)
    assert helpers.same_rows(resumed.history, whole.history)
    assert resumed.unreached == whole.unreached == []


def test_finished_checkpoint_is_not_rerun(tiny_lm, tiny_data, tmp_path: Path) -> None:
    first = discover(tiny_lm, tiny_data, tiny_data, config(), checkpoint_dir=tmp_path, progress=False)
    rows = []
    again = discover(
        tiny_lm, tiny_data, tiny_data, config(), checkpoint_dir=tmp_path, on_eval=rows.append, progress=False
    )
    assert rows == []  # nothing left to do: no new steps, no new evaluations
    assert same_circuits(first, again)


def test_a_checkpoint_cut_while_saving_keeps_the_candidate_its_state_chose(
    tiny_lm, tiny_data, tmp_path: Path, monkeypatch
) -> None:
    """A run killed between writing its candidates and its state resumes with the last state's candidate, not a newer
    one the state never saw (a newer candidate file once overwrote the older under the same name)."""
    cfg = config()
    state = discovery.DiscoveryState(tiny_lm, cfg, len(tiny_data))

    def candidate(step: int, density: float) -> Circuit:
        return Circuit.from_masks(
            tiny_lm.params,
            random_masks(tiny_lm, step, density),
            tiny_lm.model_id,
            tiny_lm.revision,
            target_density=0.5,
            provenance={"step": step},
        )

    older, newer = candidate(5, 0.5), candidate(10, 0.4)
    state.holds, state.candidates = [discovery.Hold(0.5, 100, best=0.9)], {0.5: older}
    state.save(tmp_path)
    state.step, state.candidates[0.5] = 10, newer

    def cut(*args, **kwargs) -> None:
        raise OSError("killed")

    monkeypatch.setattr(torch, "save", cut)
    with pytest.raises(OSError, match="killed"):
        state.save(tmp_path)
    monkeypatch.undo()
    resumed = discovery.DiscoveryState(tiny_lm, cfg, len(tiny_data))
    resumed.load(tmp_path)
    assert resumed.step == 0 and resumed.candidates[0.5].digest == older.digest != newer.digest

    state.save(tmp_path)  # a save that lands leaves only its own candidate
    resumed.load(tmp_path)
    assert resumed.step == 10 and resumed.candidates[0.5].digest == newer.digest
    assert [p.name for p in tmp_path.glob("candidate*")] == ["candidate_d0.5_step10.safetensors"]


def test_a_checkpoint_from_before_candidate_files_resumes_with_its_candidate(
    tiny_lm, tiny_data, tmp_path: Path
) -> None:
    """Older checkpoints named an open hold's candidate by the hold's index and had no `candidate_files`."""
    cfg = config()
    state = discovery.DiscoveryState(tiny_lm, cfg, len(tiny_data))
    masks = random_masks(tiny_lm, 3, 0.3)
    chosen = Circuit.from_masks(tiny_lm.params, masks, tiny_lm.model_id, target_density=0.2, provenance={"step": 3})
    state.holds = [discovery.Hold(0.5, 100), discovery.Hold(0.2, 100, best=0.8)]
    state.candidates = {0.2: chosen}
    state.save(tmp_path)
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    del saved["candidate_files"]
    torch.save(saved, tmp_path / "state.pt")
    (tmp_path / "candidate_d0.2_step3.safetensors").rename(tmp_path / "candidate1.safetensors")
    resumed = discovery.DiscoveryState(tiny_lm, cfg, len(tiny_data))
    resumed.load(tmp_path)
    assert list(resumed.candidates) == [0.2] and resumed.candidates[0.2].digest == chosen.digest


# --- evaluation ---------------------------------------------------------------------------------------


def random_masks(lm, seed: int, density: float) -> dict[str, torch.Tensor]:
    layout = FlatLayout(tuple(lm.params))
    gen = torch.Generator().manual_seed(seed)
    return hard_masks(torch.rand(layout.total, generator=gen) - (1 - density), layout)


def test_evaluate_runs_the_circuit_and_exactly_the_dropped_weights(tiny_lm, tiny_data, monkeypatch) -> None:
    task = prepare_task(tiny_lm, tiny_data, tiny_data, config())
    masks = random_masks(tiny_lm, 0, 0.6)
    calls = []
    real = evaluation.cached_features

    def spy(lm, data, batch_size=64, weights=None):
        assert weights is not None
        calls.append({k: v.clone() for k, v in weights.items()})
        return real(lm, data, batch_size, weights)

    monkeypatch.setattr(evaluation, "cached_features", spy)
    metrics = evaluate(tiny_lm, task, masks, batch_size=7)
    monkeypatch.undo()
    assert len(calls) == 2
    circuit, complement = calls
    named = dict(tiny_lm.model.named_parameters())
    assert set(circuit) == set(complement) == {p.name for p in tiny_lm.params}
    for name, m in masks.items():
        w = named[name].detach()
        assert torch.equal(circuit[name][m], w[m]) and torch.all(circuit[name][~m] == 0)
        assert torch.equal(complement[name][~m], w[~m]) and torch.all(complement[name][m] == 0)
        assert torch.equal(circuit[name] + complement[name], w)

    # The same metrics from the model with the other weights zeroed in place.
    def predictions(keep):
        with masked_weights(tiny_lm, keep):
            return task.head(cached_features(tiny_lm, task.eval, 64)).argmax(dim=1)

    circuit_preds = predictions(masks)
    complement_preds = predictions({n: ~m for n, m in masks.items()})
    assert metrics["faithfulness"] == pytest.approx((circuit_preds == task.eval_full_preds).float().mean().item())
    assert metrics["circuit_accuracy"] == (circuit_preds == task.eval_labels).float().mean().item()
    assert metrics["complement_accuracy"] == (complement_preds == task.eval_labels).float().mean().item()


def test_evaluate_full_mask_is_the_full_model(tiny_lm, tiny_data) -> None:
    task = prepare_task(tiny_lm, tiny_data, tiny_data, config())
    everything = {p.name: torch.ones(p.shape, dtype=torch.bool) for p in tiny_lm.params}
    metrics = evaluate(tiny_lm, task, everything, batch_size=16)
    assert metrics["faithfulness"] == 1.0
    assert metrics["circuit_accuracy"] == metrics["full_accuracy"]


# --- classification head and features --------------------------------------------------------------


def test_prepare_task_targets_are_the_heads_predictions_on_cached_features(tiny_lm, tiny_data) -> None:
    task = prepare_task(tiny_lm, tiny_data, tiny_data, config())
    features = cached_features(tiny_lm, task.train, 5)
    assert torch.equal(task.train_targets, task.head(features).argmax(dim=1))
    assert torch.equal(task.eval_full_preds, task.train_targets)  # eval set is the train set here
    assert (task.train_targets == torch.tensor(tiny_data.labels)).float().mean() >= 0.9
    assert not any(p.requires_grad for p in task.head.parameters())


def test_features_take_each_rows_last_real_token_whatever_the_padding(tiny_lm) -> None:
    texts = ["a", "a much longer sentence here", "mid length"]
    tok = tokenize(tiny_lm.tokenizer, texts)
    batched = cached_features(tiny_lm, tok, batch_size=3)
    for i in range(len(texts)):
        ids = torch.tensor([tok.ids[i]])
        alone = tiny_lm.model.base_model(input_ids=ids).last_hidden_state[0, -1]
        torch.testing.assert_close(batched[i], alone, rtol=1e-5, atol=1e-5)
    inputs = tok.batch([0, 1, 2], torch.device("cpu"))
    assert inputs["attention_mask"].sum(dim=1).tolist() == [len(r) for r in tok.ids]
    assert torch.equal(last_token_features(tiny_lm, inputs), batched)


def test_train_head_fits_badly_scaled_features_and_folds_the_scaling_back() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    signal = (labels.float() * 2 - 1)[:, None] * torch.tensor([1.0, 0.0, 0.0])
    features = 1000.0 + 50.0 * (torch.randn(200, 3, generator=gen) * 0.3 + signal)  # offset and scale far from 0/1
    head = train_head(features, labels, epochs=60, lr=1e-2, batch_size=32, seed=0)
    assert (head(features).argmax(dim=1) == labels).float().mean() >= 0.95
    again = train_head(features, labels, epochs=60, lr=1e-2, batch_size=32, seed=0)
    assert torch.equal(head.weight, again.weight) and torch.equal(head.bias, again.bias)


def test_train_head_l2_solves_ridge_logistic_regression() -> None:
    """With `l2`, the head minimises mean cross-entropy + l2/2 * ||weight||² over standardised features: it matches a
    full-batch L-BFGS solution of that objective, and its weights are smaller than the unpenalised head's."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 2
    features = 5.0 + 3.0 * (torch.randn(300, 8, generator=gen) + 0.8 * (labels.float() * 2 - 1)[:, None])
    l2 = 0.2
    head = train_head(features, labels, epochs=400, lr=1e-2, batch_size=300, seed=0, l2=l2)
    mean, std = features.mean(dim=0), features.std(dim=0)
    scaled = (features - mean) / std
    weight = torch.zeros(2, 8, requires_grad=True)
    bias = torch.zeros(2, requires_grad=True)
    solver = torch.optim.LBFGS([weight, bias], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        solver.zero_grad()
        loss = torch.nn.functional.cross_entropy(scaled @ weight.T + bias, labels) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    solver.step(objective)
    with torch.no_grad():
        torch.testing.assert_close(head(features), scaled @ weight.T + bias, atol=2e-3, rtol=0)
    free = train_head(features, labels, epochs=400, lr=1e-2, batch_size=300, seed=0)
    assert (head.weight * std).norm() < 0.5 * (free.weight * std).norm()


def test_prepare_task_fits_the_head_with_head_l2(tiny_lm, tiny_data) -> None:
    """`head_l2` reaches the task's head, and with it the full model's predictions discovery aims at."""
    free = prepare_task(tiny_lm, tiny_data, tiny_data, config())
    penalised = prepare_task(tiny_lm, tiny_data, tiny_data, config(head_l2=1.0))
    expected = train_head(free.train_full_features, torch.tensor(tiny_data.labels), 20, 1e-3, 8, 0, 1.0)
    assert torch.equal(penalised.head.weight, expected.weight)
    assert penalised.head.weight.norm() < free.head.weight.norm()


def test_a_loss_that_never_reads_the_head_descends_the_same_way_under_any_head(tiny_data) -> None:
    """`loss: features` targets the full model's features, so `head_l2` changes the figures, never the mask's descent
    (its loss and density at every evaluation): two heads can be compared on one trajectory. Which snapshot a hold
    keeps may differ, since the head's figures choose it."""
    method = dict(schedule="controlled", init="importance", noise=False, temperature=1.0, loss="features")
    plain, ridge = (
        discover(load_model("tiny-gpt2", device="cpu"), tiny_data, tiny_data, config(**method, head_l2=l2)).history
        for l2 in (0.0, 1.0)
    )
    for a, b in zip(plain, ridge, strict=True):
        assert (a["step"], a["density"]) == (b["step"], b["density"])
        assert a["loss"] == b["loss"] or math.isnan(a["loss"]) and math.isnan(b["loss"])
    assert any(a["kl"] != b["kl"] for a, b in zip(plain, ridge, strict=True))


def test_bfloat16_mask_step_follows_the_float32_one(tiny_lm, tiny_data) -> None:
    """One mask step in bf16 autocast moves the logits like the fp32 step (same noise, same batch)."""
    cfg = config()
    task = prepare_task(tiny_lm, tiny_data, tiny_data, cfg)
    steps = {}
    for precision in ("fp32", "bf16"):
        c = config(precision=precision)
        state = discovery.DiscoveryState(tiny_lm, c, len(tiny_data))
        buffers = discovery.StepBuffers.for_run(tiny_lm, state.layout, c)
        assert buffers.weights.dtype == buffers.masked.dtype == (c.weights_dtype or torch.float32)
        loss = discovery.mask_step(tiny_lm, task, state, c, buffers, fused=False)
        assert torch.isfinite(loss)
        steps[precision] = (
            state.logits.detach()
            - init_logits(state.layout, torch.device("cpu"), c.init_mean, c.init_std, c.mask_seed).detach()
        )
    moved = steps["fp32"] != 0
    assert moved.any()
    cosine = torch.nn.functional.cosine_similarity(steps["fp32"], steps["bf16"], dim=0)
    assert cosine > 0.99, cosine


def test_features_loss_is_the_scaled_distance_to_the_full_models_features(tiny_lm, tiny_data) -> None:
    """loss=features: 0 for the whole model; for a mask, the mean squared feature gap over each dimension's spread."""
    cfg = config(
        loss="features", schedule="controlled", noise=False, temperature=1.0, batch_size=len(tiny_data)
    )  # no penalty in the loss; one batch: every row
    task = prepare_task(tiny_lm, tiny_data, tiny_data, cfg)
    full = cached_features(tiny_lm, task.train, 8)
    assert torch.equal(task.train_full_features, full)
    torch.testing.assert_close(task.feature_scale, full.std(dim=0).clamp_min(1e-6))
    for density in (1.0, 0.5):
        state = discovery.DiscoveryState(tiny_lm, cfg, len(tiny_data))
        with torch.no_grad():
            shift_to_density(state.logits, density)
        masks = hard_masks(state.logits, state.layout)
        with masked_weights(tiny_lm, masks):
            circuit = cached_features(tiny_lm, task.train, 8)
        expected = ((circuit - full) / task.feature_scale).square().mean()
        buffers = discovery.StepBuffers.for_run(tiny_lm, state.layout, cfg)
        loss = discovery.mask_step(tiny_lm, task, state, cfg, buffers, fused=False)
        torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
        assert (loss == 0) == (density == 1.0), (density, loss)


@pytest.mark.parametrize(
    ("name", "other"), [("features+mse", "mse"), ("features+ce", "ce"), ("features+tokens", "tokens")]
)
def test_a_features_plus_loss_is_the_sum_of_its_parts(name: str, other: str) -> None:
    """features+X adds X's loss to the last-token feature distance, each on the same rows."""
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 2)
    full = torch.randn(6, 3, 4)  # every row 3 tokens long
    task = discovery.Task(
        train=None,  # type: ignore[arg-type]  # the losses read only the cached targets and the head
        eval=None,  # type: ignore[arg-type]
        eval_labels=torch.zeros(0),
        head=head,
        train_full_logits=head(full[:, -1]).detach(),
        eval_full_logits=torch.zeros(0, 2),
        train_full_features=full[:, -1],
        feature_scale=full[:, -1].std(dim=0),
        train_tokens=discovery.TokenTargets(full, full.flatten(0, 1).std(dim=0)),
    )
    index = torch.tensor([1, 3, 4])
    mask = torch.ones(3, 3, dtype=torch.long)
    run = discovery.Run(full[index] + 0.5 * torch.randn(3, 3, 4), mask)
    parts = [discovery.LOSSES[n](task, run, index) for n in ("features", other)]
    assert all(part > 0 for part in parts)
    torch.testing.assert_close(discovery.LOSSES[name](task, run, index), parts[0] + parts[1])
    own = discovery.LOSSES[name](task, discovery.Run(full[index], mask), index)  # the full model's own states
    assert own < parts[0] + parts[1]


def test_tokens_loss_is_the_scaled_distance_at_every_real_token(tiny_lm, tiny_data) -> None:
    """loss=tokens: 0 for the whole model; for a mask, the mean squared state gap over every token of every row (each
    row run alone, so no padding), each dimension over its spread across all tokens."""
    cfg = config(loss="tokens", schedule="controlled", noise=False, temperature=1.0, batch_size=len(tiny_data))
    task = prepare_task(tiny_lm, tiny_data, tiny_data, cfg)
    assert task.train_tokens is not None
    assert len({len(ids) for ids in task.train.ids}) > 1  # rows of several lengths: the batch has padding

    def states(masks=None) -> list[torch.Tensor]:
        with masked_weights(tiny_lm, masks), torch.no_grad():
            return [tiny_lm.model.base_model(torch.tensor([ids])).last_hidden_state[0] for ids in task.train.ids]

    full = states()
    for i in (0, len(full) - 1):
        torch.testing.assert_close(task.train_tokens.hidden[i, : len(full[i])], full[i], rtol=1e-4, atol=1e-5)
        assert not task.train_tokens.hidden[i, len(full[i]) :].any()
    torch.testing.assert_close(task.train_tokens.scale, torch.cat(full).std(dim=0).clamp_min(1e-6), rtol=1e-4, atol=0)
    for density in (1.0, 0.5):
        state = discovery.DiscoveryState(tiny_lm, cfg, len(tiny_data))
        with torch.no_grad():
            shift_to_density(state.logits, density)
        circuit = states(hard_masks(state.logits, state.layout))
        expected = ((torch.cat(circuit) - torch.cat(full)) / task.train_tokens.scale).square().mean()
        buffers = discovery.StepBuffers.for_run(tiny_lm, state.layout, cfg)
        loss = discovery.mask_step(tiny_lm, task, state, cfg, buffers, fused=False)
        torch.testing.assert_close(loss, expected, rtol=1e-3, atol=1e-6)
        assert (loss < 1e-6) == (density == 1.0), (density, loss)


def test_only_a_loss_over_tokens_caches_the_states_at_every_token(tiny_lm, tiny_data) -> None:
    assert prepare_task(tiny_lm, tiny_data, tiny_data, config(loss="features")).train_tokens is None
    assert prepare_task(tiny_lm, tiny_data, tiny_data, config(loss="features+tokens")).train_tokens is not None


def test_config_rejects_an_unknown_precision() -> None:
    with pytest.raises(InputError, match="precision 'fp16'"):
        DiscoveryConfig(precision="fp16")


@pytest.mark.slow
def test_compiled_masked_forward_matches_eager_and_padding_changes_nothing(tiny_lm, tiny_data) -> None:
    """compile_model's torch.compile'd forward, on batches padded to the set's longest row, equals the eager one."""
    cfg = config()
    task = prepare_task(tiny_lm, tiny_data, tiny_data, cfg)
    state = discovery.DiscoveryState(tiny_lm, cfg, len(tiny_data))
    flat = flat_weights(tiny_lm.model, state.layout).requires_grad_(True)
    index = list(range(8))
    width = task.train.max_width
    results = []
    for compiled, pad_to in ((False, None), (False, width), (True, width)):
        forward = discovery.masked_hidden(tiny_lm, state.layout, compile_model=compiled)
        inputs = task.train.batch(index, tiny_lm.device, pad_to)
        logits = task.head(last_token(forward(flat, inputs), inputs["attention_mask"]))
        (grad,) = torch.autograd.grad(logits[:, 1].sum(), flat)
        results.append((logits.detach(), grad))
    assert task.train.batch(index, tiny_lm.device, width)["input_ids"].shape[1] == width > min(map(len, task.train.ids))
    for logits, grad in results[1:]:
        torch.testing.assert_close(logits, results[0][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-4, atol=1e-6)
    assert results[0][1].abs().sum() > 0


def test_a_model_not_in_float32_is_refused_by_discovery_and_edits(tiny_data, requests_few) -> None:
    """One precision switch (issue 10): bfloat16 comes from precision bf16 over float32 weights, never from the
    weights' own dtype, so a bfloat16-loaded model is refused with what to do instead."""
    from circuitlib.editing import edit_requests
    from circuitlib.models import load_model

    lm = load_model("tiny-gpt2", device="cpu")
    lm.model.to(torch.bfloat16)  # pyright: ignore[reportArgumentType]  # a user cast the model to bfloat16
    with pytest.raises(InputError, match=r"discovery on tiny-gpt2: its weights are bfloat16.*precision='bf16'"):
        discover(lm, tiny_data, tiny_data, config(max_steps=40), progress=False)
    with pytest.raises(InputError, match="editing on tiny-gpt2: its weights are bfloat16"):
        edit_requests(lm, requests_few, "full", None, progress=False)


@pytest.mark.slow
def test_compiled_discovery_finds_the_eager_circuits(run) -> None:
    """discover(compile_model=True) pads batches and runs the compiled graph; its circuits agree with the eager run."""
    eager, compiled = run(), run(compile_model=True)
    assert [c.target_density for c in compiled.circuits] == list(TARGETS)
    assert all(c.density <= c.target_density for c in compiled.circuits)
    for a, b in zip(eager.circuits, compiled.circuits, strict=True):
        agree = np.mean(np.unpackbits(a.bits) == np.unpackbits(b.bits))
        assert agree > 0.99, (a.target_density, agree)


def test_mask_norms_false_masks_only_attention_and_mlp_weights(run, tiny_lm) -> None:
    """With `mask_norms` false a circuit holds the attention and MLP weights only: every norm stays whole in the
    circuit, its complement and its random twin, and the circuit still fits the model it was found on."""
    from circuitlib import circuits
    from circuitlib.editing import variant_masks

    linear = run(mask_norms=False)
    full = run()
    assert linear.circuits and {p.module_type for p in linear.circuits[0].params} == {"attention", "mlp"}
    assert "norm" in {p.module_type for p in full.circuits[0].params}
    norms = {p.name for p in tiny_lm.params if p.module_type == "norm"}
    for circuit in linear.circuits:
        assert circuit.total == sum(p.numel for p in tiny_lm.params if p.module_type != "norm")
        circuits.check_compatible(circuit, tiny_lm.params)
        for variant in ("circuit", "complement", "random"):
            masks = variant_masks(circuit, variant, seed=0)
            assert masks is not None and not norms & masks.keys()
    assert linear.circuits[0].provenance["config"]["mask_norms"] is False  # so `discover_args` recomputes it


def test_a_circuit_missing_weights_other_than_the_norms_does_not_fit(tiny_lm) -> None:
    from circuitlib import circuits

    def circuit_of(params: list) -> circuits.Circuit:
        return circuits.Circuit.from_masks(params, {p.name: torch.ones(p.shape, dtype=torch.bool) for p in params}, "m")

    circuits.check_compatible(circuit_of(tiny_lm.params), tiny_lm.params)
    without_mlp = [p for p in tiny_lm.params if p.module_type != "mlp"]
    with pytest.raises(InputError, match=r"circuit lacks .*mlp"):
        circuits.check_compatible(circuit_of(without_mlp), tiny_lm.params)
