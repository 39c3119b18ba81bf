"""Inputs a sweep refuses in one line before any trial starts, and errors of a trial's input that fail it once, with
one line, instead of being retried (issue 19, items 3 and 5)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from circuitlib.errors import InputError
from record.names import RunKind
from sweeps import outcomes
from sweeps.config import load_preset
from sweeps.progress import Progress
from sweeps.size_sweep import main, parse_args, resolve_config, settle_phase, summary
from sweeps.specs import CircuitRef, SweepRun, discovery_trials, edit_trials

REPO = Path(__file__).resolve().parents[2]
MLFLOW_LOG = "20"  # MLflow's own log lines (a timestamp) when it creates its SQLite tables


@pytest.fixture
def driver(tmp_path, monkeypatch, capsys):
    """The sweep's driver in-process on `tmp_path`: (exit code, its stderr lines); never a traceback."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def run(*flags: str) -> tuple[int, list[str]]:
        code = main(["--work-dir", str(tmp_path / "work"), *flags])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return code, [line for line in err.splitlines() if not line.startswith(MLFLOW_LOG)]

    return run


def nothing_started(work: Path) -> bool:
    import ray

    return not ray.is_initialized() and not work.exists()


def test_a_preset_yaml_that_does_not_parse_is_one_line_with_its_file_line_and_column(driver, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny-gpt2\ndatasets: [determiner_noun\ndiscovery:\n  lr: 0.1\n")
    code, err = driver("--preset", str(bad))
    assert code == 2 and len(err) == 1
    assert f"preset {bad}: not valid YAML at line 3, column 10" in err[0]  # where the parser found the error
    assert "while parsing a flow sequence at line 2, column 11" in err[0]  # and where what it parsed began
    indented = tmp_path / "indented.yaml"
    indented.write_text("model: tiny-gpt2\n  datasets: x\n")
    code, err = driver("--preset", str(indented))
    assert code == 2 and err == [
        f"size_sweep: error: preset {indented}: not valid YAML at line 2, column 11 "
        "(mapping values are not allowed here)"
    ]
    assert nothing_started(tmp_path / "work")


def test_preset_takes_a_name_or_a_yaml_path_and_help_says_so(tmp_path, monkeypatch, capsys):
    mine = tmp_path / "my-try.yaml"
    mine.write_text((REPO / "sweeps" / "presets" / "tiny.yaml").read_text())
    from_path = load_preset(str(mine))
    assert from_path.name == "my-try"  # the file's stem, unless it sets a name
    assert dataclasses.replace(from_path, name="tiny") == load_preset("tiny")
    named = tmp_path / "named.yml"
    named.write_text("name: chosen\nmodel: tiny-gpt2\n")
    assert load_preset(str(named)).name == "chosen"
    monkeypatch.chdir(tmp_path)
    assert load_preset("my-try.yaml").name == "my-try"  # a relative path
    with pytest.raises(
        InputError,
        match=r"preset 'nope': no such preset \(available: paper, .*tiny; or give the "
        r"path of a YAML file\)",
    ):
        load_preset("nope")
    with pytest.raises(InputError, match=f"preset {tmp_path}/gone.yaml: no such file"):
        load_preset(str(tmp_path / "gone.yaml"))
    bad_key = tmp_path / "flat.yaml"
    bad_key.write_text("lr: 0.1\n")
    with pytest.raises(InputError, match=f"preset {bad_key}: lr: no such setting"):
        load_preset(str(bad_key))
    assert resolve_config(parse_args(["--preset", str(mine), "--work-dir", str(tmp_path)])).name == "my-try"
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--preset NAME|PATH a preset's name (sweeps/presets/NAME.yaml: paper," in text
    assert "or the path of a YAML file of settings" in text


def test_a_dataset_that_cannot_be_split_is_refused_before_ray_naming_it(driver, tmp_path):
    """The issue's reproduction: a CSV with one row per label passed the check, then failed in its trial three times."""
    csv = tmp_path / "onerow.csv"
    csv.write_text("text,label\nthe cat sat,0\nthe dogs sat,1\n")
    code, err = driver("--preset", "tiny", "--datasets", f"determiner_noun,csv:{csv}")
    assert code == 2 and len(err) == 1
    assert "dataset onerow: label 0 has 1 rows; a split needs at least 2" in err[0]
    assert f"(the train/eval split of csv:{csv} under sweep seed 0)" in err[0]
    assert nothing_started(tmp_path / "work")


def test_the_up_front_split_is_each_seeds_own_and_skips_the_hub(tmp_path):
    """The check splits with every sweep seed's split seed, as the trials will (a split.limit subsample depends on it);
    hub data is only parsed, never downloaded before Ray starts."""
    csv = tmp_path / "small.csv"
    csv.write_text("text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(8)))
    tiny = load_preset("tiny")
    config = dataclasses.replace(tiny, datasets=[f"csv:{csv}", "blimp:no_such_config"], seeds=[0, 3])
    config.validate()
    assert config.split_spec(f"csv:{csv}", 3).split_seed == 3
    with pytest.raises(InputError, match=r"label 0 has 1 rows.*under sweep seed 0\)"):
        dataclasses.replace(config, split=dataclasses.replace(config.split, limit=2)).validate()


def test_a_seed_given_twice_is_refused():
    with pytest.raises(InputError, match=r"seeds \[0, 1, 0\]: seed 0 is given twice"):
        resolve_config(parse_args(["--preset", "tiny", "--seeds", "0,1,0"]))


def test_the_summary_counts_distinct_circuits_and_trials():
    run = SweepRun(load_preset("tiny"), "0", "p")
    circuit = CircuitRef("determiner_noun", 0, 0.5, "r1")
    circuits = [circuit, dataclasses.replace(circuit), CircuitRef("hierarchy", 0, 0.5, "r2")]
    edits = edit_trials(run, circuits)
    assert len(edits) == 3 * 3 * 2 + 2  # the repeated circuit's trials are listed twice
    discoveries = discovery_trials(run)
    assert summary(circuits, discoveries * 2, edits, ["a", "a"]) == (
        "2 circuits from 2 discoveries, 14 edit trials, 1 failed"
    )


def test_errors_a_retry_cannot_fix_are_named_in_one_line():
    assert outcomes.input_error_line(InputError("dataset x: no rows\nmore")) == "dataset x: no rows"
    denied = PermissionError(13, "Permission denied", "/store/art/circuits")
    assert outcomes.input_error_line(denied) == "/store/art/circuits: Permission denied"
    assert (
        outcomes.input_error_line(FileNotFoundError(2, "No such file or directory", "/x"))
        == "/x: No such file or directory"
    )
    assert outcomes.input_error_line(FileNotFoundError("gone")) == "gone"
    for retried in (RuntimeError("worker lost"), ConnectionError("reset"), OSError(5, "I/O error", "/x")):
        assert outcomes.input_error_line(retried) is None


def test_a_trial_ends_on_an_input_error_with_one_result_and_raises_the_rest(monkeypatch):
    from ray import tune

    from sweeps.trials import trainable

    reports: list[dict] = []
    monkeypatch.setattr(tune, "report", lambda metrics, **kw: reports.append(metrics))
    trial = discovery_trials(SweepRun(load_preset("tiny"), "0", "p"))[0]
    config = {"trial": {"key": trial.key, "spec": dataclasses.asdict(trial)}}

    def failing(error: BaseException):
        def discovery_trial(spec) -> None:
            assert spec == trial
            raise error

        return trainable(discovery_trial, type(trial), "driver-1")

    failing(PermissionError(13, "Permission denied", "/store"))(config)  # returns: Tune ends it, once
    assert reports == [
        {outcomes.INPUT_ERROR: "/store: Permission denied", outcomes.DRIVER: "driver-1", "skipped": False}
    ]
    assert outcomes.input_failure(reports[0]) == ("driver-1", "/store: Permission denied")
    with pytest.raises(RuntimeError, match="worker lost"):  # raised: Tune retries it
        failing(RuntimeError("worker lost"))(config)
    assert len(reports) == 1


def test_an_input_failure_is_not_retried_but_one_of_an_earlier_run_runs_again(tmp_path, monkeypatch, capsys):
    """Within one run of the sweep a trial that failed on its input is reported, not rerun; on a rerun, its restored
    experiment holds it as ended, so it runs again (in a new experiment) once the input may have been fixed."""
    from ray import tune

    from sweeps import size_sweep

    fits: list[list[str]] = []
    failures: dict[str, tuple[str, str]] = {}  # key -> (driver, line) of its last result

    class FakeTuner:
        def __init__(self, trainable, param_space, run_config, **kwargs):
            self.keys = [c["key"] for c in param_space["trial"]["grid_search"]]
            self.retry = "-retry" in run_config.name

        @staticmethod
        def can_restore(path):
            return False

        def fit(self):
            fits.append(self.keys)
            if self.retry:  # the trial really runs now, and its input still fails
                failures.update({k: ("this-run", failures[k][1]) for k in self.keys})
            return [
                SimpleNamespace(
                    config={"trial": {"key": k}},
                    error=None,
                    metrics={outcomes.INPUT_ERROR: failures[k][1], outcomes.DRIVER: failures[k][0]}
                    if k in failures
                    else {"skipped": False},
                )
                for k in self.keys
            ]

    monkeypatch.setattr(tune, "Tuner", FakeTuner)
    tiny = dataclasses.replace(load_preset("tiny"), storage_path=str(tmp_path))
    trials = discovery_trials(SweepRun(tiny, "0", "p"))
    keys = [t.key for t in trials]
    monkeypatch.setattr(size_sweep, "unfinished", lambda client, run, trials: [keys[1]])
    failures[keys[1]] = ("this-run", "dataset x: no rows")
    failed = settle_phase(
        RunKind.DISCOVER, lambda config: None, trials, SweepRun(tiny, "0", "p"), None, {"cpu": 1, "gpu": 0}, "this-run"
    )
    assert failed == {keys[1]: "dataset x: no rows"} and fits == [keys]  # not run again
    err = capsys.readouterr().err.splitlines()
    assert err == [f"sweep tiny: {keys[1]} failed on its input, not retried: dataset x: no rows"]

    fits.clear()
    failures[keys[1]] = ("an-earlier-run", "dataset x: no rows")
    failed = settle_phase(
        RunKind.DISCOVER, lambda config: None, trials, SweepRun(tiny, "0", "p"), None, {"cpu": 1, "gpu": 0}, "this-run"
    )
    assert fits == [keys, [keys[1]]]  # run again, alone, in a new experiment
    assert failed == {keys[1]: "dataset x: no rows"}  # where it failed on its input again, named once
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"sweep tiny: 1 discover trial(s) failed on their input in an earlier run ({keys[1]}); running "
        "them again in a new experiment",
        f"sweep tiny: {keys[1]} failed on its input, not retried: dataset x: no rows",
    ]


def test_progress_counts_an_input_failure_as_failed(capsys):
    progress = Progress("discover", 2, stream=sys.stdout)
    trial: Any = SimpleNamespace(trial_id="t1", last_result={outcomes.INPUT_ERROR: "dataset x: no rows", "driver": "d"})
    progress.on_trial_start(0, [], trial)
    progress.on_trial_complete(0, [], trial)
    assert progress.failed == 1 and progress.done == 0
    assert "0/2 done, 0 running, 1 failed" in capsys.readouterr().out.splitlines()[-1]


def sweep_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return env | {"HF_HUB_OFFLINE": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


@pytest.mark.integration
def test_a_trial_failing_on_its_input_runs_once_with_one_line_and_again_on_a_rerun(tmp_path):
    """A hub dataset offline (only parsed up front) fails its discovery trial with an InputError: Tune runs it once,
    not max_failures + 1 times, the driver names it in one line and advises no plain rerun; a rerun runs it again."""
    work = tmp_path / "work"
    command = [
        sys.executable,
        str(REPO / "sweeps" / "size_sweep.py"),
        "--preset",
        "tiny",
        "--work-dir",
        str(work),
        "--datasets",
        "blimp:no_such_config",
        "--include-full",
        "false",
        "--max-failures",
        "2",
    ]
    key, line = "discover/blimp_no_such_config/seed0", "dataset blimp:no_such_config: could not load nyu-mll/blimp"

    first = subprocess.run(command, capture_output=True, text=True, timeout=600, env=sweep_env())
    assert first.returncode == 1, first.stderr[-3000:]
    assert "Traceback" not in first.stderr and "rerun the same command" not in first.stderr
    named = [x for x in first.stderr.splitlines() if "failed on its input" in x]
    assert len(named) == 1 and named[0].startswith(f"sweep tiny: {key} failed on its input, not retried: {line}")
    assert "[discover] 0/1 done, 0 running, 1 failed" in first.stdout
    trial_dirs = list((work / "ray").glob("tiny-discover-*/discover_blimp_no_such_config_seed0"))
    assert len(trial_dirs) == 1
    assert not (trial_dirs[0] / "error.txt").exists()  # Tune writes one entry per failure, retried or not
    results = [json.loads(x) for x in (trial_dirs[0] / "result.json").read_text().splitlines()]
    assert len(results) == 1 and results[0][outcomes.INPUT_ERROR].startswith(line)  # one run, one result

    again = subprocess.run(command, capture_output=True, text=True, timeout=600, env=sweep_env())
    assert again.returncode == 1, again.stderr[-3000:]
    assert "Traceback" not in again.stderr
    assert f"failed on their input in an earlier run ({key}); running them again" in again.stderr
    assert len([x for x in again.stderr.splitlines() if "failed on its input, not retried" in x]) == 1
    retried = list((work / "ray").glob("tiny-discover-*-retry1/discover_blimp_no_such_config_seed0/result.json"))
    assert len(retried) == 1 and len(retried[0].read_text().splitlines()) == 1
