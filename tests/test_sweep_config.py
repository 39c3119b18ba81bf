"""Sweep presets, overrides, validation and trial enumeration (no Ray, no MLflow)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from circuitlib.errors import InputError
from sweeps import layout
from sweeps.config import SweepConfig, load_preset, preset_names
from sweeps.progress import estimate_left, format_duration
from sweeps.size_sweep import discovery_trials, edit_trials, freeze_params, parse_args, resolve_config, trial_resources

REPO = Path(__file__).resolve().parents[1]


def test_presets_exist_and_validate():
    assert {"paper", "smollm2-cpu", "tiny"} <= set(preset_names())
    for name in preset_names():
        config = load_preset(name)
        assert config.name == name
        config.validate()
    paper = load_preset("paper")
    assert paper.model == "gpt2-xl" and paper.densities == [0.5, 0.35, 0.25, 0.15, 0.05]
    assert paper.require_gpu and set(paper.variants) == {"circuit", "complement", "random"} and paper.include_full


def test_overrides_parse_lists_numbers_and_strings(tmp_path):
    args = parse_args([
        "--preset", "tiny", "--densities", "0.4,0.1", "--datasets", "determiner_noun", "--seeds", "[1, 2]",
        "--max-steps", "7", "--name", "x1", "--work-dir", str(tmp_path), "--edit-limit", "2",
    ])
    config = resolve_config(args)
    assert config.densities == [0.4, 0.1]
    assert config.datasets == ["determiner_noun"]
    assert config.seeds == [1, 2]
    assert config.max_steps == 7 and config.name == "x1" and config.experiment == "x1"
    assert config.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert config.storage_path == str(tmp_path.resolve() / "ray")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--densities", "0.5,1.5"], "densities"),
        (["--datasets", "no_such_dataset"], "no_such_dataset"),
        (["--datasets", "csv:/no/such/file.csv"], "/no/such/file.csv"),
        (["--variants", "circuit,bogus"], "bogus"),
        (["--requests", "json:/no/such.json"], "/no/such.json"),
        (["--require-gpu", "true", "--gpus-per-trial", "0"], "GPU"),
    ],
)
def test_bad_configs_are_rejected_before_any_trial(flags, message):
    with pytest.raises(InputError, match=message.replace("/", ".")):
        resolve_config(parse_args(["--preset", "tiny", *flags]))


def test_unknown_preset():
    with pytest.raises(InputError, match="no such preset"):
        load_preset("nope")


def test_cli_rejects_bad_config_with_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "size_sweep.py"), "--preset", "tiny", "--densities", "0,0.5",
         "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "densities" in lines[0] and "(0, 1)" in lines[0]
    assert not (tmp_path / "tiny").exists()  # nothing started


def test_gpu_needed_but_cluster_has_none():
    paper = load_preset("paper")
    with pytest.raises(InputError, match="needs GPUs"):
        trial_resources(paper, {"CPU": 16.0})
    assert trial_resources(paper, {"CPU": 16.0, "GPU": 2.0}) == {"cpu": 4, "gpu": 1}
    assert trial_resources(paper, {"CPU": 2.0}, can_grow=True) == {"cpu": 4, "gpu": 1}
    tiny = load_preset("tiny")
    assert trial_resources(tiny, {"CPU": 2.0}) == {"cpu": 1, "gpu": 0}
    assert trial_resources(tiny, {"CPU": 2.0, "GPU": 1.0}) == {"cpu": 1, "gpu": 1}


def test_trial_enumeration_matches_the_data_flow():
    config = load_preset("tiny")
    common = {"sweep": {}, "experiment_id": "0", "parent_run_id": "p"}
    discover = discovery_trials(config, common)
    assert [t["key"] for t in discover] == ["discover/determiner_noun/seed0", "discover/hierarchy/seed0"]
    found = [
        {"dataset": "determiner_noun", "seed": 0, "run_id": "a", "reached": "0.5,0.2"},
        {"dataset": "hierarchy", "seed": 0, "run_id": "b", "reached": "0.5"},  # 0.2 never reached
    ]
    edits = edit_trials(config, common, found)
    shards = config.shards()
    assert shards == 2  # 4 requests, 2 per shard
    assert len(edits) == (2 + 1) * 3 * shards + shards
    keys = [t["key"] for t in edits]
    assert len(set(keys)) == len(keys)
    assert "edit/determiner_noun/d0.2/complement/shard1" in keys
    assert "edit/hierarchy/d0.2/circuit/shard0" not in keys
    assert keys.count(layout.edit_run_name(None, None, "full", 0)) == 1
    assert all(t["circuit_run_id"] == "b" for t in edits if t.get("dataset") == "hierarchy")


def test_params_are_frozen_per_sweep_name(tmp_path):
    config = SweepConfig(name="s", work_dir=str(tmp_path)).resolved()
    freeze_params(config)
    freeze_params(config)  # same settings: fine
    changed = SweepConfig(name="s", work_dir=str(tmp_path), max_steps=3).resolved()
    with pytest.raises(InputError, match="max_steps"):
        freeze_params(changed)


def test_progress_estimates():
    assert format_duration(5) == "5s" and format_duration(125) == "2m05s" and format_duration(7300) == "2h01m"
    assert estimate_left([10.0, 20.0], remaining=4, running=2) == pytest.approx(30.0)
    assert estimate_left([], remaining=3, running=1) is None
    assert estimate_left([5.0], remaining=0, running=0) == 0.0


def test_discovery_seeds_are_independent_across_datasets_and_stable():
    from sweeps.trials import mask_seed

    assert mask_seed("blimp_dna1", 0) == mask_seed("blimp_dna1", 0)
    assert len({mask_seed(d, s) for d in ("blimp_dna1", "hierarchy", "persona_e") for s in (0, 1)}) == 6
