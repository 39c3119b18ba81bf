"""The names of a sweep's record in MLflow: run kinds, run names, tags and artifact paths (the sweep writes them,
the analysis reads them).

One parent run per sweep (tag kind=sweep); every trial is a nested child run (tag mlflow.parentRunId):

- discovery  `discover/{dataset}/seed{seed}`: params = the rows and the whole discovery config (`discovery.*`);
  metrics = the discovery history by step, and each snapshot's held-out figures (`circuit.{target}.faithfulness`,
  ...); artifacts `circuits/d{target}.safetensors` (one per reached target density) and `history.json`; tags
  `reached` and `unreached` list the targets, `circuit.{target}.density` and `.faithfulness` each snapshot's actual
  figures, `snapshot_flags` the snapshots that do not honestly stand for their target; inputs = the train and eval rows.
- edits      `edit/{dataset}/d{target}/{variant}/shard{k}` (the `full` model: `edit/full/shard{k}`):
  params `target_density`, `dataset`, `variant`, `seed` and the edit config; metrics = the edit summary and the
  circuit's `circuit_density` and `circuit_faithfulness`; artifact `edits.json` = the per-request table (an MLflow
  table: columns and data); tags link the circuit (`circuit_run_id`, `circuit_artifact`); input = the requests.
- analysis   `analysis`: the report, tables and plots; the sweep's run gets its headline metrics, `report.html` and
  a description with the findings.

Every run has a description (`mlflow.note.content`, linking its sweep and, for an edit, its circuit's discovery run)
and the git commit of the sweep (`mlflow.source.git.commit`). Artifacts are valid JSON (null, never NaN).
"""

from __future__ import annotations

from enum import Enum

from circuitlib.types import FULL as FULL  # re-exported: the full model's variant name
from circuitlib.types import density_key


class RunKind(str, Enum):
    """What a run of a sweep holds: the value of its TAG_KIND tag (and, for the analysis, its run name). A str, so a
    tag read back compares equal to its kind."""

    SWEEP = "sweep"  # the parent run
    DISCOVER = "discover"  # one dataset and seed's discovery
    EDIT = "edit"  # one shard of edit requests on one variant
    ANALYSIS = "analysis"  # a report of the sweep

    def __str__(self) -> str:  # the value in tags, names and messages, on every Python (3.12 changed the default)
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


TAG_KIND = "circuitlib.kind"  # a RunKind
TAG_SWEEP = "circuitlib.sweep"  # the sweep's name, on every run of it
TAG_TRIAL = "circuitlib.trial"  # the trial's key (its run name), unique within a sweep
TAG_DATASET = "circuitlib.dataset"
TAG_SEED = "circuitlib.seed"  # the sweep seed (circuitlib.seeds derives the split, mask and random-mask seeds)
TAG_TARGET = "circuitlib.target_density"  # as density_key spells it
TAG_VARIANT = "circuitlib.variant"
TAG_SHARD = "circuitlib.shard"
TAG_MODEL = "circuitlib.model"
TAG_NODE = "circuitlib.node_id"  # the Ray node that ran the trial
TAG_CIRCUIT_RUN = "circuitlib.circuit_run_id"
TAG_CIRCUIT_ARTIFACT = "circuitlib.circuit_artifact"
TAG_REACHED = "circuitlib.reached"  # comma-separated density keys of the targets a discovery reached
TAG_UNREACHED = "circuitlib.unreached"  # comma-separated density keys of the targets a discovery never reached
TAG_SNAPSHOT_FLAGS = "circuitlib.snapshot_flags"  # a discovery's dishonest snapshots, in words; empty when none
TAG_SETTINGS = "circuitlib.settings_hash"  # SweepConfig.settings_hash: a run is reused only under the same settings
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # a run's (or experiment's) markdown description in the MLflow UI
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"  # model training, for the UI
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # the commit the sweep ran from, on the sweep's run and every trial's

# On edit runs, the edited circuit's actual figures as metrics (the full model: 1 and 1), so the UI plots any edit
# metric against density; the params `target_density`, `dataset`, `variant` and `seed` group and colour the points.
EDIT_DENSITY = "circuit_density"
EDIT_FAITHFULNESS = "circuit_faithfulness"

# An experiment's description in the UI, set where it has none (a user's own is kept).
EXPERIMENT_NOTE = (
    "Circuit discovery and knowledge edits (Ge, Rudzicz and Zhu 2024, *What Do the Circuits Mean? A Knowledge Edit "
    "View*). One parent run per sweep; its children are the discovery runs (`discover/...`), the edit runs "
    "(`edit/...`) and the `analysis` runs holding the report. Plot an edit metric (`nll_new_drop`, `efficacy_score`) "
    f"against `{EDIT_DENSITY}`, grouped by the `variant` param, for the size window."
)

WELL_BELOW = 0.8  # a snapshot whose actual density is under WELL_BELOW x its target falls well below the target
SNAPSHOT_METRICS = (
    "density",
    "faithfulness",
    "faithfulness_low",
    "faithfulness_high",
    "complement_accuracy",
    "kl",
    "selected_among",
    "selection_faithfulness",
)

CIRCUITS_DIR = "circuits"
EDITS_ARTIFACT = "edits.json"


# MLflow 3.17's UI ignores `mlflow.experimentKind` when it picks a view: every experiment opens in the GenAI view
# unless the URL says `workflowType=machine_learning` (or the browser stored that choice from the view toggle), so
# every link the sweep writes or prints carries it.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def experiment_url(ui: str, experiment_id: str) -> str:
    """The experiment's runs table in MLflow's UI at `ui` (e.g. http://127.0.0.1:5000), in the model-training view."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}?{MODEL_TRAINING_VIEW}"


def run_link(experiment_id: str, run_id: str, text: str) -> str:
    """A markdown link to a run that MLflow's UI follows from a description (in the model-training view)."""
    return f"[{text}](#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW})"


def density_label(target: float) -> str:
    """`d0.05` for a target density of 0.05."""
    return f"d{density_key(target)}"


def well_below(density: float, target: float) -> bool:
    """Whether a snapshot of actual `density` falls well below its `target` (and so does not stand for it)."""
    return density < WELL_BELOW * target


def circuit_tag(target: float, figure: str) -> str:
    """`circuitlib.circuit.0.05.density`: the tag of one figure of a discovery's snapshot at `target`."""
    return f"circuitlib.circuit.{density_key(target)}.{figure}"


def circuit_metric(target: float, figure: str) -> str:
    """`circuit.0.05.faithfulness`: the metric of one held-out figure of a discovery's snapshot at `target`."""
    return f"circuit.{density_key(target)}.{figure}"


def circuit_artifact(target: float) -> str:
    """Artifact path of the circuit snapshot at `target` within its discovery run."""
    return f"{CIRCUITS_DIR}/{density_label(target)}.safetensors"


def discover_run_name(dataset: str, seed: int) -> str:
    return f"discover/{dataset}/seed{seed}"


def edit_run_name(dataset: str | None, target: float | None, variant: str, shard: int, seed: int = 0) -> str:
    """`edit/{dataset}/d{target}/{variant}/shard{k}` (seeds other than 0 add `/seed{s}` after the dataset),
    or `edit/full/shard{k}` for the unmasked model."""
    if variant == FULL:
        return f"edit/{FULL}/shard{shard}"
    assert target is not None, "a masked variant's edit has a circuit, so a target density"
    circuit = dataset if seed == 0 else f"{dataset}/seed{seed}"
    return f"edit/{circuit}/{density_label(target)}/{variant}/shard{shard}"
