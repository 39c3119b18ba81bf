"""What a sweep checks before Ray starts and params.json is frozen, and how it keeps results of other settings apart
(issue 11): one line and exit 2 for each bad case, with nothing started."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import torch

from circuitlib import cli, data
from circuitlib.discovery import DiscoveryConfig, DiscoveryState, discover
from circuitlib.errors import CorruptCheckpoint, InputError
from record import names, store
from sweeps.config import load_preset
from sweeps.size_sweep import driver_lock, main
from sweeps.trials import ROWS_FILE, _edit_rows

MLFLOW_LOG = "20"  # MLflow's own log lines (a timestamp) when it creates its SQLite tables


@pytest.fixture
def sweep(tmp_path, monkeypatch, capsys):
    """Run the tiny sweep's driver in-process on `tmp_path`: (exit code, its stderr lines)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def run(*flags: str, work: Path = tmp_path) -> tuple[int, list[str]]:
        code = main(["--preset", "tiny", "--work-dir", str(work), *flags])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return code, [line for line in err.splitlines() if not line.startswith(MLFLOW_LOG)]

    return run


def nothing_started(work: Path) -> bool:
    import ray

    return not ray.is_initialized() and not (work / "tiny" / "params.json").exists() and not (work / "ray").exists()


def test_resources_the_local_cluster_lacks_are_refused_before_params_are_frozen(sweep, tmp_path):
    code, err = sweep("--cpus-per-trial", "100000")
    assert code == 2 and len(err) == 1 and "a trial asks for 100000 CPU" in err[0]
    assert nothing_started(tmp_path)


def test_an_unreachable_tracking_server_is_one_line_within_30_seconds(sweep, tmp_path):
    start = time.monotonic()
    code, err = sweep("--tracking-uri", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert time.monotonic() - start < 30
    assert code == 2 and len(err) == 1
    assert "tracking_uri http://127.0.0.1:9: the MLflow server does not answer" in err[0]
    assert nothing_started(tmp_path)


def test_an_unwritable_work_dir_is_one_line(sweep, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = sweep(work=blocker)
    assert code == 2 and len(err) == 1 and f"work_dir {blocker}: cannot write" in err[0]


def test_a_second_driver_of_one_sweep_is_refused(sweep, tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    with driver_lock(folder):
        code, err = sweep()
    assert code == 2 and len(err) == 1 and "another driver runs it" in err[0]
    assert nothing_started(tmp_path)


def test_the_same_name_with_other_settings_elsewhere_is_refused_before_ray(sweep, tmp_path):
    """Another work dir (as every `ray job submit` gets), one MLflow store: another lr never returns those results."""
    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    first = dataclasses.replace(load_preset("tiny"), work_dir=str(tmp_path / "a"), tracking_uri=uri).resolved()
    client = store.client_for(uri)
    exp = store.experiment_id(client, "tiny", (tmp_path / "artifacts").as_uri())
    parent = store.open_sweep_run(client, exp, "tiny", {}, first.settings_hash())
    code, err = sweep("--tracking-uri", uri, "--discovery.lr", "0.01", work=tmp_path / "b")
    assert code == 2 and len(err) == 1 and f"MLflow run {parent} of that name has other settings" in err[0]
    assert nothing_started(tmp_path / "b")
    # The same settings from another work dir reuse that parent run (and so its finished children).
    again = dataclasses.replace(first, work_dir=str(tmp_path / "c"), max_failures=0).resolved()
    assert again.settings_hash() == first.settings_hash()
    reused = store.sweep_run(client, exp, "tiny", again.settings_hash())
    assert reused is not None and reused.info.run_id == parent


def test_only_result_shaping_settings_change_the_hash():
    tiny = load_preset("tiny")
    same = dataclasses.replace(
        tiny,
        name="other",
        work_dir="/x",
        storage_path="s3://b/p",
        max_failures=0,
        cpus_per_trial=4,
        max_concurrent_trials=3,
        tracking_uri="http://h:5000",
        gpus_per_edit_trial=0.5,
    )  # where edit trials run, not what they compute
    assert same.settings_hash() == tiny.settings_hash()
    for other in (
        dataclasses.replace(tiny, discovery=dataclasses.replace(tiny.discovery, lr=0.01)),
        dataclasses.replace(tiny, seeds=[1]),
        dataclasses.replace(tiny, shard_size=3),
    ):
        assert other.settings_hash() != tiny.settings_hash()


def test_filter_values_with_quotes_find_their_run(tmp_path):
    client = store.client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = store.experiment_id(client, "q", (tmp_path / "artifacts").as_uri())
    for value in ("it's", 'say "hi"'):
        run = client.create_run(exp, tags={names.TAG_TRIAL: value})
        found = store.find_run(client, exp, {names.TAG_TRIAL: value})
        assert found is not None and found.info.run_id == run.info.run_id
    with pytest.raises(InputError, match="both quote characters"):
        store.literal('it\'s "both"')


def test_a_corrupt_discovery_checkpoint_names_its_file(tiny_lm, tiny_data, tmp_path):
    config = DiscoveryConfig(
        densities=(0.5,), max_steps=4, batch_size=8, head_epochs=2, eval_every=2, checkpoint_every=2
    )
    discover(tiny_lm, tiny_data, tiny_data, config, checkpoint_dir=tmp_path, progress=False)
    state = tmp_path / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CorruptCheckpoint, match=f"checkpoint {state}: cannot be read") as caught:
        DiscoveryState(tiny_lm, config, len(tiny_data.texts)).load(tmp_path)
    assert caught.value.path == state


def test_a_csv_over_the_row_limit_is_refused_without_reading_it_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_CSV_ROWS", 5)
    path = tmp_path / "big.csv"
    path.write_text("text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(50)))
    with pytest.raises(InputError, match=f"{path} has more than 5 rows"):
        data.load_classification(f"csv:{path}")


def test_edit_refuses_an_unwritable_out_before_any_edit(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr("circuitlib.models.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    code = cli.main(
        [
            "edit",
            "--model",
            "tiny-gpt2",
            "--variant",
            "full",
            "--requests",
            "builtin:hierarchy",
            "--out",
            str(blocker / "edits.json"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"--out {blocker / 'edits.json'}: cannot create its folder" in err[0]


def test_discover_refuses_a_bad_eval_interval_with_one_line(tmp_path, capsys):
    code = cli.main(
        [
            "discover",
            "--model",
            "tiny-gpt2",
            "--dataset",
            "determiner_noun",
            "--eval-every",
            "0",
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--eval-every" in err[0] and "at least 1" in err[0]


def test_state_files_written_by_torch_still_load(tiny_lm, tiny_data, tmp_path):
    """The corrupt-file guard does not reject a sound checkpoint."""
    config = DiscoveryConfig(
        densities=(0.5,), max_steps=4, batch_size=8, head_epochs=2, eval_every=2, checkpoint_every=2
    )
    discover(tiny_lm, tiny_data, tiny_data, config, checkpoint_dir=tmp_path, progress=False)
    state = DiscoveryState(tiny_lm, config, len(tiny_data.texts))
    state.load(tmp_path)
    assert state.step == 4 and torch.equal(state.logits, torch.load(tmp_path / "state.pt")["logits"])


def test_an_unreadable_edit_checkpoint_starts_the_shard_over(tmp_path):
    (tmp_path / ROWS_FILE).write_text('[{"case_id": 0, "effic')
    assert _edit_rows(tmp_path) == []
    (tmp_path / ROWS_FILE).write_text('[{"case_id": 0}]')
    assert _edit_rows(tmp_path) == [{"case_id": 0}]
