"""A run's data as MLflow dataset inputs: the rows a discovery trained and was evaluated on, an edit trial's requests.
The MLflow UI lists them beside the run, with their context (train, eval, edit) and where the rows came from."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from circuitlib.types import ClassificationData, EditRequest

DATA_CONTEXT = "mlflow.data.context"  # the tag MLflow's UI shows beside a dataset input (train, eval, ...)
REQUEST_COLUMNS = ("case_id", "prompt", "subject", "target_true", "target_new")


def _input(frame: pd.DataFrame, name: str, spec: str, context: str, targets: str | None = None) -> DatasetInput:
    source = CodeDatasetSource({"circuitlib.spec": spec})
    dataset = from_pandas(frame, source=source, name=name, targets=targets)
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(DATA_CONTEXT, context)])


def _log_inputs(client: MlflowClient, run_id: str, inputs: list[DatasetInput]) -> None:
    """`client.log_inputs`, tried once more if it fails: MLflow's SQL store looks a dataset up and then inserts it, so
    two trials logging one dataset at once (the same shard of requests) collide on its unique key, and the second
    try finds the dataset the other trial wrote and links it."""
    try:
        client.log_inputs(run_id, inputs)
    except MlflowException:
        client.log_inputs(run_id, inputs)


def log_classification(
    client: MlflowClient, run_id: str, spec: str, train: ClassificationData, held_out: ClassificationData
) -> None:
    """Log a discovery's training and held-out rows as the run's dataset inputs."""
    inputs = [
        _input(pd.DataFrame({"text": d.texts, "label": d.labels}), f"{train.name}/{context}", spec, context, "label")
        for d, context in ((train, "train"), (held_out, "eval"))
    ]
    _log_inputs(client, run_id, inputs)


def log_requests(client: MlflowClient, run_id: str, spec: str, requests: Sequence[EditRequest], shard: int) -> None:
    """Log an edit trial's shard of requests as the run's dataset input."""
    frame = pd.DataFrame(
        [
            {
                "case_id": r.case_id,
                "prompt": r.text,
                "subject": r.subject,
                "target_true": r.target_true,
                "target_new": r.target_new,
            }
            for r in requests
        ],
        columns=list(REQUEST_COLUMNS),
    )
    _log_inputs(client, run_id, [_input(frame, f"{spec}/shard{shard}", spec, "edit")])
