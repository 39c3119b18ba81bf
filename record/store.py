"""Reading and writing a sweep's record in MLflow: one quoted, paged search; the parent run and one child run per
trial (never duplicated); batched logging; a run marked finished or failed by how its work ended."""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from circuitlib.errors import InputError
from circuitlib.jsonio import json_safe
from record import names
from record.lease import SETTLE_S
from record.names import RunKind

StoreError = MlflowException  # what a tracking store raises: a caller names it without importing MLflow
_MAX_PARAM = 6000  # MLflow's limit on a param value's length
_BATCH = 1000  # metrics per log_batch call (MLflow's limit)


def client_for(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri)


def find_experiment(client: MlflowClient, name: str) -> str | None:
    """The id of experiment `name`, or None where it does not exist (nothing is created)."""
    found = client.get_experiment_by_name(name)
    return None if found is None else found.experiment_id


def experiment_id(client: MlflowClient, name: str, artifact_root: str | None = None) -> str:
    """The id of experiment `name`, created (with artifacts under `artifact_root`, if given) when missing."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    found = client.get_experiment_by_name(name)  # another driver created it meanwhile: share theirs
    if found is None:
        raise InputError(
            f"experiment {name!r}: MLflow says it exists but cannot find it (deleted?); restore it or pick another"
        )
    return found.experiment_id


def flat_params(config: Mapping[str, object]) -> dict[str, str]:
    """Config values as MLflow params (lists and None as JSON text, truncated to MLflow's limit)."""
    return {k: (v if isinstance(v, str) else json.dumps(v))[:_MAX_PARAM] for k, v in config.items()}


def literal(value: str) -> str:
    """`value` quoted for an MLflow filter string (which has no escapes: it is quoted with whichever quote it lacks)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise InputError(f"{value!r}: holds both quote characters, which an MLflow search cannot express")


def _query(tags: Mapping[str, str]) -> str:
    return " and ".join(f"tags.`{k}` = {literal(v)}" for k, v in tags.items())


def search(
    client: MlflowClient, exp_id: str, tags: Mapping[str, str], newest_first: bool = False, limit: int | None = None
) -> list[Run]:
    """Every run of the experiment whose tags equal `tags` (values quoted), page by page; with `limit`, at most that
    many. The one search of the record: the sweep and the analysis both find runs only through it."""
    order = ["attributes.start_time DESC"] if newest_first else None
    runs: list[Run] = []
    token = None
    while limit is None or len(runs) < limit:
        page_size = 1000 if limit is None else min(1000, limit - len(runs))
        page = client.search_runs(
            [exp_id], filter_string=_query(tags), max_results=page_size, page_token=token, order_by=order
        )
        runs += list(page)
        token = page.token
        if not token:
            break
    return runs


def probe(tracking_uri: str, timeout: float = 10.0) -> None:
    """Fail in one line, within `timeout` seconds, when the tracking server of an http(s) URI does not answer."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered (an authenticating proxy may refuse the probe itself)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(
            f"tracking_uri {tracking_uri}: the MLflow server does not answer ({reason}); start it, "
            "or pass another --tracking-uri"
        ) from None


def find_run(client: MlflowClient, exp_id: str, tags: Mapping[str, str]) -> Run | None:
    """The newest run whose tags equal `tags`, or None."""
    return next(iter(search(client, exp_id, tags, newest_first=True, limit=1)), None)


def child_runs(client: MlflowClient, exp_id: str, parent_id: str, kind: RunKind, settings_hash: str) -> list[Run]:
    """Every child run of sweep run `parent_id` of one kind and settings, newest first."""
    tags = {names.PARENT_TAG: parent_id, names.TAG_KIND: kind, names.TAG_SETTINGS: settings_hash}
    return search(client, exp_id, tags, newest_first=True)


def sweep_runs(client: MlflowClient, exp_id: str, sweep: str) -> list[Run]:
    """Every parent run of sweep `sweep` in the experiment, oldest first (ties by run id): one, but for the moment
    after two drivers that started the sweep at once each created one (`open_sweep_run` keeps the oldest)."""
    runs = search(client, exp_id, {names.TAG_KIND: RunKind.SWEEP, names.TAG_SWEEP: sweep})
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def sweep_run(client: MlflowClient, exp_id: str, sweep: str, settings_hash: str):
    """The parent run of sweep `sweep` in the experiment (its oldest), or None; one run with other settings is
    refused, so a sweep never returns another configuration's results, whatever work dir or machine it runs from."""
    found = next(iter(sweep_runs(client, exp_id, sweep)), None)
    theirs = found.data.tags.get(names.TAG_SETTINGS, "none") if found is not None else settings_hash
    if theirs != settings_hash:
        assert found is not None
        raise InputError(
            f"sweep {sweep!r}: MLflow run {found.info.run_id} of that name has other settings (hash {theirs}, these "
            f"{settings_hash}); rerun it with its own settings (its params), or pick a new --name"
        )
    return found


def open_sweep_run(
    client: MlflowClient,
    exp_id: str,
    sweep: str,
    params: Mapping[str, object],
    settings_hash: str,
    settle_s: float = SETTLE_S,
) -> str:
    """The sweep's parent run: reused when the sweep is run again with the same settings, created (with its params)
    otherwise. Two drivers that create it at once each make one; after `settle_s` (so that the other's lands) each
    searches again and keeps the oldest, and the driver whose run is not the oldest deletes its own."""
    found = sweep_run(client, exp_id, sweep, settings_hash)
    if found is not None:
        client.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id
    tags = {names.TAG_KIND: RunKind.SWEEP, names.TAG_SWEEP: sweep, names.TAG_SETTINGS: settings_hash}
    run = client.create_run(exp_id, run_name=sweep, tags=tags)
    time.sleep(settle_s)
    oldest = sweep_run(client, exp_id, sweep, settings_hash)
    if oldest is not None and oldest.info.run_id != run.info.run_id:
        client.delete_run(run.info.run_id)  # another driver's run of this sweep came first: the sweep is theirs
        client.update_run(oldest.info.run_id, status="RUNNING")
        return oldest.info.run_id
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def open_trial_run(
    client: MlflowClient,
    exp_id: str,
    parent_id: str,
    key: str,
    tags: Mapping[str, str],
    params: Mapping[str, object],
    settings_hash: str,
) -> tuple[str, bool]:
    """(run id, finished) of the trial's child run; a rerun of the same trial with the same settings gets its existing
    run back (a run of other settings is never reused)."""
    identity = {names.PARENT_TAG: parent_id, names.TAG_TRIAL: key, names.TAG_SETTINGS: settings_hash}
    found = find_run(client, exp_id, identity)
    if found is not None:
        finished = found.info.status == "FINISHED"
        if not finished:
            client.update_run(found.info.run_id, status="RUNNING")
        for k, v in tags.items():
            client.set_tag(found.info.run_id, k, v)
        return found.info.run_id, finished
    run = client.create_run(exp_id, run_name=key, tags={**identity, **tags})
    log_params(client, run.info.run_id, params)
    return run.info.run_id, False


@contextmanager
def outcome(client: MlflowClient, run_id: str) -> Iterator[None]:
    """Mark the run FINISHED when the block ends, KILLED where it exits by SystemExit (Tune stopping a trial whose
    sweep was stopped: `sweeps.progress.Stop`) or Ctrl-C, and FAILED on any other error; the error goes on up."""
    try:
        yield
    except (SystemExit, KeyboardInterrupt):
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def terminate(client: MlflowClient, run_id: str, status: str) -> None:
    """End a run as FINISHED, FAILED or KILLED."""
    client.set_terminated(run_id, status)


def fail_running(client: MlflowClient, runs: Iterable) -> list[str]:
    """Mark FAILED those of `runs` still RUNNING (their trial died with its worker); their names."""
    stale = [r for r in runs if r.info.status == "RUNNING"]
    for r in stale:
        client.set_terminated(r.info.run_id, "FAILED")
    return [r.info.run_name for r in stale]


def create_run(client: MlflowClient, exp_id: str, name: str, tags: Mapping[str, str]) -> str:
    """A new run (never reused: an `analysis` run is one per report); its id."""
    return client.create_run(exp_id, run_name=name, tags=dict(tags)).info.run_id


def run_metrics(client: MlflowClient, run_id: str) -> dict[str, float]:
    """The latest value of each of the run's metrics."""
    return dict(client.get_run(run_id).data.metrics)


def inherited_tags(client: MlflowClient, parent_id: str) -> dict[str, str]:
    """The tags a trial's run copies from its sweep's run: the git commit, where the sweep recorded one."""
    tags = client.get_run(parent_id).data.tags
    return {k: tags[k] for k in (names.GIT_COMMIT_TAG,) if k in tags}


def describe_sweep(client: MlflowClient, exp_id: str, parent_id: str, tags: Mapping[str, str], note: str) -> None:
    """Tag the sweep's run, give it `note` as its description where it has none, and give its experiment the
    record's description and kind where it has none (a user's own are kept)."""
    current = client.get_run(parent_id).data.tags.get(names.NOTE_TAG)
    set_tags(client, parent_id, {**tags, **({} if current else {names.NOTE_TAG: note})})
    experiment = client.get_experiment(exp_id)
    if not experiment.tags.get(names.EXPERIMENT_KIND_TAG):  # the UI then opens on runs, not on GenAI traces
        client.set_experiment_tag(exp_id, names.EXPERIMENT_KIND_TAG, names.EXPERIMENT_KIND)
    if not experiment.tags.get(names.NOTE_TAG):
        client.set_experiment_tag(exp_id, names.NOTE_TAG, names.EXPERIMENT_NOTE)


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


def log_json(client: MlflowClient, run_id: str, payload: object, artifact_file: str) -> None:
    """Log `payload` as a standard JSON artifact (NaN and infinities as null)."""
    client.log_text(run_id, json.dumps(json_safe(payload), indent=1, allow_nan=False), artifact_file)


def log_file(client: MlflowClient, run_id: str, path: Path, artifact_dir: str | None = None) -> None:
    client.log_artifact(run_id, str(path), artifact_dir)


def log_folder(client: MlflowClient, run_id: str, folder: Path, artifact_dir: str) -> None:
    """Log every file under `folder` as the run's artifacts under `artifact_dir`."""
    client.log_artifacts(run_id, str(folder), artifact_dir)


def log_table_once(client: MlflowClient, run_id: str, table: pd.DataFrame, artifact_file: str) -> None:
    """Log `table` as an MLflow table (JSON, NaN as null) where the run has none of that name: MLflow appends to an
    existing one, and a retried trial's table is already whole."""
    if artifact_file not in {f.path for f in client.list_artifacts(run_id)}:
        client.log_table(run_id, table, artifact_file)


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def download(client: MlflowClient, run_id: str, artifact_path: str, dst: Path) -> Path:
    """Fetch one artifact of a run (through the tracking server where artifacts are proxied)."""
    dst.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, artifact_path, str(dst)))
