"""Read one sweep from MLflow as plain data: its discovery and edit runs, circuit files and per-request edit rows.

Artifacts are downloaded once into a cache folder (by run id) and reused; everything missing or failed becomes a
note in `Sweep.notes`, never an exception, so the analysis shows it as a gap.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from circuitlib.errors import InputError
from circuitlib.types import density_of
from record import names, store
from record.names import RunKind

CURVES = ("density", "faithfulness", "complement_accuracy")  # discovery metrics read against step
FINISHED = "FINISHED"  # MLflow's status of a run that ended well
ENDED = (FINISHED, "FAILED", "KILLED")  # statuses after which a run's artifacts no longer change


@dataclass(frozen=True)
class Source:
    """What a circuit was discovered from: a dataset and a discovery seed."""

    dataset: str
    seed: int


@dataclass
class Discovery:
    """One discovery run: its circuit files by target density, missed targets and metric histories."""

    run_id: str
    name: str
    status: str
    source: Source
    circuits: dict[float, Path]
    unreached: list[float]
    history: dict[str, list[tuple[int, float]]]  # metric -> [(step, value)]


@dataclass
class EditRun:
    """One edit run (a shard of requests on one variant); source and target are None for the `full` model."""

    run_id: str
    name: str
    status: str
    variant: str
    source: Source | None
    target: float | None
    rows: list[dict]


@dataclass
class Sweep:
    """A sweep's parent run and everything its children left, with notes on what is missing."""

    tracking_uri: str
    experiment: str
    experiment_id: str
    run_id: str
    name: str
    model: str | None
    discoveries: list[Discovery]
    edits: list[EditRun]
    notes: list[str] = field(default_factory=list)

    @property
    def sources(self) -> list[Source]:
        """Every dataset and seed seen in discovery or edit runs, sorted."""
        seen = {d.source for d in self.discoveries} | {e.source for e in self.edits if e.source is not None}
        return sorted(seen, key=lambda s: (s.dataset, s.seed))

    @property
    def densities(self) -> list[float]:
        """Every target density the sweep aimed at (reached, missed or edited), highest first."""
        seen = {t for d in self.discoveries for t in (*d.circuits, *d.unreached)}
        seen |= {e.target for e in self.edits if e.target is not None}
        return sorted(seen, reverse=True)

    def label(self, source: Source) -> str:
        """The dataset name, with `/seed{s}` added where some dataset has several seeds."""
        multi_seed = len({s.dataset for s in self.sources}) < len(self.sources)
        return f"{source.dataset}/seed{source.seed}" if multi_seed else source.dataset


def find_sweep_run(client: MlflowClient, experiment: str, run_id: str | None) -> tuple[str, Run]:
    """The experiment id and the sweep's parent run: `run_id`, or the latest run tagged kind=sweep."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise InputError(f"experiment {experiment!r} not found at {client.tracking_uri}")
    if run_id is None:
        runs = store.search(client, exp.experiment_id, {names.TAG_KIND: RunKind.SWEEP}, newest_first=True, limit=1)
        if not runs:
            raise InputError(f"experiment {experiment!r} has no sweep run (tag {names.TAG_KIND}=sweep)")
        return exp.experiment_id, runs[0]
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise InputError(f"run {run_id!r} not found at {client.tracking_uri}") from None
    if run.info.experiment_id != exp.experiment_id:
        raise InputError(f"run {run_id!r} is not in experiment {experiment!r}")
    kind = run.data.tags.get(names.TAG_KIND)
    if kind != RunKind.SWEEP:
        raise InputError(f"run {run_id!r} is not a sweep ({names.TAG_KIND}={kind!r})")
    return exp.experiment_id, run


def _cached(client: MlflowClient, run: Run, artifact: str, cache: Path) -> Path:
    """The local copy of one artifact in cache/run_id/, via a temp folder so never half-written; downloaded once
    for a run that has ended, afresh for one still running."""
    run_id = run.info.run_id
    path = cache / run_id / artifact
    if run.info.status not in ENDED or not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            local = client.download_artifacts(run_id, artifact, tmp)
            os.replace(local, path)
    return path


def _artifacts(client: MlflowClient, run_id: str, folder: str | None) -> list[str]:
    """Paths of the files directly in one artifact folder of a run."""
    return [f.path for f in client.list_artifacts(run_id, folder) if not f.is_dir]


def _source(tags: dict[str, str]) -> Source | None:
    """The dataset and seed tags of a run, or None where the dataset is not tagged."""
    dataset = tags.get(names.TAG_DATASET)
    return None if dataset is None else Source(dataset, int(tags.get(names.TAG_SEED, 0)))


def _run_name(run: Run) -> str:
    """The run's name; MLflow gives every run one, its id stands in where a store left it unset."""
    return run.info.run_name or run.info.run_id


def _status_note(run: Run, what: str) -> str | None:
    """A note for a run that did not finish."""
    status = run.info.status
    return None if status == FINISHED else f"{run.info.run_name}: {status}, {what}"


def _read_discovery(client: MlflowClient, run: Run, cache: Path, notes: list[str]) -> Discovery | None:
    """A discovery run with its circuits downloaded, or None (with a note) where it lacks a dataset tag."""
    run_id, tags = run.info.run_id, run.data.tags
    source = _source(tags)
    if source is None:
        notes.append(f"{run.info.run_name}: discovery run without a {names.TAG_DATASET} tag, skipped")
        return None
    circuits = {}
    for artifact in _artifacts(client, run_id, names.CIRCUITS_DIR):
        stem = Path(artifact).name.removesuffix(".safetensors")
        if artifact.endswith(".safetensors") and stem.startswith("d"):
            circuits[density_of(stem[1:])] = _cached(client, run, artifact, cache)
    unreached = [density_of(t) for t in tags.get(names.TAG_UNREACHED, "").split(",") if t.strip()]
    history = {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in CURVES}
    note = _status_note(run, f"{len(circuits)} circuit(s) kept")
    if note:
        notes.append(note)
    return Discovery(run_id, _run_name(run), run.info.status, source, circuits, unreached, history)


def _read_rows(path: Path) -> list[dict]:
    """The per-request rows of an edits.json, nulls read back as NaN: an MLflow table (`columns` and `data`), or a
    list of rows as sweeps logged it before."""
    table = json.loads(path.read_text())
    if isinstance(table, dict):
        table = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    return [{k: (math.nan if v is None else v) for k, v in row.items()} for row in table]


def _read_edit(client: MlflowClient, run: Run, cache: Path, notes: list[str]) -> EditRun | None:
    """An edit run with its per-request rows, or None (with a note) where its tags do not say what it edited."""
    run_id, tags, name = run.info.run_id, run.data.tags, _run_name(run)
    variant = tags.get(names.TAG_VARIANT)
    source, target = _source(tags), tags.get(names.TAG_TARGET)
    if variant is None or (variant != names.FULL and (source is None or target is None)):
        notes.append(f"{name}: edit run without variant, dataset or target density tags, skipped")
        return None
    rows = []
    if names.EDITS_ARTIFACT in _artifacts(client, run_id, None):
        rows = _read_rows(_cached(client, run, names.EDITS_ARTIFACT, cache))
    note = _status_note(run, f"{len(rows)} request(s) kept")
    if note:
        notes.append(note)
    elif not rows:
        notes.append(f"{name}: finished without {names.EDITS_ARTIFACT}")
    if variant == names.FULL:
        return EditRun(run_id, name, run.info.status, variant, None, None, rows)
    assert source is not None and target is not None  # a masked variant's tags were checked above
    return EditRun(run_id, name, run.info.status, variant, source, density_of(target), rows)


def _check_store(uri: str) -> None:
    """Refuse a local store (sqlite file or folder) that does not exist, rather than let MLflow create an empty one."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = Path(uri.removeprefix("sqlite:///"))
    elif parsed.scheme in ("", "file"):
        path = Path(parsed.path)
    else:
        return
    if not path.exists():
        raise InputError(f"tracking URI {uri}: {path} does not exist")


def read_sweep(experiment: str, run_id: str | None, cache: Path, tracking_uri: str | None = None) -> Sweep:
    """The sweep `run_id` (default: the experiment's latest) with its children, artifacts cached under `cache`.

    `tracking_uri` defaults to MLflow's own (MLFLOW_TRACKING_URI, else sqlite:///mlflow.db); it must exist.
    """
    uri = tracking_uri or mlflow.get_tracking_uri()
    _check_store(uri)
    client = MlflowClient(uri)
    experiment_id, parent = find_sweep_run(client, experiment, run_id)
    parent_id = parent.info.run_id
    children = store.search(client, experiment_id, {names.PARENT_TAG: parent_id})
    notes: list[str] = []
    discoveries, edits = [], []
    for run in sorted(children, key=lambda r: r.info.run_name or ""):
        kind = run.data.tags.get(names.TAG_KIND)
        if kind == RunKind.DISCOVER and (d := _read_discovery(client, run, cache, notes)) is not None:
            discoveries.append(d)
        elif kind == RunKind.EDIT and (e := _read_edit(client, run, cache, notes)) is not None:
            edits.append(e)
    notes += [f"{d.name}: target density {t:g} never reached" for d in discoveries for t in d.unreached]
    model = parent.data.tags.get(names.TAG_MODEL) or next(
        (r.data.tags[names.TAG_MODEL] for r in children if names.TAG_MODEL in r.data.tags), None
    )
    name = parent.data.tags.get(names.TAG_SWEEP, _run_name(parent))
    return Sweep(uri, experiment, experiment_id, parent_id, name, model, discoveries, edits, notes)
