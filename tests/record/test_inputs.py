"""A run's dataset inputs (`record.inputs`) against a real MLflow SQLite store."""

from __future__ import annotations

import logging

import pytest
from mlflow.entities import DatasetInput
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from circuitlib.data import load_requests
from record import inputs

COLLISION = "UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest"


@pytest.fixture
def experiment(tmp_path) -> tuple[MlflowClient, str]:
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client, client.create_experiment("record", artifact_location=(tmp_path / "art").as_uri())


def test_two_trials_logging_one_shard_at_once_both_link_it(experiment, monkeypatch) -> None:
    """The store looks a dataset up and then inserts it; another trial's insert in between makes ours collide on
    the unique key (as two edit trials of one shard did on 2 cores). The second try links the dataset it wrote."""
    client, exp = experiment
    mine, other = (client.create_run(exp).info.run_id for _ in range(2))
    log, calls = client.log_inputs, []

    def racing(run_id: str, datasets: list[DatasetInput]) -> None:
        calls.append(run_id)
        if len(calls) == 1:
            log(other, datasets)
            raise MlflowException(COLLISION)
        log(run_id, datasets)

    monkeypatch.setattr(client, "log_inputs", racing)
    inputs.log_requests(client, mine, "hierarchy", load_requests("hierarchy", 3), 0)
    assert calls == [mine, mine]
    logged = {run: client.get_run(run).inputs.dataset_inputs for run in (mine, other)}
    assert [d.dataset.name for d in logged[mine]] == [d.dataset.name for d in logged[other]] == ["hierarchy/shard0"]
    assert logged[mine][0].dataset.digest == logged[other][0].dataset.digest


def test_a_failure_that_persists_is_raised(experiment, monkeypatch) -> None:
    client, exp = experiment
    run = client.create_run(exp).info.run_id

    def failing(run_id: str, datasets: list[DatasetInput]) -> None:
        raise MlflowException("the store is down")

    monkeypatch.setattr(client, "log_inputs", failing)
    with pytest.raises(MlflowException, match="the store is down"):
        inputs.log_requests(client, run, "hierarchy", load_requests("hierarchy", 3), 0)
