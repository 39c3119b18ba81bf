"""The two Ray Tune trainables of a sweep: discover circuits for one dataset x seed; edit one circuit variant shard.

Each trial logs to its own MLflow child run (reused, never duplicated, when the sweep is resumed),
checkpoints through Ray Tune so a preempted trial continues where it stopped, and returns a summary.
"""

from __future__ import annotations

import json
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from circuitlib import circuits, data
from circuitlib.discovery import DiscoveryConfig, discover
from circuitlib.editing import EditConfig, RequestResult, edit_requests, results_as_rows, summarize, variant_masks
from circuitlib.models import load_model
from sweeps import layout, tracking
from sweeps.config import SweepConfig

ROWS_FILE = "rows.json"
EDIT_CHECKPOINT_EVERY = 4  # requests between edit-trial checkpoints


def compute_dtype(name: str) -> torch.dtype:
    """Discovery's dtype for the frozen weights: `auto` is bfloat16 on a GPU and float32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def mask_seed(dataset: str, seed: int) -> int:
    """The discovery seed for one dataset: independent across datasets, so circuits of different
    datasets share no initial logits or Gumbel noise and their overlap is not inflated by common randomness."""
    return zlib.crc32(f"{dataset}/{seed}".encode()) % 2**31


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


@contextmanager
def _trial_run(client, run_id: str) -> Iterator[None]:
    """Mark the child run FINISHED on success and FAILED on any error (which is re-raised for Tune to retry)."""
    try:
        yield
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def _restored_checkpoint(into: Path) -> Path | None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    checkpoint.to_directory(str(into))
    return into


def discovery_trial(config: dict[str, Any]) -> None:
    """Phase 1: learn masks on one dataset with one seed; log its history and a circuit per reached density."""
    cfg = SweepConfig(**config["sweep"])
    spec, seed = config["dataset"], int(config["seed"])
    name = data.dataset_name(spec)
    key = layout.discover_run_name(name, seed)
    client = tracking.client_for(cfg.tracking_uri)
    tags = {
        layout.TAG_KIND: "discover", layout.TAG_SWEEP: cfg.name, layout.TAG_DATASET: name,
        layout.TAG_SEED: str(seed), layout.TAG_MODEL: cfg.model, layout.TAG_NODE: _node_id(),
    }
    run_id, finished = tracking.open_trial_run(
        client, config["experiment_id"], config["parent_run_id"], key, tags, {"dataset": spec, "seed": seed}
    )
    result = {"run_id": run_id, "dataset": name, "spec": spec, "seed": seed}
    if finished:
        run = client.get_run(run_id)
        tune.report({**result, "reached": run.data.tags.get(layout.TAG_REACHED, ""), "skipped": True})
        return

    with _trial_run(client, run_id), tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lm = load_model(cfg.model, dtype=compute_dtype(cfg.dtype), revision=cfg.model_revision)
        dataset = data.load_classification(spec, limit=cfg.data_limit, seed=seed)
        train, eval_data = data.split(dataset, cfg.eval_fraction, seed)
        discovery_config = DiscoveryConfig(
            densities=tuple(cfg.densities), max_steps=cfg.max_steps, batch_size=cfg.batch_size, lr=cfg.lr,
            lambda_init=cfg.lambda_init, lambda_step=cfg.lambda_step, lambda_max=cfg.lambda_max, head_epochs=cfg.head_epochs, eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every,
            max_length=cfg.max_length, mask_seed=mask_seed(name, seed),
        )
        checkpoint_dir = _restored_checkpoint(work / "checkpoint") or work / "checkpoint"
        logged = tracking.last_logged_step(client, run_id, "density")
        pending: list[dict[str, float]] = []
        latest: dict[str, float] = {}

        def on_eval(row: dict[str, float]) -> None:
            latest.update(row)
            if row["step"] > logged:
                pending.append(row)

        def flush() -> None:
            tracking.log_metrics(client, run_id, pending, step_key="step")
            pending.clear()

        def on_snapshot(circuit: circuits.Circuit) -> None:
            path = circuits.save(circuit, work / "circuits" / Path(layout.circuit_artifact(circuit.target_density)).name)
            tracking.log_file(client, run_id, path, layout.CIRCUITS_DIR)

        def on_checkpoint(directory: Path) -> None:
            flush()
            progress = {"step": latest.get("step", 0), "density": latest.get("density", 1.0)}
            tune.report(progress, checkpoint=tune.Checkpoint.from_directory(str(directory)))

        outcome = discover(
            lm, train, eval_data, discovery_config, checkpoint_dir=checkpoint_dir,
            on_snapshot=on_snapshot, on_eval=on_eval, on_checkpoint=on_checkpoint, progress=False,
        )
        flush()
        reached = ",".join(f"{c.target_density:g}" for c in outcome.circuits)
        unreached = ",".join(f"{t:g}" for t in outcome.unreached)
        tracking.set_tags(client, run_id, {layout.TAG_REACHED: reached, layout.TAG_UNREACHED: unreached})
        tracking.log_json(client, run_id, {"full_accuracy": outcome.full_accuracy, "history": outcome.history},
                          "history.json")
    tune.report({**result, "reached": reached, "skipped": False})


def _edit_rows(checkpoint_dir: Path | None) -> list[dict[str, Any]]:
    if checkpoint_dir is None or not (checkpoint_dir / ROWS_FILE).is_file():
        return []
    return json.loads((checkpoint_dir / ROWS_FILE).read_text())


def _save_rows(directory: Path, rows: list[dict[str, Any]], report: Callable[..., None]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ROWS_FILE).write_text(json.dumps(rows))
    report({"edited": len(rows)}, checkpoint=tune.Checkpoint.from_directory(str(directory)))


def edit_trial(config: dict[str, Any]) -> None:
    """Phase 2: edit one shard of the requests on one variant of one circuit (or the full model)."""
    cfg = SweepConfig(**config["sweep"])
    variant, shard, seed = config["variant"], int(config["shard"]), int(config["seed"])
    name, target = config.get("dataset"), config.get("target")
    key = layout.edit_run_name(name, target, variant, shard, seed)
    client = tracking.client_for(cfg.tracking_uri)
    circuit_run = config.get("circuit_run_id")
    tags = {
        layout.TAG_KIND: "edit", layout.TAG_SWEEP: cfg.name, layout.TAG_VARIANT: variant,
        layout.TAG_SHARD: str(shard), layout.TAG_SEED: str(seed), layout.TAG_MODEL: cfg.model,
        layout.TAG_NODE: _node_id(),
    }
    if circuit_run:
        tags |= {
            layout.TAG_DATASET: name, layout.TAG_TARGET: f"{target:g}", layout.TAG_CIRCUIT_RUN: circuit_run,
            layout.TAG_CIRCUIT_ARTIFACT: layout.circuit_artifact(target),
        }
    edit_config = EditConfig(lr=cfg.edit_lr, max_steps=cfg.edit_steps, max_change=cfg.edit_max_change)
    run_id, finished = tracking.open_trial_run(
        client, config["experiment_id"], config["parent_run_id"], key, tags,
        {"variant": variant, "shard": shard, "edit_config": asdict(edit_config)},
    )
    result = {"run_id": run_id, "variant": variant, "shard": shard}
    if finished:
        tune.report({**result, **client.get_run(run_id).data.metrics, "skipped": True})
        return

    with _trial_run(client, run_id), tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pool = data.load_requests(cfg.requests, cfg.edit_limit)
        requests = pool[shard * cfg.shard_size : (shard + 1) * cfg.shard_size]
        lm = load_model(cfg.model, dtype=torch.float32, revision=cfg.model_revision)
        circuit = None
        if circuit_run:
            path = tracking.download(client, circuit_run, layout.circuit_artifact(target), work / "circuit")
            circuit = circuits.load(path)
            circuits.check_compatible(circuit, lm.params, source=f"{circuit_run}/{layout.circuit_artifact(target)}")
        masks = variant_masks(circuit, variant, seed)
        rows = _edit_rows(_restored_checkpoint(work / "restored"))
        done = {r["case_id"] for r in rows}
        todo = [r for r in requests if r.case_id not in done]
        for start in range(0, len(todo), EDIT_CHECKPOINT_EVERY):
            chunk = todo[start : start + EDIT_CHECKPOINT_EVERY]
            rows += results_as_rows(edit_requests(lm, chunk, variant, masks, edit_config, pool=pool, progress=False))
            _save_rows(work / "checkpoint", rows, tune.report)
        summary = summarize([RequestResult(**r) for r in rows])
        tracking.log_metrics(client, run_id, [summary])
        tracking.log_json(client, run_id, rows, layout.EDITS_ARTIFACT)
    tune.report({**result, **summary, "skipped": False})
