"""What a sweep's runs say about themselves in the MLflow UI: descriptions that link runs, the git commit, params and
metrics the UI can plot, and the per-request edit table with its prompts.

The sweep's record (record/) decides which run is which and writes it; this module only composes what a reader of
the UI needs, from the sweep's own objects.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from circuitlib import data, options
from circuitlib.circuits import Circuit
from circuitlib.discovery import DiscoveryConfig
from circuitlib.types import EditRequest, density_key
from record import names
from sweeps.config import SweepConfig
from sweeps.specs import CircuitRef

ROOT = Path(__file__).resolve().parents[1]


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


def sweep_description(config: SweepConfig) -> tuple[dict[str, str], str]:
    """The sweep run's tags (model, git commit) and its description (`record.store.describe_sweep` sets them)."""
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
    return tags, note


def discovery_params(split: data.SplitSpec, config: DiscoveryConfig, model: str) -> dict[str, object]:
    """Every setting a discovery ran with, as params (`options.flatten`): the model, its rows under `split.` and, under
    `discovery.`, its whole config with the method's settings its schedule fills in (`DiscoveryConfig.resolved`)."""
    return {"model": model, **options.flatten(split, "split."), **options.flatten(config.resolved(), "discovery.")}


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
