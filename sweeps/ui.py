"""What a sweep's runs say about themselves in the MLflow UI: descriptions that link runs, the git commit, the data as
dataset inputs, params and metrics the UI can plot, and the per-request edit table with its prompts.

The sweep's record (record/store.py) decides which run is which; this module only adds what a reader of the UI needs.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import DatasetInput, InputTag
from mlflow.tracking import MlflowClient

from circuitlib import data
from circuitlib.circuits import Circuit
from circuitlib.discovery import DiscoveryConfig
from circuitlib.types import ClassificationData, EditRequest, density_key
from record import names
from sweeps.config import SweepConfig
from sweeps.specs import CircuitRef

ROOT = Path(__file__).resolve().parents[1]
DATA_CONTEXT = "mlflow.data.context"  # the tag MLflow's UI shows beside a dataset input (train, eval, ...)
REQUEST_COLUMNS = ("case_id", "prompt", "subject", "target_true", "target_new")


def git_commit(root: Path = ROOT) -> str | None:
    """The commit checked out at `root`, or None outside a git checkout (a Ray job's working dir has none)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def describe_sweep(client: MlflowClient, experiment_id: str, parent_id: str, config: SweepConfig) -> None:
    """Tag the sweep's run with the git commit and a description, and give its experiment a description where it
    has none (a user's own is kept)."""
    tags = {names.TAG_MODEL: config.model}
    commit = git_commit()
    if commit:
        tags[names.GIT_COMMIT_TAG] = commit
    note = (
        f"Sweep **{config.name}**: circuits of `{config.model}` on {', '.join(config.datasets)} (seeds "
        f"{', '.join(map(str, config.seeds))}) at target densities "
        f"{', '.join(density_key(d) for d in config.discovery.densities)}, each edited as "
        f"{', '.join(config.variants)}{' and the full model' if config.include_full else ''} on "
        f"`{config.requests}`.\n\nThe headline findings appear here once `python -m analysis report` has run."
    )
    current = client.get_run(parent_id).data.tags.get(names.NOTE_TAG)
    if not current:
        tags[names.NOTE_TAG] = note
    for key, value in tags.items():
        client.set_tag(parent_id, key, value)
    experiment = client.get_experiment(experiment_id)
    if not experiment.tags.get(names.EXPERIMENT_KIND_TAG):  # the UI then opens on runs, not on GenAI traces
        client.set_experiment_tag(experiment_id, names.EXPERIMENT_KIND_TAG, names.EXPERIMENT_KIND)
    if not experiment.tags.get(names.NOTE_TAG):
        client.set_experiment_tag(
            experiment_id,
            names.NOTE_TAG,
            (
                f"Circuit discovery and knowledge edits (Ge, Rudzicz and Zhu 2024, *What Do the Circuits Mean? A "
                f"Knowledge Edit View*). One parent run per sweep; its children are the discovery runs "
                f"(`discover/...`), the edit runs (`edit/...`) and the `analysis` runs holding the report. Plot an "
                f"edit metric (`nll_new_drop`, `efficacy_score`) against `{names.EDIT_DENSITY}`, grouped by the "
                f"`variant` param, for the size window."
            ),
        )


def inherited_tags(client: MlflowClient, parent_id: str) -> dict[str, str]:
    """The tags a trial's run copies from its sweep's run: the git commit, where the sweep recorded one."""
    tags = client.get_run(parent_id).data.tags
    return {k: tags[k] for k in (names.GIT_COMMIT_TAG,) if k in tags}


def discovery_params(split: data.SplitSpec, config: DiscoveryConfig, model: str) -> dict[str, object]:
    """Every setting a discovery ran with, as params: its rows and, under `discovery.`, its whole config with the
    method's settings its schedule fills in (`DiscoveryConfig.resolved`)."""
    rows = {
        "dataset": split.dataset,
        "model": model,
        "data_limit": split.limit,
        "eval_fraction": split.eval_fraction,
        "split_seed": split.split_seed,
        "min_eval_rows": split.min_eval_rows,
        "mask_seed": config.mask_seed,
    }
    return rows | {f"discovery.{k}": v for k, v in dataclasses.asdict(config.resolved()).items()}


def edit_params(dataset: str | None, target: float | None, variant: str, seed: int) -> dict[str, object]:
    """What an edit run is a point of, as params the UI can group and plot by (the full model: dataset `full`,
    target density 1)."""
    return {
        "dataset": dataset or names.FULL,
        "target_density": 1.0 if target is None else float(target),
        "variant": variant,
        "seed": seed,
    }


def edit_figures(circuit: Circuit | None) -> dict[str, float]:
    """The edited circuit's actual density and held-out faithfulness, as metrics to plot edit metrics against (the
    full model: density 1 and faithfulness 1, by definition)."""
    if circuit is None:
        return {names.EDIT_DENSITY: 1.0, names.EDIT_FAITHFULNESS: 1.0}
    faithfulness = circuit.provenance.get("faithfulness")
    figures = {names.EDIT_DENSITY: circuit.density}
    if isinstance(faithfulness, int | float) and math.isfinite(faithfulness):
        figures[names.EDIT_FAITHFULNESS] = float(faithfulness)
    return figures


def describe_discovery(experiment_id: str, parent_id: str, sweep: str, dataset: str, seed: int) -> str:
    """A discovery run's description."""
    return (
        f"Discovery of circuits on `{dataset}`, sweep seed {seed}, in sweep "
        f"{names.run_link(experiment_id, parent_id, sweep)}. Metrics by step: the held-out density and "
        f"faithfulness; "
        f"`circuit.<target>.*`: each snapshot's figures; artifacts `{names.CIRCUITS_DIR}/d<target>.safetensors`. "
        f"Its params are the whole discovery config."
    )


def describe_edit(experiment_id: str, parent_id: str, sweep: str, variant: str, ref: CircuitRef | None) -> str:
    """An edit run's description, linking the discovery run its circuit came from."""
    where = f"in sweep {names.run_link(experiment_id, parent_id, sweep)}"
    table = f"`{names.EDITS_ARTIFACT}`: one row per request, with its prompt, subject, targets and scores."
    if ref is None:
        return f"Edits of the **full model** (every weight may change), {where}. {table}"
    source = names.run_link(experiment_id, ref.run_id, names.discover_run_name(ref.dataset, ref.seed))
    return (
        f"Edits of the **{variant}** of the circuit at target density {density_key(ref.target)} "
        f"(`{ref.artifact}` of {source}), {where}. `{names.EDIT_DENSITY}` and `{names.EDIT_FAITHFULNESS}` "
        f"are that circuit's actual figures. {table}"
    )


def edit_table(rows: Sequence[Mapping[str, Any]], requests: Sequence[EditRequest]) -> pd.DataFrame:
    """The per-request rows with each request's prompt (subject filled in), subject and targets first."""
    by_case = {r.case_id: r for r in requests}
    described = []
    for row in rows:
        request = by_case.get(int(row["case_id"]))
        text = (
            {
                "prompt": request.text,
                "subject": request.subject,
                "target_true": request.target_true,
                "target_new": request.target_new,
            }
            if request
            else {}
        )
        described.append({"case_id": row["case_id"], **text, **{k: v for k, v in row.items() if k != "case_id"}})
    return pd.DataFrame(described)


def log_edit_table(client: MlflowClient, run_id: str, table: pd.DataFrame) -> None:
    """Log the per-request table as an MLflow table (JSON, NaN as null) once: MLflow appends to an existing one, and
    a retried trial's table is already whole."""
    if names.EDITS_ARTIFACT not in {f.path for f in client.list_artifacts(run_id)}:
        client.log_table(run_id, table, names.EDITS_ARTIFACT)


def _input(frame: pd.DataFrame, name: str, spec: str, context: str, targets: str | None = None) -> DatasetInput:
    source = CodeDatasetSource({"circuitlib.spec": spec})
    dataset = from_pandas(frame, source=source, name=name, targets=targets)
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(DATA_CONTEXT, context)])


def classification_inputs(spec: str, train: ClassificationData, held_out: ClassificationData) -> list[DatasetInput]:
    """A discovery's training and held-out rows as dataset inputs."""
    return [
        _input(pd.DataFrame({"text": d.texts, "label": d.labels}), f"{train.name}/{context}", spec, context, "label")
        for d, context in ((train, "train"), (held_out, "eval"))
    ]


def requests_input(spec: str, requests: Sequence[EditRequest], shard: int) -> DatasetInput:
    """An edit trial's shard of requests as a dataset input."""
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
    return _input(frame, f"{spec}/shard{shard}", spec, "edit")
