"""Discovery schedules on the tiny GPT-2: the controlled schedule tracks its density plan without a cliff, holds
each target and keeps its most faithful mask; the paper's schedule keeps its first-below snapshot by default; and
`backoff` sends a collapsed mask back to the evaluation before its fall (the tiny model never collapses, so these
tests make its evaluation report one)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from circuitlib.classifier import tokenize
from circuitlib.discovery import DiscoveryConfig, DiscoveryResult, backoff, discover, loop
from circuitlib.errors import InputError
from circuitlib.importance import importance_offsets, input_norms
from circuitlib.masks import FlatLayout, density_sample, shift_to_density

TARGETS = (0.8, 0.5, 0.2)
RAMP, HOLD = 10, 6


def controlled(**overrides) -> DiscoveryConfig:
    values: dict[str, Any] = dict(
        densities=TARGETS,
        max_steps=200,
        batch_size=8,
        lr=0.05,
        head_epochs=20,
        eval_every=1,
        checkpoint_every=4,
        schedule="controlled",
        init="importance",
        noise=False,
        temperature=1.0,
        ramp_steps=RAMP,
        hold_steps=HOLD,
    )
    return DiscoveryConfig(**(values | overrides))


def paper(**overrides) -> DiscoveryConfig:
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
    )
    return DiscoveryConfig(**(values | overrides))


def windows(result: DiscoveryResult, hold: int) -> dict[float, list[dict]]:
    """Per target: the evaluated rows a snapshot may come from (from its first reach, for `hold` steps, at or below)."""
    out = {}
    for target in TARGETS:
        first = min(r["step"] for r in result.history if r["density"] <= target)
        out[target] = [r for r in result.history if first <= r["step"] <= first + hold and r["density"] <= target]
    return out


def test_controlled_schedule_tracks_its_plan_and_has_no_cliff(tiny_lm, tiny_data) -> None:
    result = discover(tiny_lm, tiny_data, tiny_data, controlled(), progress=False)
    assert result.unreached == [] and [c.target_density for c in result.circuits] == list(TARGETS)
    rows = result.history[1:]
    total = FlatLayout(tuple(tiny_lm.params)).total
    for row in rows:  # every step is evaluated here: the density is the planned one, to a weight or two
        assert abs(row["density"] - row["planned_density"]) <= 2 / total, row
    assert result.history[0]["density"] == 1.0
    gaps = np.diff((1.0, *TARGETS))
    steepest = float(-gaps.min()) / RAMP  # the widest gap between consecutive targets, covered in one ramp
    drops = np.diff([r["density"] for r in result.history])
    assert drops.min() >= -steepest - 2 / total, f"a density cliff: {drops.min():.3f} in one step"
    assert drops.max() <= 2 / total, "the density never climbs back"
    for circuit in result.circuits:
        target = circuit.target_density
        assert target is not None and target - 2 / total <= circuit.density <= target


def test_geometric_schedule_ramps_at_one_pace_in_log_density(tiny_lm, tiny_data) -> None:
    """Each ramp takes `ramp_steps` per halving of the density (so 0.5 -> 0.2 takes log2(2.5) of them, where the
    linear ramp takes `ramp_steps` for any gap), and its plan halves the log-density gap at the ramp's midpoint."""
    result = discover(tiny_lm, tiny_data, tiny_data, controlled(schedule="geometric"), progress=False)
    assert [c.target_density for c in result.circuits] == list(TARGETS)
    total = FlatLayout(tuple(tiny_lm.params)).total
    rows = result.history[1:]
    for row in rows:
        assert abs(row["density"] - row["planned_density"]) <= 2 / total, row
    start, before = 0, 1.0  # a ramp starts where the last hold ended, from the density it left
    for target in TARGETS:
        ramp = [r for r in rows if r["step"] > start and r["planned_density"] > target]
        length = RAMP * np.log2(before / target)
        assert len(ramp) == int(np.ceil(length)) - 1, (target, len(ramp), length)  # every step but the last is above
        for r in ramp:
            expected = before * (target / before) ** ((r["step"] - start) / length)
            assert r["planned_density"] == pytest.approx(expected)
        start = next(r["step"] for r in rows if r["density"] <= target) + HOLD
        before = next(r["density"] for r in rows if r["step"] == start)


def test_controlled_schedule_holds_each_target_and_keeps_its_most_faithful_mask(tiny_lm, tiny_data) -> None:
    result = discover(tiny_lm, tiny_data, tiny_data, controlled(), progress=False)
    candidates = windows(result, HOLD)
    for circuit in result.circuits:
        assert circuit.target_density is not None
        rows = candidates[circuit.target_density]
        assert len(rows) == HOLD + 1, "held for the whole hold budget, one evaluation a step"
        best = max(r["faithfulness"] for r in rows)
        first_best = next(r for r in rows if r["faithfulness"] == best)
        assert circuit.provenance["faithfulness"] == best
        assert circuit.provenance["step"] == first_best["step"]
        assert {"faithfulness_low", "faithfulness_high", "kl", "complement_accuracy"} <= set(circuit.provenance)
        assert circuit.provenance["faithfulness_low"] <= best <= circuit.provenance["faithfulness_high"]
        assert circuit.provenance["selected_among"] == len(rows)  # the report says how many looks chose it


def test_select_rows_choose_each_snapshot_and_the_other_held_out_rows_report_it(tiny_lm, tiny_data) -> None:
    """With select_rows, the hold compares masks on those rows only and the snapshot's figures come from the rest:
    the two parts add up to the same evaluation over every row (the training path does not change)."""
    n, chosen_on = len(tiny_data), 8
    both = discover(tiny_lm, tiny_data, tiny_data, controlled(), progress=False)
    split = discover(tiny_lm, tiny_data, tiny_data, controlled(select_rows=chosen_on), progress=False)
    assert [r["step"] for r in split.history] == [r["step"] for r in both.history]
    for whole, part in zip(both.history, split.history, strict=True):
        assert (part["eval_rows"], part["selection_rows"]) == (n - chosen_on, chosen_on)
        agree = part["faithfulness"] * (n - chosen_on) + part["selection_faithfulness"] * chosen_on
        assert agree == pytest.approx(whole["faithfulness"] * n)
    candidates = windows(split, HOLD)
    for circuit in split.circuits:
        assert circuit.target_density is not None
        rows = candidates[circuit.target_density]
        best = max(r["selection_faithfulness"] for r in rows)
        chosen = next(r for r in rows if r["selection_faithfulness"] == best)
        assert circuit.provenance["step"] == chosen["step"]
        assert circuit.provenance["faithfulness"] == chosen["faithfulness"]  # reported on the rows that did not choose
        assert circuit.provenance["selected_among"] == len(rows) == HOLD + 1


def test_select_rows_must_leave_rows_to_report(tiny_lm, tiny_data) -> None:
    with pytest.raises(InputError, match=r"select_rows 20: must be fewer than the 20 held-out rows of toy"):
        discover(tiny_lm, tiny_data, tiny_data, controlled(select_rows=len(tiny_data)), progress=False)


def test_patience_ends_a_hold_early(tiny_lm, tiny_data) -> None:
    whole = discover(tiny_lm, tiny_data, tiny_data, controlled(hold_steps=30), progress=False)
    early = discover(tiny_lm, tiny_data, tiny_data, controlled(hold_steps=30, patience=2), progress=False)
    assert early.history[-1]["step"] < whole.history[-1]["step"]


def test_paper_schedule_snapshots_the_first_mask_below_each_target_by_default(tiny_lm, tiny_data) -> None:
    result = discover(tiny_lm, tiny_data, tiny_data, paper(), progress=False)
    for circuit in result.circuits:
        target = circuit.target_density
        assert target is not None
        first = min(r["step"] for r in result.history if r["density"] <= target)
        assert circuit.provenance["step"] == first
        assert all(r["lambda"] == 10.0 + r["epoch"] for r in result.history)


def test_paper_schedule_with_a_hold_keeps_the_most_faithful_mask_at_or_below_each_target(tiny_lm, tiny_data) -> None:
    hold = 15
    result = discover(tiny_lm, tiny_data, tiny_data, paper(hold_steps=hold, eval_every=1), progress=False)
    for target, rows in windows(result, hold).items():
        circuit = next(c for c in result.circuits if c.target_density == target)
        assert circuit.provenance["faithfulness"] == max(r["faithfulness"] for r in rows)
        assert circuit.density <= target


@pytest.mark.parametrize("interrupt_at", [5, 13, 24])  # mid ramp, mid hold, a later ramp
def test_controlled_resume_equals_an_uninterrupted_run(
    tiny_lm, tiny_data, tmp_path: Path, helpers, interrupt_at: int
) -> None:
    whole = discover(tiny_lm, tiny_data, tiny_data, controlled(), checkpoint_dir=tmp_path / "whole", progress=False)

    class Preempted(Exception):
        pass

    def preempt(row: dict[str, float]) -> None:
        if row["step"] >= interrupt_at:
            raise Preempted  # as a killed worker: the last checkpoint (every 4 steps) is all that is left

    with pytest.raises(Preempted):
        discover(
            tiny_lm,
            tiny_data,
            tiny_data,
            controlled(),
            checkpoint_dir=tmp_path / "cut",
            on_eval=preempt,
            progress=False,
        )
    resumed = discover(tiny_lm, tiny_data, tiny_data, controlled(), checkpoint_dir=tmp_path / "cut", progress=False)
    assert [c.digest for c in resumed.circuits] == [c.digest for c in whole.circuits]
    assert helpers.same_rows(resumed.history, whole.history)


def test_shift_to_density_keeps_exactly_the_highest_logits() -> None:
    logits = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    order = logits.argsort(descending=True)
    for density in (0.9, 0.5, 0.013):
        shifted = logits.clone()
        shift_to_density(shifted, density)
        kept = shifted > 0
        assert int(kept.sum()) == int(density * 10_000)
        assert bool(kept[order[: int(kept.sum())]].all())


def test_sampled_density_threshold_lands_close() -> None:
    logits = torch.randn(3_000_000, generator=torch.Generator().manual_seed(1))
    sample = density_sample(logits.numel(), logits.device)
    assert sample is not None and sample.numel() < logits.numel()
    shift_to_density(logits, 0.35, sample)
    assert abs(float((logits > 0).float().mean()) - 0.35) < 0.002


def test_importance_ranks_each_output_unit_by_weight_times_input_norm(tiny_lm, tiny_data) -> None:
    data = tokenize(tiny_lm.tokenizer, tiny_data.texts)
    layout = FlatLayout(tuple(tiny_lm.params))
    offsets = layout.split(importance_offsets(tiny_lm, data, layout, spread=3.0))
    norms = input_norms(tiny_lm, data, 16)
    named = dict(tiny_lm.model.named_parameters())
    matrices = [p for p in tiny_lm.params if len(p.shape) == 2]
    assert matrices
    for p in matrices:  # GPT-2's Conv1D stores [in, out]: each output unit is a column
        score = named[p.name].detach().abs() * norms[p.name].unsqueeze(1)
        assert torch.equal(offsets[p.name].argmax(dim=0), score.argmax(dim=0))
        assert torch.equal(offsets[p.name].argmin(dim=0), score.argmin(dim=0))
        assert float(offsets[p.name].abs().max()) <= 3.0
    vectors = [p for p in tiny_lm.params if len(p.shape) == 1]
    assert all(bool((offsets[p.name] == 3.0).all()) for p in vectors), "norm weights and biases rank first"


def test_circuit_info_json_shows_the_snapshots_faithfulness_and_completeness(
    tiny_lm, tiny_data, tmp_path: Path, capsys
) -> None:
    from circuitlib import circuits
    from circuitlib.cli import main

    result = discover(tiny_lm, tiny_data, tiny_data, controlled(densities=(0.5,)), progress=False)
    path = circuits.save(result.circuits[0], tmp_path / "c.safetensors")
    assert main(["info", "--json", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    provenance = result.circuits[0].provenance
    for key in ("faithfulness", "faithfulness_low", "faithfulness_high", "complement_accuracy", "kl"):
        assert info["provenance"][key] == pytest.approx(provenance[key])


def test_out_of_fold_targets_carry_generalisation_not_memorised_labels() -> None:
    from circuitlib.classifier import train_head
    from circuitlib.discovery import out_of_fold_logits

    gen = torch.Generator().manual_seed(0)
    features = torch.randn(60, 200, generator=gen)  # more dimensions than rows: any labelling is separable
    labels = torch.randint(0, 2, (60,), generator=gen)
    config = DiscoveryConfig(cross_fit=5, head_epochs=200, batch_size=16)
    in_sample = train_head(features, labels, 200, 1e-3, 16, 0)(features).argmax(dim=1)
    out_of_fold = out_of_fold_logits(features, labels, config).argmax(dim=1)
    assert (in_sample == labels).float().mean() == 1.0  # memorised
    assert (out_of_fold == labels).float().mean() < 0.75  # random labels cannot be predicted from other rows


Falls = Callable[[float, int], bool]


def collapsing(monkeypatch: pytest.MonkeyPatch, falls: Falls) -> None:
    """Make every evaluation for which `falls(density, call)` holds read as a collapse (faithfulness 0)."""
    real = loop.evaluate
    calls = [0]

    def evaluate(lm, task, masks, batch_size):
        row = real(lm, task, masks, batch_size)
        density = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
        call, calls[0] = calls[0], calls[0] + 1
        return {**row, "faithfulness": 0.0} if falls(density, call) else row

    monkeypatch.setattr(loop, "evaluate", evaluate)


def test_restore_puts_back_the_kept_logits_and_optimizer_so_the_next_step_is_the_same() -> None:
    logits = torch.randn(50, requires_grad=True)
    optimizer = torch.optim.AdamW([logits], lr=0.1, fused=True)

    def step(k: int) -> None:
        for _ in range(k):
            optimizer.zero_grad()
            (logits.sin() * torch.arange(50.0)).sum().backward()
            optimizer.step()

    step(3)
    kept = backoff.keep(logits, optimizer, 0.9)
    step(1)
    after_one = logits.detach().clone()
    step(4)
    for _ in range(2):  # the kept copy survives a restore, for a later fall
        backoff.restore(logits, optimizer, kept)
        assert torch.equal(logits.detach(), kept.logits)
        step(1)
        assert torch.equal(logits.detach(), after_one), "the moments came back too, so the step is the same"


@pytest.mark.parametrize("fall", [7, RAMP])  # mid ramp; the evaluation that reaches the first target
def test_a_collapse_goes_back_to_the_last_evaluation_and_doubles_the_ramp(
    tiny_lm, tiny_data, monkeypatch: pytest.MonkeyPatch, fall: int
) -> None:
    collapsing(monkeypatch, lambda density, call: call == fall)  # every step is evaluated: call n is step n
    result = discover(tiny_lm, tiny_data, tiny_data, controlled(backoff=0.5), progress=False)
    rows = {int(r["step"]): r for r in result.history}
    assert [rows[s]["backoffs"] for s in (fall - 1, fall, fall + 1)] == [0, 1, 1]
    kept = rows[fall - 1]["density"]  # the ramp restarts from the mask of the evaluation before the fall
    assert rows[fall + 1]["planned_density"] == pytest.approx(kept + (TARGETS[0] - kept) / (2 * RAMP))
    assert rows[fall + 1]["density"] >= rows[fall]["density"]
    assert [c.target_density for c in result.circuits] == list(TARGETS), "a target the fall reached opens again"
    assert all(c.provenance["step"] != fall for c in result.circuits), "the collapsed mask is no snapshot"
    reach = min(s for s, r in rows.items() if s > fall and r["density"] <= TARGETS[0])
    assert reach > fall + RAMP, "the rest of the ramp took twice the steps"


def test_without_backoff_a_collapse_is_only_recorded(tiny_lm, tiny_data, monkeypatch: pytest.MonkeyPatch) -> None:
    collapsing(monkeypatch, lambda density, call: call == 7)
    result = discover(tiny_lm, tiny_data, tiny_data, controlled(), progress=False)
    assert result.history[7]["faithfulness"] == 0.0 and "backoffs" not in result.history[7]
    assert result.history[8]["planned_density"] < result.history[7]["planned_density"], "the ramp went on"


def test_a_density_that_always_collapses_is_left_unreached(tiny_lm, tiny_data, monkeypatch: pytest.MonkeyPatch):
    """Every pass through the band falls and is backed off at half the pace before: the budget ends first."""
    collapsing(monkeypatch, lambda density, call: 0.85 < density < 0.9)
    result = discover(tiny_lm, tiny_data, tiny_data, controlled(backoff=0.5, max_steps=60), progress=False)
    assert result.circuits == [] and result.unreached == list(TARGETS)
    assert result.history[-1]["backoffs"] >= 2
    assert min(r["density"] for r in result.history if r["faithfulness"] > 0) > 0.85


@pytest.mark.parametrize("interrupt_at", [5, 22, 40])  # from a checkpoint before the first fall, and after
def test_a_resumed_run_backs_off_as_an_uninterrupted_one(
    tiny_lm, tiny_data, tmp_path: Path, helpers, monkeypatch: pytest.MonkeyPatch, interrupt_at: int
) -> None:
    collapsing(monkeypatch, lambda density, call: 0.85 < density < 0.9)
    config = controlled(backoff=0.5, max_steps=60)
    whole = discover(tiny_lm, tiny_data, tiny_data, config, checkpoint_dir=tmp_path / "whole", progress=False)

    class Preempted(Exception):
        pass

    def preempt(row: dict[str, float]) -> None:
        if row["step"] >= interrupt_at:
            raise Preempted  # the last checkpoint (every 4 steps) is all that is left

    with pytest.raises(Preempted):
        discover(
            tiny_lm, tiny_data, tiny_data, config, checkpoint_dir=tmp_path / "cut", on_eval=preempt, progress=False
        )
    resumed = discover(tiny_lm, tiny_data, tiny_data, config, checkpoint_dir=tmp_path / "cut", progress=False)
    assert whole.history[-1]["backoffs"] >= 2
    assert helpers.same_rows(resumed.history, whole.history)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(backoff=1.5), "backoff 1.5: must lie in [0, 1]"),
        (dict(backoff=0.2, schedule="paper"), "backoff 0.2: needs a schedule that plans the density"),
        (dict(backoff=0.2, eval_every=3), "checkpoint_every 4: must be a multiple of eval_every (3) with backoff"),
    ],
)
def test_bad_backoff_settings_are_refused_in_one_line(overrides: dict, message: str) -> None:
    with pytest.raises(InputError) as caught:
        controlled(**overrides)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
