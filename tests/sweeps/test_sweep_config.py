"""Sweep presets, overrides, validation, trial specs and the frozen settings of a sweep (no Ray)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from circuitlib import options
from circuitlib.circuits import Circuit
from circuitlib.data import Split
from circuitlib.discovery import DiscoveryConfig, Method
from circuitlib.editing import EditConfig
from circuitlib.errors import InputError
from circuitlib.types import PAPER_DENSITIES, MaskedParam
from record import names, store
from record.names import RunKind
from sweeps import config as sweep_config
from sweeps.config import SweepConfig, apply_overrides, load_preset, preset_names
from sweeps.progress import estimate_left, format_duration
from sweeps.size_sweep import (
    check_params,
    found_circuits,
    freeze_params,
    main,
    parse_args,
    phase_resources,
    resolve_config,
    run_phase,
    settle_phase,
    trial_resources,
)
from sweeps.specs import (
    CircuitRef,
    EditTrial,
    SweepRun,
    discovery_trials,
    edit_trials,
    from_tune,
    tune_config,
)
from sweeps.trials import snapshot_honesty

REPO = Path(__file__).resolve().parents[2]


SHARED_DATA = REPO.parent / "shared" / "data"  # the paper's sets, beside the repository (absent in a bare clone)


def test_presets_exist_and_validate():
    assert {"paper", "smollm2-cpu", "smollm2-window", "tiny"} <= set(preset_names())
    for name in preset_names():
        config = load_preset(name)
        assert config.name == name
        if name != "smollm2-window" or SHARED_DATA.is_dir():
            config.validate()


def test_the_window_preset_runs_the_papers_densities_with_an_edge_each_side():
    window = load_preset("smollm2-window")
    densities = window.discovery.densities
    assert set(PAPER_DENSITIES) < set(densities)
    assert max(densities) > max(PAPER_DENSITIES) and min(densities) < min(PAPER_DENSITIES)  # both edges observable
    assert len(window.datasets) == 6 and len(window.seeds) == 2 and window.variants and window.include_full
    assert window.discovery.select_rows > 0 and window.split.min_eval_rows >= 300 + window.discovery.select_rows
    assert window.discovery.schedule == "controlled" and window.discovery.checkpoint_every >= 100
    paper = load_preset("paper")
    assert paper.model == "gpt2-xl" and paper.discovery.densities == (0.5, 0.35, 0.25, 0.15, 0.05)
    assert paper.require_gpu and set(paper.variants) == {"circuit", "complement", "random"} and paper.include_full


# The tiny preset's discovery and edit settings as the flat SweepConfig held them before the nesting (the old trial
# mapped exactly these onto DiscoveryConfig and EditConfig): the nested preset must ask for the same runs. (The paper
# preset's discovery moved to the controlled schedule on purpose: docs/design.md §3.7.)
FLAT_PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "tiny": (
        dict(
            densities=(0.5, 0.2), max_steps=200, batch_size=16, lr=0.1, head_epochs=20, eval_every=5, checkpoint_every=5
        ),
        dict(max_steps=3, lr=0.01, max_change=0.01),
    ),
}


@pytest.mark.parametrize("name", sorted(FLAT_PRESETS))
def test_presets_ask_for_the_same_settings_as_before_the_nesting(name):
    discovery, edit = FLAT_PRESETS[name]
    config = load_preset(name)
    assert config.discovery == DiscoveryConfig(**discovery)
    assert config.edit == EditConfig(**edit)


def test_the_demo_and_the_paper_preset_discover_with_the_controlled_schedule():
    demo, paper = load_preset("smollm2-cpu"), load_preset("paper")
    discovery = demo.discovery
    assert (discovery.schedule, discovery.init, discovery.loss) == ("controlled", "importance", "features")
    assert demo.discovery.method.hold_steps > 0 and demo.split.min_eval_rows >= 100
    method = paper.discovery.method
    assert paper.discovery.schedule == "controlled" and (method.init, method.loss) == ("importance", "features")
    assert method.hold_steps > 0 and not method.noise
    assert paper.discovery.select_rows > 0 and paper.split.min_eval_rows >= 300 + paper.discovery.select_rows


def test_the_papers_own_procedure_is_one_setting_away():
    """`--discovery.schedule paper` on the paper preset gives the paper's whole method, not the window's with the
    paper's schedule: the preset leaves the method's settings to the schedule."""
    args = parse_args(["--preset", "paper", "--discovery.schedule", "paper"])
    paper = apply_overrides(load_preset("paper"), args).discovery
    assert paper.schedule == "paper"
    assert paper.method == Method(init="uniform", noise=True, temperature=0.01, loss="ce", hold_steps=0)


def test_a_benchmark_takes_discovery_settings_over_its_preset():
    """The benchmarks that run discovery take `--discovery.*` only; a bad value names its option in one line."""
    parser = argparse.ArgumentParser()
    sweep_config.add_discovery_arguments(parser)
    preset = load_preset("smollm2-window")
    args = parser.parse_args(["--discovery.head-l2", "0.125", "--discovery.densities", "0.5,0.05"])
    changed = sweep_config.apply_discovery_overrides(preset, args)
    assert (changed.discovery.head_l2, changed.discovery.densities) == (0.125, (0.5, 0.05))
    assert changed.discovery.lr == preset.discovery.lr and changed.datasets == preset.datasets
    assert sweep_config.apply_discovery_overrides(preset, parser.parse_args([])) == preset
    with pytest.raises(InputError, match=r"--discovery\.head_l2.*-1"):
        sweep_config.apply_discovery_overrides(preset, parser.parse_args(["--discovery.head-l2", "-1"]))


def test_overrides_parse_lists_numbers_bools_and_strings(tmp_path):
    args = parse_args(
        [
            "--preset",
            "tiny",
            "--discovery.densities",
            "0.4,0.1",
            "--datasets",
            "determiner_noun",
            "--seeds",
            "[1, 2]",
            "--discovery.max_steps",
            "7",
            "--discovery.lr",
            "1e-3",
            "--edit.max-steps",
            "2",
            "--name",
            "x1",
            "--work-dir",
            str(tmp_path),
            "--edit-limit",
            "2",
            "--discovery.compile_model",
            "--include-full",
            "false",
            "--discovery.fused",
            "false",
            "--gpus-per-trial",
            "none",
        ]
    )
    config = resolve_config(args)
    assert config.discovery.densities == (0.4, 0.1)
    assert config.discovery.max_steps == 7 and config.discovery.lr == 0.001 and config.discovery.batch_size == 16
    assert config.discovery.compile_model is True and config.discovery.fused is False
    assert config.edit == EditConfig(max_steps=2, lr=0.01, max_change=0.01)
    assert config.datasets == ["determiner_noun"]
    assert config.seeds == [1, 2]
    assert config.include_full is False and config.gpus_per_trial is None
    assert config.name == "x1" and config.experiment == "x1"
    assert config.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert config.storage_path == str(tmp_path.resolve() / "ray")


def test_every_library_setting_is_a_sweep_option():
    args = parse_args(["--preset", "tiny"])
    for f in dataclasses.fields(DiscoveryConfig):
        assert hasattr(args, f"discovery.{f.name}")
    for f in dataclasses.fields(EditConfig):
        assert hasattr(args, f"edit.{f.name}")
    for f in dataclasses.fields(Split):
        assert hasattr(args, f"split.{f.name}")


@pytest.mark.parametrize("preset", preset_names())
def test_a_config_flattens_to_dotted_params_and_reads_back_from_them(preset, tmp_path):
    """The one flat form of a config (MLflow params): dotted keys, one per setting, and its inverse, from the values
    or from the text MLflow stores them as."""
    config = load_preset(preset)
    flat = options.flatten(config)
    assert flat["split.min_eval_rows"] == config.split.min_eval_rows and flat["discovery.lr"] == config.discovery.lr
    assert not any(dataclasses.is_dataclass(v) for v in flat.values())
    assert options.unflatten(SweepConfig, flat) == config
    assert options.unflatten(SweepConfig, store.flat_params(flat)) == config
    with pytest.raises(InputError, match=r"split\.limitt: no such setting"):
        options.unflatten(SweepConfig, {**flat, "split.limitt": 3})


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--discovery.densities", "0.5,1.5"], "discovery.densities '0.5,1.5'"),
        (["--discovery.lr", "-1"], "discovery.lr '-1': must be a finite number above 0"),
        (["--discovery.precision", "fp8"], "discovery.precision 'fp8': must be one of fp32, bf16"),
        (["--discovery.mask-seed", "3"], "discovery.mask_seed 3: a sweep derives it"),
        (["--edit.max_steps", "x"], "edit.max_steps 'x': expected an integer"),
        (["--datasets", "no_such_dataset"], "no_such_dataset"),
        (["--datasets", "csv:/no/such/file.csv"], "/no/such/file.csv"),
        (["--variants", "circuit,bogus"], "variants 'circuit,bogus': item 'bogus' must be one of circuit, complement"),
        (["--requests", "json:/no/such.json"], "/no/such.json"),
        (["--require-gpu", "true", "--gpus-per-trial", "0"], "GPU"),
        (["--gpus-per-edit-trial", "0"], "gpus_per_edit_trial '0': must lie in (0, 1]"),
        (["--gpus-per-edit-trial", "1.5"], "gpus_per_edit_trial '1.5': must lie in (0, 1]"),
        (["--dtype", "auto"], "--dtype: retired: .* discovery.precision is the one precision switch"),
        (["--data-limit", "50"], "--data-limit: moved: split.limit in a preset, --split.limit on the command line"),
        (["--split.eval-fraction", "1.5"], "split.eval_fraction '1.5': must"),
        (["--split.limit", "1"], "split.limit '1': must be an integer of at least 2"),
        (["--name", "it's"], 'name "it\'s": must be letters, digits, _ . - only'),
        (["--name", "../escape"], "name '../escape': must be letters"),
        (["--name", "/tmp/x"], "name '/tmp/x': must be letters"),
        (["--storage-path", "ftp://host/x"], "storage_path 'ftp://host/x': must be a local path or a URI of s3://"),
        (["--model", "/nonexistent"], "model /nonexistent: no such directory"),
        (["--max-failures", "-5"], "max_failures '-5': must be an integer of at least 0"),
        (["--max-failures", "-1"], "max_failures '-1': must be an integer of at least 0"),
        (["--seeds", "x"], "seeds 'x': expected an integer"),
        (["--discovery.lr", "nan"], "discovery.lr 'nan': must be a finite number above 0"),
        (["--discovery.eval_every", "0"], "discovery.eval_every '0': must be an integer of at least 1"),
        (["--discovery.checkpoint_every", "-1"], "discovery.checkpoint_every '-1': must be an integer of at least 1"),
        (["--discovery.max_steps", "abc"], "discovery.max_steps 'abc': expected an integer"),
        (["--discovery.densities", "abc"], "discovery.densities 'abc': expected a number"),
    ],
)
def test_bad_configs_are_rejected_before_any_trial(flags, message):
    with pytest.raises(InputError, match=message.replace("/", ".").replace("(", r"\(")):
        resolve_config(parse_args(["--preset", "tiny", *flags]))


def test_a_retired_setting_in_a_preset_or_a_frozen_sweep_is_refused_with_what_replaced_it(tmp_path, monkeypatch):
    """`dtype` (the whole model in bfloat16 on a GPU) gave way to discovery.precision (issue 10, item 1)."""
    (tmp_path / "old.yaml").write_text("model: tiny-gpt2\ndtype: auto\n")
    monkeypatch.setattr(sweep_config, "PRESETS_DIR", tmp_path)
    with pytest.raises(InputError, match=r"preset old: dtype: retired: .*discovery.precision.*; remove it from"):
        load_preset("old")
    monkeypatch.undo()
    config = SweepConfig(name="s", work_dir=str(tmp_path)).resolved()
    path = tmp_path / "s" / "params.json"
    path.parent.mkdir()
    path.write_text(json.dumps(dataclasses.asdict(config) | {"dtype": "auto"}))
    with pytest.raises(InputError, match=r"started with dtype auto: retired: .*another --name"):
        freeze_params(config)


def test_split_settings_outside_the_split_section_are_refused_with_where_they_moved(tmp_path, monkeypatch):
    """data_limit, eval_fraction and min_eval_rows moved into `split` (one declaration: circuitlib.data.Split); a
    preset, a flag or a sweep frozen by an older circuitlib that still sets them gets one line saying where."""
    (tmp_path / "old.yaml").write_text("model: tiny-gpt2\nmin_eval_rows: 50\n")
    monkeypatch.setattr(sweep_config, "PRESETS_DIR", tmp_path)
    with pytest.raises(InputError, match=r"preset old: min_eval_rows: moved: split.min_eval_rows in a preset"):
        load_preset("old")
    monkeypatch.undo()
    config = SweepConfig(name="s", work_dir=str(tmp_path)).resolved()
    frozen = dataclasses.asdict(config)
    path = tmp_path / "s" / "params.json"
    path.parent.mkdir()
    path.write_text(json.dumps({k: v for k, v in frozen.items() if k != "split"} | {"data_limit": None}))
    with pytest.raises(InputError, match=r"started with data_limit None: moved: split.limit .*another --name"):
        freeze_params(config)
    path.write_text(json.dumps(frozen))
    assert freeze_params(config)  # the same settings, frozen in sections, resume


def test_the_paper_preset_runs_discovery_in_bf16_autocast_over_float32_weights():
    """The one precision path of a GPU sweep: the trial loads float32 weights and precision bf16 autocasts them."""
    from sweeps.trials import discovery_model

    assert load_preset("paper").discovery.precision == "bf16"
    assert load_preset("smollm2-cpu").discovery.precision == load_preset("tiny").discovery.precision == "fp32"
    assert discovery_model(load_preset("tiny")).model.dtype == torch.float32


def test_unknown_settings_in_a_preset_section_are_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "bad.yaml").write_text("model: tiny-gpt2\ndiscovery:\n  lr: 0.1\n  bogus: 3\n")
    (tmp_path / "flat.yaml").write_text("model: tiny-gpt2\nlr: 0.1\n")
    (tmp_path / "wrong.yaml").write_text("discovery:\n  lr: fast\n")
    monkeypatch.setattr(sweep_config, "PRESETS_DIR", tmp_path)
    with pytest.raises(InputError, match=r"preset bad: discovery.bogus: no such setting \(known: densities, max_steps"):
        load_preset("bad")
    with pytest.raises(InputError, match="preset flat: lr: no such setting"):
        load_preset("flat")
    with pytest.raises(InputError, match="preset wrong: discovery.lr 'fast': expected a number"):
        load_preset("wrong")


def test_an_unknown_option_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--preset", "tiny", "--discovery.bogus", "1"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--discovery.bogus" in lines[0] and "--help" in lines[0]


def test_unknown_preset():
    with pytest.raises(InputError, match="no such preset"):
        load_preset("nope")


def test_cli_rejects_bad_config_with_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "sweeps" / "size_sweep.py"),
            "--preset",
            "tiny",
            "--discovery.densities",
            "0,0.5",
            "--work-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
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


def test_edit_trials_ask_ray_tune_for_their_gpu_share(tmp_path, monkeypatch):
    """gpus_per_edit_trial reaches the resources Ray Tune gives each edit trial; discovery keeps a whole GPU, and on a
    cluster without GPUs the share asks for none."""
    from ray import tune

    captured: dict[str, object] = {}

    class FakeTuner:
        def __init__(self, trainable, **kwargs):
            captured["resources"] = trainable._resources.required_resources

        @staticmethod
        def can_restore(path):
            return False

        def fit(self):
            return None

    monkeypatch.setattr(tune, "Tuner", FakeTuner)
    paper = dataclasses.replace(load_preset("paper"), storage_path=str(tmp_path))
    assert paper.gpus_per_edit_trial == 0.25
    base = trial_resources(paper, {"CPU": 16.0, "GPU": 2.0})
    trials = discovery_trials(run_of(paper))[:1]
    for phase, gpus in ((RunKind.DISCOVER, 1), (RunKind.EDIT, 0.25)):
        run_phase(phase, lambda config: None, trials, paper, base)
        assert captured["resources"] == {"CPU": 4, "GPU": gpus}
    assert phase_resources(load_preset("tiny"), {"cpu": 1, "gpu": 0}, RunKind.EDIT) == {"cpu": 1, "gpu": 0}
    whole = dataclasses.replace(paper, gpus_per_edit_trial=None)
    assert phase_resources(whole, base, RunKind.EDIT) == base


def test_a_trial_tune_ended_cleanly_but_unfinished_in_mlflow_runs_again_in_a_new_experiment(tmp_path, monkeypatch):
    """A restored Tune experiment once stopped a restarted trial early and called it terminated, so restoring it again
    would never rerun it: such a trial (no error, no FINISHED run) runs again, alone, in a fresh `-retryN` experiment,
    while a trial that errored is left for a rerun of the sweep to resume and a finished one is left alone."""
    from ray import tune

    from sweeps import size_sweep

    fits: list[tuple[str, list[str]]] = []  # (experiment name, trial keys) of each fit
    existing = {"retry1"}  # an earlier retry's experiment is on disk: the next retry takes a new name
    errors = {"discover/hierarchy/seed0": RuntimeError("killed")}

    class FakeTuner:
        def __init__(self, trainable, param_space, run_config, **kwargs):
            self.name, self.keys = run_config.name, [c["key"] for c in param_space["trial"]["grid_search"]]

        @staticmethod
        def can_restore(path):
            return path.rsplit("-", 1)[-1] in existing

        @classmethod
        def restore(cls, path, **kwargs):
            raise AssertionError(f"a retry must not restore {path}")

        def fit(self):
            fits.append((self.name, self.keys))
            return [SimpleNamespace(config={"trial": {"key": k}}, error=errors.get(k)) for k in self.keys]

    monkeypatch.setattr(tune, "Tuner", FakeTuner)
    tiny = dataclasses.replace(
        load_preset("tiny"),
        storage_path=str(tmp_path),
        datasets=("determiner_noun", "hierarchy", "csv:/data/third.csv"),
    )
    trials = discovery_trials(run_of(tiny))
    keys = [t.key for t in trials]
    assert len(keys) == 3
    left = [keys[0], keys[1]]  # the first ended cleanly but never finished; the second errored; the third finished
    monkeypatch.setattr(size_sweep, "unfinished", lambda client, run, trials: [t.key for t in trials if t.key in left])
    settle_phase(RunKind.DISCOVER, lambda config: None, trials, run_of(tiny), None, {"cpu": 1, "gpu": 0})
    assert [f[1] for f in fits] == [keys, [keys[0]]]
    assert fits[1][0].endswith("-retry2") and fits[1][0].startswith(f"{tiny.name}-discover-")

    fits.clear()
    left = [keys[1]]  # only the errored trial is unfinished: nothing runs twice
    settle_phase(RunKind.DISCOVER, lambda config: None, trials, run_of(tiny), None, {"cpu": 1, "gpu": 0})
    assert [f[1] for f in fits] == [keys]


def run_of(config: SweepConfig) -> SweepRun:
    return SweepRun(config, "0", "p")


def test_trial_enumeration_matches_the_data_flow():
    run = run_of(load_preset("tiny"))
    discover = discovery_trials(run)
    assert [t.key for t in discover] == ["discover/determiner_noun/seed0", "discover/hierarchy/seed0"]
    found = [
        CircuitRef("determiner_noun", 0, 0.5, "a"),
        CircuitRef("determiner_noun", 0, 0.2, "a"),
        CircuitRef("hierarchy", 0, 0.5, "b"),
    ]  # hierarchy never reached 0.2
    edits = edit_trials(run, found)
    shards = run.config.shards()
    assert shards == 2  # 4 requests, 2 per shard
    assert len(edits) == (2 + 1) * 3 * shards + shards
    keys = [t.key for t in edits]
    assert len(set(keys)) == len(keys)
    assert "edit/determiner_noun/d0.2/complement/shard1" in keys
    assert "edit/hierarchy/d0.2/circuit/shard0" not in keys
    assert keys.count(names.edit_run_name(None, None, "full", 0)) == 1
    assert all(t.circuit.run_id == "b" for t in edits if t.circuit and t.circuit.dataset == "hierarchy")


def test_trial_specs_travel_through_tune_as_plain_data():
    run = run_of(load_preset("tiny"))
    trials = [*discovery_trials(run), *edit_trials(run, [CircuitRef("hierarchy", 0, 0.5, "b")])]
    for trial in trials:
        config = tune_config(trial)
        assert config["key"] == trial.key
        assert json.loads(json.dumps(config)) == json.loads(json.dumps(config))  # JSON-able: Tune logs it
        assert from_tune(type(trial), json.loads(json.dumps(config))) == trial


def test_one_spelling_of_a_target_density():
    ref = CircuitRef("blimp_dna1", 0, 0.05, "r")
    assert ref.artifact == names.circuit_artifact(0.05) == "circuits/d0.05.safetensors"
    trial = EditTrial(run_of(load_preset("tiny")), "random", 3, ref)
    assert trial.key == "edit/blimp_dna1/d0.05/random/shard3"
    assert names.circuit_artifact(0.35) == "circuits/d0.35.safetensors"


def test_phase_two_edits_the_circuits_mlflow_records(tmp_path):
    """Only finished discovery runs count, and only the targets their `reached` tag names."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = dataclasses.replace(load_preset("tiny"), tracking_uri=uri)
    client = store.client_for(uri)
    exp = store.experiment_id(client, "t", (tmp_path / "artifacts").as_uri())
    parent = store.open_sweep_run(client, exp, "t", {}, config.settings_hash())
    run = SweepRun(config, exp, parent)
    trials = discovery_trials(run)
    for trial, status, reached in zip(trials, ("FINISHED", "FAILED"), ("0.5,0.2", "0.5"), strict=True):
        run_id, _ = store.open_trial_run(
            client, exp, parent, trial.key, {names.TAG_KIND: "discover"}, {}, run.settings_hash
        )
        store.set_tags(client, run_id, {names.TAG_REACHED: reached})
        client.set_terminated(run_id, status)
    found = found_circuits(client, run, trials)
    assert [(c.dataset, c.target) for c in found] == [("determiner_noun", 0.5), ("determiner_noun", 0.2)]


def test_params_are_frozen_per_sweep_name(tmp_path):
    config = SweepConfig(name="s", work_dir=str(tmp_path)).resolved()
    freeze_params(config)
    freeze_params(config)  # same settings: fine
    changed = SweepConfig(name="s", work_dir=str(tmp_path), discovery=DiscoveryConfig(max_steps=3)).resolved()
    with pytest.raises(InputError, match="discovery.max_steps"):
        freeze_params(changed)


def test_a_setting_added_since_the_sweep_was_frozen_resumes_at_its_default(tmp_path):
    config = SweepConfig(name="s", work_dir=str(tmp_path)).resolved()
    freeze_params(config)
    path = tmp_path / "s" / "params.json"
    frozen = json.loads(path.read_text())
    del frozen["discovery"]["temperature"], frozen["edit"]["neighbors"], frozen["shard_size"]
    path.write_text(json.dumps(frozen))
    assert check_params(config)  # resumed, not refused as other settings
    assert json.loads(path.read_text()) == frozen  # and the frozen file is kept as it was
    with pytest.raises(InputError, match="temperature"):  # the missing one reads as its default, not as any value
        check_params(dataclasses.replace(config, discovery=dataclasses.replace(config.discovery, temperature=0.5)))


def test_a_sweep_frozen_before_min_eval_rows_drew_its_splits_without_a_minimum(tmp_path):
    """min_eval_rows's default changes the split, so a params.json without it reads 0, not the default."""
    config = SweepConfig(name="s", work_dir=str(tmp_path), split=Split(min_eval_rows=0)).resolved()
    freeze_params(config)
    path = tmp_path / "s" / "params.json"
    frozen = json.loads(path.read_text())
    del frozen["split"]["min_eval_rows"]
    path.write_text(json.dumps(frozen))
    freeze_params(config)  # resumes with the splits its finished trials drew
    with pytest.raises(InputError, match="min_eval_rows"):
        freeze_params(SweepConfig(name="s", work_dir=str(tmp_path)).resolved())


def old_flat_params(work: Path, name: str) -> Path:
    """A params.json as sweeps froze it before the discovery and edit settings were nested."""
    flat = {
        "name": name,
        "model": "tiny-gpt2",
        "datasets": ["determiner_noun", "hierarchy"],
        "seeds": [0],
        "densities": [0.5, 0.2],
        "max_steps": 200,
        "batch_size": 16,
        "lr": 0.1,
        "head_epochs": 20,
        "edit_steps": 3,
        "edit_lr": 0.01,
        "edit_max_change": 0.01,
        "work_dir": str(work),
    }
    path = work / name / "params.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(flat))
    return path


def test_a_sweep_frozen_with_flat_params_is_refused_with_one_line(tmp_path):
    old_flat_params(tmp_path, "tiny")
    config = resolve_config(parse_args(["--preset", "tiny", "--work-dir", str(tmp_path)]))
    with pytest.raises(InputError, match=r"older circuitlib \(flat settings in params.json\).*another --name"):
        freeze_params(config)
    proc = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "size_sweep.py"), "--preset", "tiny", "--work-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "older circuitlib" in lines[0] and str(tmp_path / "tiny") in lines[0]
    assert not (tmp_path / "ray").exists()  # nothing started


def test_progress_estimates():
    assert format_duration(5) == "5s" and format_duration(125) == "2m05s" and format_duration(7300) == "2h01m"
    assert estimate_left([10.0, 20.0], remaining=4, running=2) == pytest.approx(30.0)
    assert estimate_left([], remaining=3, running=1) is None
    assert estimate_left([5.0], remaining=0, running=0) == 0.0


def _snapshot(kept: int, target: float, **figures: float) -> Circuit:
    """A 10-weight circuit keeping its first `kept` weights, snapshotted at `target` with held-out `figures`."""
    keep = torch.arange(10) < kept
    return Circuit.from_masks(
        [MaskedParam("w", (10,), "mlp", 0)],
        {"w": keep},
        "tiny-gpt2",
        None,
        target_density=target,
        provenance={"step": 5, **figures},
    )


def test_snapshot_honesty_tags_actual_density_faithfulness_and_flags():
    honest = [_snapshot(5, 0.5, faithfulness=0.95, complement_accuracy=0.55), _snapshot(2, 0.2, faithfulness=0.9)]
    tags, metrics = snapshot_honesty(honest)
    assert tags[names.circuit_tag(0.5, "density")] == "0.5" and tags[names.circuit_tag(0.2, "density")] == "0.2"
    assert tags[names.circuit_tag(0.5, "faithfulness")] == "0.95"
    assert tags[names.TAG_SNAPSHOT_FLAGS] == ""
    assert metrics[names.circuit_metric(0.5, "faithfulness")] == 0.95
    assert metrics[names.circuit_metric(0.5, "complement_accuracy")] == 0.55
    assert metrics[names.circuit_metric(0.2, "density")] == 0.2
    assert names.circuit_metric(0.2, "complement_accuracy") not in metrics  # not recorded: not logged

    # A cliff: both targets get one mask at density 0.1, under 0.8 x each target.
    cliff = [_snapshot(1, 0.5), _snapshot(1, 0.2)]
    tags, _ = snapshot_honesty(cliff)
    assert tags[names.circuit_tag(0.5, "faithfulness")] == "nan"
    assert tags[names.TAG_SNAPSHOT_FLAGS] == (
        "d0.5 at density 0.1: well below its target (< 0.8 x 0.5); "
        "d0.2 at density 0.1: well below its target (< 0.8 x 0.2); d0.5, d0.2: one snapshot"
    )
    assert not names.well_below(0.4, 0.5) and names.well_below(0.39, 0.5)

    # Chosen as the best of 9 evaluations on the rows that report it: flagged; chosen on rows of its own: not.
    held = [
        _snapshot(5, 0.5, faithfulness=0.95, selected_among=9),
        _snapshot(2, 0.2, faithfulness=0.9, selected_among=9, selection_rows=50, selection_faithfulness=0.92),
    ]
    tags, metrics = snapshot_honesty(held)
    assert (
        tags[names.TAG_SNAPSHOT_FLAGS] == "d0.5 faithfulness: best of 9 evaluations on the rows that report it "
        "(optimistic)"
    )
    assert metrics[names.circuit_metric(0.5, "selected_among")] == 9
    assert metrics[names.circuit_metric(0.2, "selection_faithfulness")] == 0.92
