"""MLflow bookkeeping of a sweep: the parent run, one child run per trial (never duplicated), batched logging."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from sweeps import layout

_MAX_PARAM = 6000  # MLflow's limit on a param value's length
_BATCH = 1000  # metrics per log_batch call (MLflow's limit)


def client_for(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(client: MlflowClient, name: str, artifact_root: str | None = None) -> str:
    """The id of experiment `name`, created (with artifacts under `artifact_root`, if given) when missing."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root)


def flat_params(config: Mapping[str, object]) -> dict[str, str]:
    """Config values as MLflow params (lists and None as JSON text, truncated to MLflow's limit)."""
    return {k: (v if isinstance(v, str) else json.dumps(v))[:_MAX_PARAM] for k, v in config.items()}


def find_run(client: MlflowClient, exp_id: str, tags: Mapping[str, str]):
    """The newest run whose tags equal `tags`, or None."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([exp_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def child_runs(client: MlflowClient, exp_id: str, parent_id: str, kind: str) -> list:
    """Every child run of sweep run `parent_id` of one kind (discover, edit), newest first, all pages."""
    query = f"tags.`{layout.PARENT_TAG}` = '{parent_id}' and tags.`{layout.TAG_KIND}` = '{kind}'"
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string=query, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        runs += list(page)
        token = page.token
        if not token:
            return runs


def open_sweep_run(client: MlflowClient, exp_id: str, sweep: str, params: Mapping[str, object]) -> str:
    """The sweep's parent run: reused when the sweep is run again, created (with its params) otherwise."""
    tags = {layout.TAG_KIND: "sweep", layout.TAG_SWEEP: sweep}
    found = find_run(client, exp_id, tags)
    if found is not None:
        client.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id
    run = client.create_run(exp_id, run_name=sweep, tags=tags)
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def open_trial_run(
    client: MlflowClient, exp_id: str, parent_id: str, key: str, tags: Mapping[str, str], params: Mapping[str, object]
) -> tuple[str, bool]:
    """(run id, finished) of the trial's child run; a rerun of the same trial gets its existing run back."""
    found = find_run(client, exp_id, {layout.PARENT_TAG: parent_id, layout.TAG_TRIAL: key})
    if found is not None:
        finished = found.info.status == "FINISHED"
        if not finished:
            client.update_run(found.info.run_id, status="RUNNING")
        for k, v in tags.items():
            client.set_tag(found.info.run_id, k, v)
        return found.info.run_id, finished
    run = client.create_run(
        exp_id, run_name=key, tags={layout.PARENT_TAG: parent_id, layout.TAG_TRIAL: key, **tags}
    )
    log_params(client, run.info.run_id, params)
    return run.info.run_id, False


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, object]) -> None:
    items = [Param(k, v) for k, v in flat_params(params).items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def log_metrics(
    client: MlflowClient, run_id: str, rows: Iterable[Mapping[str, float]], step_key: str | None = None
) -> None:
    """Log rows of metrics in batches; with `step_key`, each row is one step (its value of that key)."""
    now = int(time.time() * 1000)
    metrics = []
    for row in rows:
        step = int(row[step_key]) if step_key else 0
        for k, v in row.items():
            if k != step_key and isinstance(v, (int, float)) and math.isfinite(v):
                metrics.append(Metric(k, float(v), now, step))
    for start in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + _BATCH])


def last_logged_step(client: MlflowClient, run_id: str, key: str) -> int:
    """The highest step logged for metric `key` (-1 if none): a resumed trial logs only later steps."""
    history = client.get_metric_history(run_id, key)
    return max((m.step for m in history), default=-1)


def json_safe(payload: object) -> object:
    """`payload` with every non-finite float as None, so it dumps as standard JSON (null, never NaN)."""
    if isinstance(payload, float):
        return payload if math.isfinite(payload) else None
    if isinstance(payload, Mapping):
        return {k: json_safe(v) for k, v in payload.items()}
    if isinstance(payload, list | tuple):
        return [json_safe(v) for v in payload]
    return payload


def log_json(client: MlflowClient, run_id: str, payload: object, artifact_file: str) -> None:
    """Log `payload` as a standard JSON artifact (NaN and infinities as null)."""
    client.log_text(run_id, json.dumps(json_safe(payload), indent=1, allow_nan=False), artifact_file)


def log_file(client: MlflowClient, run_id: str, path: Path, artifact_dir: str | None = None) -> None:
    client.log_artifact(run_id, str(path), artifact_dir)


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def download(client: MlflowClient, run_id: str, artifact_path: str, dst: Path) -> Path:
    """Fetch one artifact of a run (through the tracking server where artifacts are proxied)."""
    dst.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, artifact_path, str(dst)))
