"""The two Ray Tune trainables of a sweep: discover circuits for one dataset x seed; edit one circuit variant shard.

Each trial logs to its own MLflow child run (reused, never duplicated, when the sweep is resumed),
checkpoints through Ray Tune so a preempted trial continues where it stopped, and returns a summary.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
from ray import tune

from circuitlib import circuits, data, options, provenance
from circuitlib.discovery import DiscoveryConfig, DiscoveryResult, SnapshotRecord, discover
from circuitlib.editing import RequestResult, edit_requests, results_as_rows, summarize, variant_masks
from circuitlib.errors import CorruptCheckpoint
from circuitlib.models import LoadedModel, load_model
from circuitlib.types import density_key
from record import inputs, names, store
from record.names import RunKind
from sweeps import outcomes, progress, ui
from sweeps.config import SweepConfig
from sweeps.specs import DiscoveryTrial, EditTrial, Spec, from_tune

log = logging.getLogger(__name__)
ROWS_FILE = "rows.json"
EDIT_CHECKPOINT_EVERY = 4  # requests between edit-trial checkpoints
PROGRESS_REPORT_S = 10.0  # a discovery reports its progress (sweeps.progress) at most this often between checkpoints


def discovery_inputs(trial: DiscoveryTrial) -> tuple[data.SplitSpec, DiscoveryConfig]:
    """The rows and the config a discovery trial runs on: the sweep's settings with this dataset's seeds."""
    return trial.sweep.config.trial_inputs(trial.dataset, trial.seed)


def discovery_model(cfg: SweepConfig) -> LoadedModel:
    """The model as discovery trials load it: float32 weights (discovery.precision selects bf16 autocast over them)."""
    return load_model(cfg.model, revision=cfg.model_revision)


def trainable(run: Callable[[Spec], None], spec_type: type[Spec], driver: str = "") -> Callable[[dict[str, Any]], None]:
    """`run` as a Tune function trainable: Tune passes {"trial": tune_config(spec)}; `run` gets the spec.

    An error of the trial's input (`outcomes.INPUT_ERRORS`) is not raised, which Tune would retry to no avail: the
    trial ends with one last result that carries its line and `driver`, the id of the sweep run that started it
    (`sweeps.outcomes`); its MLflow run is marked FAILED (by `record.store.outcome`, or, where the error came before
    it, by the driver's end check). Every other error is raised, for Tune to retry."""

    def tune_run(config: dict[str, Any]) -> None:
        quiet_worker()
        try:
            run(from_tune(spec_type, config["trial"]))
        except outcomes.INPUT_ERRORS as exc:
            line = outcomes.input_error_line(exc)
            log.warning("%s: %s (an error of its input: not retried)", config["trial"]["key"], line)
            tune.report({outcomes.INPUT_ERROR: line, outcomes.DRIVER: driver, "skipped": False})

    tune_run.__name__ = run.__name__
    return tune_run


def quiet_worker() -> None:
    """What a trial's worker writes reaches the driver's output (`log_to_driver`): not Ray Train's line per checkpoint,
    nor the traceback Python prints where Ray's SIGTERM handler (the actor stopped at the end of a phase, or of a
    sweep) raises SystemExit inside a finalizer, which cannot raise."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    if not isinstance(sys.unraisablehook, _QuietOnExit):
        sys.unraisablehook = _QuietOnExit(sys.unraisablehook)


class _QuietOnExit:
    """An unraisable-exception hook that passes on all but SystemExit."""

    def __init__(self, hook: Callable[[Any], object]) -> None:
        self.hook = hook

    def __call__(self, unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, SystemExit):
            self.hook(unraisable)


def _client(cfg: SweepConfig) -> store.MlflowClient:
    assert cfg.tracking_uri is not None, "trials get the sweep's resolved config"
    return store.client_for(cfg.tracking_uri)


def _target(circuit: circuits.Circuit) -> float:
    """The target density of a circuit discovery snapshotted (every snapshot has one)."""
    assert circuit.target_density is not None, "discovery's snapshots carry their target density"
    return circuit.target_density


def _number(value: object) -> float:
    """A recorded figure as a float; NaN where it is missing or not a number."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def snapshot_honesty(found: Sequence[circuits.Circuit]) -> tuple[dict[str, str], dict[str, float]]:
    """The tags and metrics that say how honestly a discovery's snapshots stand for their targets: each one's actual
    density and held-out figures, and flags (`snapshot_flags`, empty when honest) for a snapshot well below its
    target, for targets that share one snapshot (the same circuit), and for faithfulness chosen as the best of
    several evaluations on the rows that report it."""
    tags: dict[str, str] = {}
    metrics: dict[str, float] = {}
    flags: list[str] = []
    shared: dict[str, list[float]] = defaultdict(list)
    for circuit in found:
        target, density = _target(circuit), circuit.density
        record = SnapshotRecord.from_provenance(circuit.provenance)
        figures = {k: _number(getattr(record, k)) for k in names.SNAPSHOT_METRICS} | {"density": density}
        tags[names.circuit_tag(target, "density")] = f"{density:.6g}"
        tags[names.circuit_tag(target, "faithfulness")] = f"{figures['faithfulness']:.4g}"
        metrics |= {names.circuit_metric(target, k): v for k, v in figures.items() if math.isfinite(v)}
        if names.well_below(density, target):
            flags.append(
                f"{names.density_label(target)} at density {density:.3g}: well below its target "
                f"(< {names.WELL_BELOW:g} x {density_key(target)})"
            )
        if record.optimistic:
            flags.append(
                f"{names.density_label(target)} faithfulness: best of {figures['selected_among']:g} "
                "evaluations on the rows that report it (optimistic)"
            )
        shared[circuit.digest].append(target)
    for targets in shared.values():
        if len(targets) > 1:
            flags.append(f"{', '.join(names.density_label(t) for t in targets)}: one snapshot")
    tags[names.TAG_SNAPSHOT_FLAGS] = "; ".join(flags)
    return tags, metrics


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


class _Speed:
    """Units (steps, requests) per second since the first `at` call of this run of the trial (a resumed trial counts
    from where it resumed)."""

    def __init__(self) -> None:
        self.start: tuple[float, float] | None = None
        self.last: float | None = None  # the speed at the last `at` that could tell

    def at(self, units: float) -> float | None:
        now = time.monotonic()
        if self.start is None or units < self.start[1]:
            self.start, self.last = (now, units), None
            return None
        seconds, done = now - self.start[0], units - self.start[1]
        if done > 0 and seconds > 0:
            self.last = done / seconds
        return self.last


def discovery_progress(latest: dict[str, float], max_steps: int, speed: float | None) -> dict[str, float]:
    """What a discovery trial reports to Tune for the driver's progress lines (`sweeps.progress.trial_line`)."""
    fields = {
        progress.STEP: latest.get("step", 0),
        progress.MAX_STEPS: max_steps,
        progress.DENSITY: latest.get("density", 1.0),
    }
    if "faithfulness" in latest:
        fields[progress.FAITHFULNESS] = latest["faithfulness"]
    if speed is not None:
        fields[progress.STEPS_PER_S] = speed
    return fields


def edit_progress(done: int, total: int, speed: float | None) -> dict[str, float]:
    """What an edit trial reports to Tune for the driver's progress lines."""
    fields: dict[str, float] = {progress.REQUESTS_DONE: done, progress.REQUESTS_TOTAL: total}
    if speed is not None:
        fields[progress.REQUESTS_PER_S] = speed
    return fields


def _restored_checkpoint(into: Path) -> Path | None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    checkpoint.to_directory(str(into))
    return into


def discovery_trial(trial: DiscoveryTrial) -> None:
    """Phase 1: learn masks on one dataset with one seed; log its history and a circuit per reached density."""
    cfg = trial.sweep.config
    split, config = discovery_inputs(trial)
    client = _client(cfg)
    tags = {
        names.TAG_KIND: RunKind.DISCOVER,
        names.TAG_SWEEP: cfg.name,
        names.TAG_DATASET: trial.name,
        names.TAG_SEED: str(trial.seed),
        names.TAG_MODEL: cfg.model,
        names.TAG_NODE: _node_id(),
        names.NOTE_TAG: ui.describe_discovery(
            trial.sweep.experiment_id, trial.sweep.parent_run_id, cfg.name, trial.name, trial.seed
        ),
        **store.inherited_tags(client, trial.sweep.parent_run_id),
    }
    params = {**ui.discovery_params(split, config, cfg.model), "seed": trial.seed}
    run_id, finished = store.open_trial_run(
        client, trial.sweep.experiment_id, trial.sweep.parent_run_id, trial.key, tags, params, trial.sweep.settings_hash
    )
    if finished:
        tune.report({"run_id": run_id, "skipped": True})
        return

    with store.outcome(client, run_id), tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lm = discovery_model(cfg)
        train, eval_data = split.load()
        inputs.log_classification(client, run_id, trial.dataset, train, eval_data)
        checkpoint_dir = _restored_checkpoint(work / "checkpoint") or work / "checkpoint"
        logged = store.last_logged_step(client, run_id, "density")
        pending: list[dict[str, float]] = []
        latest: dict[str, float] = {}
        speed = _Speed()
        reported = [-math.inf]  # when it last reported its progress

        def on_eval(row: dict[str, float]) -> None:
            latest.update(row)
            if row["step"] > logged:
                pending.append(row)
            rate = speed.at(row["step"])
            if time.monotonic() - reported[0] >= PROGRESS_REPORT_S:
                reported[0] = time.monotonic()
                tune.report(discovery_progress(latest, config.max_steps, rate))

        def flush() -> None:
            store.log_metrics(client, run_id, pending, step_key="step")
            pending.clear()

        def on_snapshot(circuit: circuits.Circuit) -> None:
            name = Path(names.circuit_artifact(_target(circuit))).name
            path = circuits.save(provenance.stamp(circuit, split, lm), work / "circuits" / name)
            store.log_file(client, run_id, path, names.CIRCUITS_DIR)

        def on_checkpoint(directory: Path) -> None:
            flush()
            reported[0] = time.monotonic()
            tune.report(
                discovery_progress(latest, config.max_steps, speed.last),
                checkpoint=tune.Checkpoint.from_directory(str(directory)),
            )

        def run() -> DiscoveryResult:
            return discover(
                lm,
                train,
                eval_data,
                config,
                checkpoint_dir=checkpoint_dir,
                on_snapshot=on_snapshot,
                on_eval=on_eval,
                on_checkpoint=on_checkpoint,
                progress=False,
            )

        try:
            outcome = run()
        except CorruptCheckpoint as exc:  # discovery is deterministic: starting over finds the same circuits
            log.warning("%s: %s; starting the trial over", trial.key, exc)
            shutil.rmtree(checkpoint_dir)
            outcome = run()
        flush()
        reached = ",".join(density_key(_target(c)) for c in outcome.circuits)
        unreached = ",".join(density_key(t) for t in outcome.unreached)
        honesty_tags, honesty_metrics = snapshot_honesty(outcome.circuits)
        store.set_tags(client, run_id, {names.TAG_REACHED: reached, names.TAG_UNREACHED: unreached, **honesty_tags})
        store.log_metrics(client, run_id, [honesty_metrics])
        store.log_json(
            client, run_id, {"full_accuracy": outcome.full_accuracy, "history": outcome.history}, "history.json"
        )
    tune.report({"run_id": run_id, "skipped": False})


def _edit_rows(checkpoint_dir: Path | None) -> list[dict[str, Any]]:
    path = None if checkpoint_dir is None else checkpoint_dir / ROWS_FILE
    if path is None or not path.is_file():
        return []
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # a corrupt checkpoint: edit the shard over
        log.warning("checkpoint %s: cannot be read (%s); starting the trial over", path, exc)
        return []


def _save_rows(
    directory: Path, rows: list[dict[str, Any]], report: Callable[..., None], fields: dict[str, float] | None = None
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ROWS_FILE).write_text(json.dumps(rows))
    report({"edited": len(rows), **(fields or {})}, checkpoint=tune.Checkpoint.from_directory(str(directory)))


def edit_trial(trial: EditTrial) -> None:
    """Phase 2: edit one shard of the requests on one variant of one circuit (or the full model)."""
    cfg = trial.sweep.config
    ref = trial.circuit
    client = _client(cfg)
    tags = {
        names.TAG_KIND: RunKind.EDIT,
        names.TAG_SWEEP: cfg.name,
        names.TAG_VARIANT: trial.variant,
        names.TAG_SHARD: str(trial.shard),
        names.TAG_SEED: str(ref.seed if ref else 0),
        names.TAG_MODEL: cfg.model,
        names.TAG_NODE: _node_id(),
        names.NOTE_TAG: ui.describe_edit(
            trial.sweep.experiment_id, trial.sweep.parent_run_id, cfg.name, trial.variant, ref
        ),
        **store.inherited_tags(client, trial.sweep.parent_run_id),
    }
    if ref is not None:
        tags |= {
            names.TAG_DATASET: ref.dataset,
            names.TAG_TARGET: density_key(ref.target),
            names.TAG_CIRCUIT_RUN: ref.run_id,
            names.TAG_CIRCUIT_ARTIFACT: ref.artifact,
        }
    run_id, finished = store.open_trial_run(
        client,
        trial.sweep.experiment_id,
        trial.sweep.parent_run_id,
        trial.key,
        tags,
        {
            **ui.edit_params(
                ref.dataset if ref else None, ref.target if ref else None, trial.variant, ref.seed if ref else 0
            ),
            "shard": trial.shard,
            "random_mask_seed": trial.random_mask_seed,
            **options.flatten(cfg.edit, "edit."),
        },
        trial.sweep.settings_hash,
    )
    result = {"run_id": run_id, "variant": trial.variant, "shard": trial.shard}
    if finished:
        tune.report({**result, **store.run_metrics(client, run_id), "skipped": True})
        return

    with store.outcome(client, run_id), tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pool = data.load_requests(cfg.requests, cfg.edit_limit)
        requests = pool[trial.shard * cfg.shard_size : (trial.shard + 1) * cfg.shard_size]
        inputs.log_requests(client, run_id, cfg.requests, requests, trial.shard)
        lm = load_model(cfg.model, revision=cfg.model_revision)  # edits run on float32 weights
        circuit = None
        if ref is not None:
            circuit = circuits.load(store.download(client, ref.run_id, ref.artifact, work / "circuit"))
            circuits.check_compatible(circuit, lm.params, source=f"{ref.run_id}/{ref.artifact}")
        masks = variant_masks(circuit, trial.variant, trial.random_mask_seed)
        rows = _edit_rows(_restored_checkpoint(work / "restored"))
        done = {r["case_id"] for r in rows}
        todo = [r for r in requests if r.case_id not in done]
        speed = _Speed()
        speed.at(len(rows))
        tune.report(edit_progress(len(rows), len(requests), None))
        for start in range(0, len(todo), EDIT_CHECKPOINT_EVERY):
            chunk = todo[start : start + EDIT_CHECKPOINT_EVERY]
            rows += results_as_rows(edit_requests(lm, chunk, trial.variant, masks, cfg.edit, pool=pool, progress=False))
            _save_rows(
                work / "checkpoint", rows, tune.report, edit_progress(len(rows), len(requests), speed.at(len(rows)))
            )
        summary = summarize([RequestResult(**r) for r in rows])
        store.log_metrics(client, run_id, [summary | ui.edit_figures(circuit)])
        store.log_table_once(client, run_id, ui.edit_table(rows, requests), names.EDITS_ARTIFACT)
    tune.report({**result, **summary, "skipped": False})
