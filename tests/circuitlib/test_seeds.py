"""Seeds named for what they seed, and a sweep's circuit recomputed bit for bit by `circuitlib discover`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from circuitlib import circuits, provenance
from circuitlib.cli import main as circuitlib_main
from circuitlib.discovery import discover
from circuitlib.errors import InputError
from circuitlib.seeds import mask_seed, sweep_seeds
from circuitlib.types import MaskedParam, density_key
from sweeps.config import load_preset
from sweeps.specs import DiscoveryTrial, SweepRun
from sweeps.trials import discovery_inputs, discovery_model

# Digests of the tiny preset's circuits (sweep seed 0, both targets reached at step 25), computed once by the code
# before the settings were nested and the seeds renamed (commit 0dc41b5's trial path, torch on one thread): the
# refactor must leave the sweep's results bit for bit as they were.
PRE_REFACTOR_DIGESTS = {
    "determiner_noun": "17b0ba4349d1170b7dfa4e440960c386e2834f5cca211537610c4e487c314b9e",
    "hierarchy": "734ad946a769bc01c95f0cb766e8784362b2d61680e79dd3b375d32747f6c011",
}


def test_mask_seeds_are_independent_across_datasets_and_stable() -> None:
    assert mask_seed("blimp_dna1", 0) == mask_seed("blimp_dna1", 0)
    assert len({mask_seed(d, s) for d in ("blimp_dna1", "hierarchy", "persona_e") for s in (0, 1)}) == 6


def test_a_sweep_seed_splits_and_draws_random_masks_as_before() -> None:
    seeds = sweep_seeds("hierarchy", 3)
    assert (seeds.split_seed, seeds.random_mask_seed) == (3, 3)
    assert seeds.mask_seed == mask_seed("hierarchy", 3) != 3


def test_a_trial_runs_on_the_sweeps_settings_with_its_datasets_mask_seed() -> None:
    preset = load_preset("tiny")
    split, config = preset.trial_inputs("builtin:hierarchy", 1)
    assert config.mask_seed == sweep_seeds("hierarchy", 1).mask_seed != preset.discovery.mask_seed
    assert dataclasses.replace(config, mask_seed=preset.discovery.mask_seed) == preset.discovery
    assert split == preset.split_spec("builtin:hierarchy", 1)


@pytest.mark.parametrize("dataset", sorted(PRE_REFACTOR_DIGESTS))
def test_sweep_circuit_is_recomputed_bit_for_bit_by_the_cli(dataset: str, tmp_path: Path) -> None:
    """The tiny sweep's discovery path, then `circuitlib discover` with only what the circuit file records."""
    trial = DiscoveryTrial(SweepRun(load_preset("tiny"), "0", "p"), dataset, 0)
    split, config = discovery_inputs(trial)
    lm = discovery_model(trial.sweep.config)
    result = discover(lm, *split.load(), config, progress=False)
    assert [c.target_density for c in result.circuits] == [0.5, 0.2]
    assert {c.digest for c in result.circuits} == {PRE_REFACTOR_DIGESTS[dataset]}

    circuit = result.circuits[-1]
    stored = circuits.load(circuits.save(provenance.stamp(circuit, split, lm), tmp_path / "sweep.safetensors"))
    assert stored.provenance["mask_seed"] == trial.seeds.mask_seed
    assert stored.provenance["split"]["split_seed"] == trial.seeds.split_seed
    out = tmp_path / "cli"
    assert circuitlib_main(["discover", *provenance.discover_args(stored), "--out", str(out)]) == 0
    assert circuit.target_density is not None
    again = circuits.load(out / f"circuit_d{density_key(circuit.target_density)}.safetensors")
    assert again.digest == circuit.digest
    assert again.provenance["split"] == stored.provenance["split"]
    assert again.provenance["config"] == stored.provenance["config"]


def test_a_circuit_stamped_before_min_eval_rows_is_recomputed_without_a_minimum() -> None:
    """min_eval_rows's default (100) changes the split, so a provenance without it reads the old split (0)."""
    recorded = {
        "split": {"dataset": "builtin:hierarchy", "limit": 64, "eval_fraction": 0.2, "split_seed": 0},
        "model_dtype": "float32",
        "config": {},
    }
    old = circuits.Circuit.from_masks(
        [MaskedParam("w", (4,), "mlp", 0)],
        {"w": torch.ones(4, dtype=torch.bool)},
        "tiny-gpt2",
        None,
        target_density=0.5,
        provenance=recorded,
    )
    args = provenance.discover_args(old)
    assert args[args.index("--min-eval-rows") + 1] == "0"


def test_a_circuit_found_on_bfloat16_weights_says_it_cannot_be_recomputed(tmp_path: Path, capsys) -> None:
    """Before issue 10 a GPU sweep could load the model in bfloat16 (`dtype: auto`); discovery now runs on float32
    weights only, so such a circuit's recompute line is refused in words, and an old `--dtype float32` still runs."""
    recorded = {
        "split": {"dataset": "builtin:hierarchy", "limit": 64, "eval_fraction": 0.2, "split_seed": 0},
        "model_dtype": "bfloat16",
        "config": {},
    }
    old = circuits.Circuit.from_masks(
        [MaskedParam("w", (4,), "mlp", 0)],
        {"w": torch.ones(4, dtype=torch.bool)},
        "tiny-gpt2",
        None,
        target_density=0.5,
        provenance=recorded,
    )
    with pytest.raises(InputError, match="found on bfloat16 weights by an older circuitlib"):
        provenance.discover_args(old)
    path = circuits.save(old, tmp_path / "old.safetensors")
    assert circuitlib_main(["info", str(path)]) == 0
    assert "recompute       n/a: circuit of tiny-gpt2: found on bfloat16" in capsys.readouterr().out
    args = [
        "discover",
        "--model",
        "tiny-gpt2",
        "--dataset",
        "builtin:hierarchy",
        "--limit",
        "16",
        "--max-steps",
        "1",
        "--head-epochs",
        "1",
        "--out",
        str(tmp_path / "run"),
    ]
    assert circuitlib_main([*args, "--dtype", "bfloat16"]) == 2
    assert "--dtype bfloat16: retired" in capsys.readouterr().err
    assert circuitlib_main([*args, "--dtype", "float32"]) == 0
