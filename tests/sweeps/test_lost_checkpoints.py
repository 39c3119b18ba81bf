"""A trial whose checkpoint Ray Tune lost (a driver killed as Tune replaced it) starts over in a new experiment rather
than failing every restore; a trial that failed with its checkpoint in place is left to the rerun's restore."""

from __future__ import annotations

import dataclasses
import shutil
from types import SimpleNamespace

from ray import tune
from ray.train import Checkpoint

from record.names import RunKind
from sweeps import outcomes, size_sweep
from sweeps.config import load_preset
from sweeps.size_sweep import settle_phase
from sweeps.specs import SweepRun, discovery_trials


def checkpoint(path) -> Checkpoint:
    path.mkdir(parents=True)
    (path / "state.pt").write_bytes(b"state")
    return Checkpoint.from_directory(str(path))


def result(key: str, error: BaseException | None, saved: Checkpoint | None) -> SimpleNamespace:
    return SimpleNamespace(config={"trial": {"key": key}}, error=error, checkpoint=saved, metrics={"skipped": False})


def test_only_an_errored_trial_whose_checkpoint_is_gone_is_lost(tmp_path):
    gone = checkpoint(tmp_path / "a" / "checkpoint_000000")
    shutil.rmtree(gone.path)
    kept = checkpoint(tmp_path / "b" / "checkpoint_000003")
    error = ValueError("Could not recover from checkpoint")
    results = [
        result("lost", error, gone),
        result("failed-with-checkpoint", error, kept),  # a restore of it can still resume it
        result("failed-before-any-checkpoint", error, None),
        result("finished", None, gone),  # ended cleanly: its checkpoint is not needed any more
    ]
    assert outcomes.lost_checkpoints(results) == {"lost"}


def test_a_trial_whose_checkpoint_tune_lost_starts_over_in_a_new_experiment(tmp_path, monkeypatch, capsys):
    fits: list[tuple[str, list[str]]] = []
    gone = checkpoint(tmp_path / "ray" / "t0" / "checkpoint_000000")
    shutil.rmtree(gone.path)

    class FakeTuner:
        def __init__(self, trainable, param_space, run_config, **kwargs):
            self.name = run_config.name
            self.keys = [c["key"] for c in param_space["trial"]["grid_search"]]

        @staticmethod
        def can_restore(path):
            return False

        def fit(self):
            fits.append((self.name, self.keys))
            if "-retry" in self.name:  # the restarted trial has no checkpoint to restore: it runs
                return [result(k, None, None) for k in self.keys]
            return [result(keys[0], ValueError("does not exist on storage anymore"), gone), result(keys[1], None, None)]

    monkeypatch.setattr(tune, "Tuner", FakeTuner)
    tiny = dataclasses.replace(load_preset("tiny"), storage_path=str(tmp_path / "ray"))
    run = SweepRun(tiny, "0", "p")
    trials = discovery_trials(run)
    keys = [t.key for t in trials]
    monkeypatch.setattr(size_sweep, "unfinished", lambda client, run, trials: [keys[0]])

    failed = settle_phase(RunKind.DISCOVER, lambda config: None, trials, run, None, {"cpu": 1, "gpu": 0}, "this-run")

    assert failed == {}
    assert [k for _, k in fits] == [keys, [keys[0]]]
    assert fits[1][0].endswith("-retry1")
    assert capsys.readouterr().err.splitlines() == [
        f"sweep tiny: Ray Tune lost the checkpoint of 1 discover trial(s) ({keys[0]}; a driver killed as it "
        "replaced one); running them again from the start in a new experiment"
    ]
