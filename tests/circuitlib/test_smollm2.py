"""The real smollm2-135m on CPU, offline: it knows a fact, and a short discovery plus edits run end to end on the
paper's hierarchy data. Slow (minutes on two cores)."""

from __future__ import annotations

import math

import pytest
import torch

from circuitlib import data
from circuitlib.discovery import DiscoveryConfig, discover
from circuitlib.editing import EditConfig, edit_requests, variant_masks

pytestmark = pytest.mark.acceptance


def test_loads_offline_and_knows_a_cat_is_an_animal(smollm2) -> None:
    assert smollm2.model_id == "smollm2-135m"
    assert len(smollm2.params) == 30 * 9  # 30 Llama blocks: q, k, v, o, gate, up, down and two RMSNorms
    assert {p.module_type for p in smollm2.params} == {"attention", "mlp", "norm"}
    inputs = smollm2.tokenizer("A cat is a kind of", return_tensors="pt")
    with torch.no_grad():
        out = smollm2.model.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert smollm2.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :]) == " animal"


def test_short_discovery_and_circuit_edits_on_hierarchy_data(smollm2, shared_data, helpers) -> None:
    dataset = data.load_classification(f"csv:{shared_data('hierarchy_label.csv')}", limit=64, seed=0)
    train, eval_data = data.split(dataset, 0.25, seed=0)
    # A high lr and lambda so the logits (N(2.7, 0.01) at the start) cross 0 within a few steps: with 1e8 logits the
    # penalty's gradient per logit (lambda * s(1 - s) / 1e8) is below AdamW's eps at the paper's lambda of 10.
    config = DiscoveryConfig(
        densities=(0.5,),
        max_steps=20,
        batch_size=16,
        head_epochs=50,
        lr=0.5,
        lambda_init=100.0,
        eval_every=1000,
        mask_seed=0,
    )
    before = helpers.clone_state(smollm2.model)
    result = discover(smollm2, train, eval_data, config, progress=False)
    assert result.unreached == [], result.history[-1]
    [circuit] = result.circuits
    assert circuit.target_density == 0.5 and circuit.density <= 0.5
    assert circuit.total == sum(p.numel for p in smollm2.params)
    last = result.history[-1]
    assert last["density"] == circuit.density and last["step"] <= config.max_steps
    for row in result.history:
        assert all(math.isfinite(v) for k, v in row.items() if k != "loss" or row["step"] > 0), row
        assert 0.0 <= row["faithfulness"] <= 1.0
    assert result.full_accuracy > 0.5  # the frozen model plus its head beats chance on hierarchy facts
    assert helpers.differing(smollm2.model, before) == []

    requests = data.load_requests(f"json:{shared_data('hierarchy_data.json')}")
    masks = variant_masks(circuit, "circuit")
    results = edit_requests(
        smollm2, requests[:3], "circuit", masks, EditConfig(max_steps=3), pool=requests, progress=False
    )
    assert [r.case_id for r in results] == [q.case_id for q in requests[:3]]
    for r in results:
        assert 1 <= r.steps <= 3
        for name in (
            "nll_new_pre",
            "nll_true_pre",
            "nll_new_post",
            "nll_true_post",
            "nll_new_drop",
            "efficacy_score",
            "efficacy_magnitude",
            "paraphrase_score",
            "neighborhood_score",
        ):
            assert math.isfinite(getattr(r, name)), (name, r)
        assert r.nll_new_drop == pytest.approx(r.nll_new_pre - r.nll_new_post)
    assert helpers.differing(smollm2.model, before) == []  # every weight restored bit for bit after the edits
