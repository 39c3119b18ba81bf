"""The main job: discover circuits at each target density for each dataset, then edit every circuit variant.

    python sweeps/size_sweep.py [--preset paper|smollm2-cpu|tiny] [--name NAME] [--SETTING VALUE ...]
    circuitlib sweep --preset tiny --discovery.lr 0.05 --edit.max-steps 10      (the same command)
    ray job submit --working-dir . -- python sweeps/size_sweep.py --preset tiny

Phase 1 fans out one discovery trial per dataset x seed, phase 2 one edit trial per circuit x variant
x shard of the requests (plus the full model), as Ray Tune trials. Every trial is a child run of the
sweep's MLflow run, and phase 2 edits the circuits MLflow records for phase 1. Running the same sweep
name again resumes it.

Settings: `--name`, `--datasets`, ... and the library's configs as `--discovery.SETTING` and `--edit.SETTING`;
lists read as `a,b` or `[a, b]`, a bool setting given alone means true. The script imports the installed project
(`make install`); a Ray job ships its working dir, which Ray puts on the job's and its workers' PYTHONPATH.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from circuitlib import data, options, settings
from circuitlib.errors import InputError
from circuitlib.types import density_key
from sweeps import context, layout, tracking
from sweeps.config import SweepConfig, add_override_arguments, apply_overrides, load_preset, preset_names
from sweeps.progress import Progress
from sweeps.specs import CircuitRef, DiscoveryTrial, EditTrial, SweepRun, discovery_trials, edit_trials, tune_config

PROG = "size_sweep"


def parse_args(argv: list[str] | None, prog: str = PROG) -> argparse.Namespace:
    parser = options.OptionParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper", help=f"one of: {', '.join(preset_names())}")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config and trial counts; run nothing")
    add_override_arguments(parser)
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> SweepConfig:
    """Preset, then command-line overrides, then derived defaults; validated."""
    config = apply_overrides(load_preset(args.preset), args).resolved()
    config.validate()
    return config


def _frozen(path: Path) -> SweepConfig:
    """The settings a sweep was frozen with (settings added since then at their defaults; the split's, at the value
    that draws the rows its trials were drawn from: SweepConfig names them as SplitSpec does)."""
    frozen = json.loads(path.read_text())
    if "discovery" not in frozen:
        raise InputError(
            f"sweep {path.parent.name!r} in {path.parent} was started by an older circuitlib (flat settings in "
            f"{path.name}); finish it with that version, or start it anew under another --name"
        )
    try:
        return options.build(SweepConfig, data.SPLIT_BEFORE_RECORDED | frozen)
    except InputError as exc:
        raise InputError(f"{path}: not the settings of this circuitlib ({exc}); resume it with the circuitlib that "
                         "started it, or start it anew under another --name") from None


def freeze_params(config: SweepConfig) -> None:
    """Write the sweep's params.json once; a rerun under the same name must ask for the same sweep."""
    path = Path(config.work_dir) / config.name / "params.json"
    current = dataclasses.asdict(config)
    if path.is_file():
        changed = settings.changed(dataclasses.asdict(_frozen(path)), current)
        if changed:
            raise InputError(
                f"sweep {config.name!r} already exists in {path.parent} with other settings ({', '.join(changed)}); "
                "rerun it unchanged to resume, or pick a new --name"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=2))


def connect_ray(config: SweepConfig) -> Mapping[str, float]:
    """Join the cluster this job runs on (or start a local one) and check it can serve the sweep."""
    import ray

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # we keep 1 checkpoint
    # Reused trial actors must not sit in a deleted trial folder, so trials keep their working directory.
    env_vars = {"RAY_CHDIR_TO_TRIAL_DIR": "0"}
    local = "RAY_ADDRESS" not in os.environ  # a submitted job has RAY_ADDRESS; otherwise start a private local cluster
    ray.init(address="local" if local else None, runtime_env={"env_vars": env_vars},
             ignore_reinit_error=True, log_to_driver=False, configure_logging=False)
    return ray.cluster_resources()


def trial_resources(config: SweepConfig, cluster: Mapping[str, float], can_grow: bool = False) -> dict[str, float]:
    """One GPU per trial where the cluster has GPUs (unless configured otherwise), CPUs otherwise.

    Rejects a sweep the cluster cannot serve, before any trial starts; a cluster that `can_grow`
    (a remote one, which an autoscaler may extend with GPU nodes) is trusted to provide them.
    """
    if can_grow:
        wanted = 1 if config.require_gpu or cluster.get("GPU", 0) >= 1 else 0
        gpus = config.gpus_per_trial if config.gpus_per_trial is not None else wanted
        return {"cpu": config.cpus_per_trial, "gpu": gpus}
    if config.require_gpu and cluster.get("GPU", 0) < 1:
        raise InputError(
            f"preset {config.name} needs GPUs (model {config.model}) but the Ray cluster has none; "
            "submit it to a GPU cluster (see cluster/README.md) or use --preset smollm2-cpu"
        )
    gpus = config.gpus_per_trial if config.gpus_per_trial is not None else (1 if cluster.get("GPU", 0) >= 1 else 0)
    if gpus > cluster.get("GPU", 0) or config.cpus_per_trial > cluster.get("CPU", 0):
        raise InputError(
            f"a trial asks for {config.cpus_per_trial} CPU and {gpus} GPU, more than the cluster's "
            f"{cluster.get('CPU', 0):g} CPU and {cluster.get('GPU', 0):g} GPU"
        )
    return {"cpu": config.cpus_per_trial, "gpu": gpus}


def run_phase(
    phase: str, trainable: Callable[[dict[str, Any]], None], trials: Sequence[DiscoveryTrial | EditTrial],
    config: SweepConfig, resources: dict[str, float],
):
    """Run (or resume) one phase as a Ray Tune experiment with one trial per entry of `trials`."""
    from ray import tune

    assert config.storage_path is not None, "a sweep runs on its resolved config"
    name = f"{config.name}-{phase}"
    path = f"{config.storage_path.rstrip('/')}/{name}"
    wrapped = tune.with_resources(trainable, resources)
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=wrapped, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            wrapped,
            param_space={"trial": tune.grid_search([tune_config(t) for t in trials])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=config.max_concurrent_trials or None,
                reuse_actors=True,
                trial_name_creator=lambda t: t.config["trial"]["key"],
                trial_dirname_creator=lambda t: t.config["trial"]["key"].replace("/", "_"),
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=config.storage_path,
                verbose=0,
                callbacks=[Progress(phase, len(trials))],
                failure_config=tune.FailureConfig(max_failures=config.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    return tuner.fit()


def found_circuits(client, run: SweepRun, trials: Sequence[DiscoveryTrial]) -> list[CircuitRef]:
    """The circuits of every finished discovery of `trials`, as MLflow records them: phase 2's one source."""
    runs: dict[str, Any] = {}
    for logged in tracking.child_runs(client, run.experiment_id, run.parent_run_id, "discover"):
        runs.setdefault(logged.data.tags.get(layout.TAG_TRIAL, ""), logged)  # the newest run of a trial wins
    found = []
    for trial in trials:
        logged = runs.get(trial.key)
        if logged is None or logged.info.status != "FINISHED":
            continue
        reached = set(logged.data.tags.get(layout.TAG_REACHED, "").split(","))
        found += [CircuitRef(trial.name, trial.seed, target, logged.info.run_id)
                  for target in run.config.discovery.densities if density_key(target) in reached]
    return found


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    try:
        args = parse_args(argv, prog)
        config = resolve_config(args)
        if args.dry_run:
            print(json.dumps(dataclasses.asdict(config), indent=2))
            print(f"{len(config.datasets) * len(config.seeds)} discovery trials; "
                  f"{config.shards()} edit shards per circuit variant")
            return 0
        freeze_params(config)
        return run_sweep(config)
    except InputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


def run_sweep(config: SweepConfig) -> int:
    """Both phases; returns the exit code (1 when any trial failed, after logging everything that finished)."""
    from sweeps.trials import discovery_trial, edit_trial, trainable

    cluster = connect_ray(config)
    resources = trial_resources(config, cluster, can_grow="RAY_ADDRESS" in os.environ)
    assert config.tracking_uri is not None and config.experiment is not None, "a sweep runs on its resolved config"
    client = tracking.client_for(config.tracking_uri)
    embedded = config.tracking_uri.startswith("sqlite:")
    artifact_root = (Path(config.work_dir) / "mlartifacts").as_uri() if embedded else None  # servers proxy their own
    exp_id = tracking.experiment_id(client, config.experiment, artifact_root)
    parent = tracking.open_sweep_run(client, exp_id, config.name, dataclasses.asdict(config))
    context.describe_sweep(client, exp_id, parent, config)
    print(f"sweep {config.name}: MLflow run {parent} in experiment {config.experiment!r} at {config.tracking_uri}")
    print(f"trial resources {resources}; results and checkpoints under {config.storage_path}")
    run = SweepRun(config, exp_id, parent)

    discoveries = discovery_trials(run)
    found = run_phase("discover", trainable(discovery_trial, DiscoveryTrial), discoveries, config, resources)
    failures = len(found.errors)
    circuits = found_circuits(client, run, discoveries)
    edits = edit_trials(run, circuits)
    if edits:
        edited = run_phase("edit", trainable(edit_trial, EditTrial), edits, config, resources)
        failures += len(edited.errors)
    client.set_terminated(parent, "FAILED" if failures else "FINISHED")
    print(f"sweep {config.name}: {len(circuits)} circuits from {len(discoveries)} discoveries, "
          f"{len(edits)} edit trials, {failures} failed")
    print(f"browse: mlflow ui --backend-store-uri {config.tracking_uri}  then open http://127.0.0.1:5000")
    print(f"analyse: circuitlib report --experiment {config.experiment} --tracking-uri {config.tracking_uri}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
