"""The main job: discover circuits at each target density for each dataset, then edit every circuit variant.

    python sweeps/size_sweep.py [--preset NAME|PATH.yaml] [--name NAME] [--SETTING VALUE ...]
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
import fcntl
import hashlib
import itertools
import json
import logging
import os
import shlex
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from circuitlib import data, options, settings
from circuitlib.errors import InputError
from circuitlib.types import density_key
from record import lease, names, store
from record.names import RunKind
from sweeps import outcomes, ui
from sweeps.config import (
    PRESET_HELP,
    RETIRED,
    SweepConfig,
    add_override_arguments,
    apply_overrides,
    load_preset,
    preset_names,
    refuse_retired,
)
from sweeps.progress import STOP, Progress, TrackingWatch, stop_line
from sweeps.specs import (
    CircuitRef,
    DiscoveryTrial,
    EditTrial,
    SweepRun,
    discovery_trials,
    edit_trials,
    tune_config,
)

PROG = "size_sweep"


class SweepStopped(Exception):
    """The driver was asked to stop (`sweeps.progress.Stop`): nothing more is started, nothing retried."""


def parse_args(argv: list[str] | None, prog: str = PROG) -> argparse.Namespace:
    parser = options.OptionParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset",
        default="paper",
        metavar="NAME|PATH",
        help=PRESET_HELP.format(names=", ".join(preset_names())) + " (default: %(default)s)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved config and trial counts; run nothing"
    )
    parser.add_argument(
        "--no-report",
        action="store_true",
        help="end without the analysis (by default the sweep ends by writing its report under WORK_DIR/NAME/report, "
        "logging it to its MLflow run and printing each claim's verdict)",
    )
    for key in RETIRED:  # read only to be refused with what replaced it
        parser.add_argument(options.flag(key), dest=key, help=argparse.SUPPRESS)
    add_override_arguments(parser)
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> SweepConfig:
    """Preset, then command-line overrides, then derived defaults; validated."""
    given = {key: value for key in RETIRED if (value := getattr(args, key, None)) is not None}
    refuse_retired(given, options.flag, "see --help")
    config = apply_overrides(load_preset(args.preset), args).resolved()
    config.validate()
    return config


def _frozen(path: Path, frozen: dict[str, Any]) -> SweepConfig:
    """The settings a sweep was frozen with in `path` (settings added since then at their defaults; split settings, at
    the value that draws the rows its trials were drawn from: data.SPLIT_BEFORE_RECORDED)."""
    if "discovery" not in frozen:
        raise InputError(
            f"sweep {path.parent.name!r} in {path.parent} was started by an older circuitlib (flat settings in "
            f"{path.name}); finish it with that version, or start it anew under another --name"
        )
    sweep = f"sweep {path.parent.name!r} in {path.parent}"
    refuse_retired(
        frozen,
        lambda key: f"{sweep} was started with {key} {frozen[key]}",
        "finish it with the circuitlib that started it, or start it anew under another --name",
    )
    try:
        return options.build(SweepConfig, {**frozen, "split": data.SPLIT_BEFORE_RECORDED | frozen.get("split", {})})
    except InputError as exc:
        raise InputError(
            f"{path}: not the settings of this circuitlib ({exc}); resume it with the circuitlib that "
            "started it, or start it anew under another --name"
        ) from None


def freeze_params(config: SweepConfig) -> bool:
    """Freeze the sweep's settings in its params.json the first time; a rerun under the same name that asks for other
    results is refused (where and how the sweep runs may change). Returns whether it was frozen before."""
    path = Path(config.work_dir) / config.name / "params.json"
    return settings.freeze(
        path,
        dataclasses.asdict(config),
        lambda frozen: settings.changed(_frozen(path, frozen).shaping(), config.shaping()),
        lambda changed: (
            f"sweep {config.name!r} already exists in {path.parent} with other settings "
            f"({', '.join(changed)}); rerun it unchanged to resume, or pick a new --name"
        ),
    )


def check_params(config: SweepConfig) -> bool:
    """Whether the sweep's params.json exists, one of other settings refused as `freeze_params` does; writes nothing
    (so the checks that need the world can run before the sweep is frozen)."""
    return (Path(config.work_dir) / config.name / "params.json").is_file() and freeze_params(config)


def sweep_folder(config: SweepConfig) -> Path:
    """The sweep's folder under work_dir, created; an unwritable one is one clear error before anything runs."""
    folder = Path(config.work_dir) / config.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise InputError(f"work_dir {config.work_dir}: cannot write {folder} ({exc.strerror or exc})") from None
    return folder


@contextmanager
def driver_lock(folder: Path) -> Iterator[None]:
    """Hold the sweep's lock file while it runs, so two drivers of one sweep (one work dir) never run at once; the
    system drops the lock when the driver dies, so a killed sweep resumes without clean-up."""
    path = folder / "driver.lock"
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise InputError(
                f"sweep {folder.name!r}: another driver runs it ({path} is held by pid "
                f"{handle.read().strip() or '?'}); wait for it, or stop it"
            ) from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def local_resources() -> dict[str, float]:
    """What the private local Ray cluster will have: this machine's CPUs and GPUs."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def preflight(config: SweepConfig) -> None:
    """What can be checked before Ray starts and params.json is frozen: the resources of a local cluster, the
    tracking server, and that its sweep of this name has these settings."""
    if "RAY_ADDRESS" not in os.environ:
        trial_resources(config, local_resources())
    assert config.tracking_uri is not None and config.experiment is not None, "a sweep runs on its resolved config"
    store.probe(config.tracking_uri)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # a new SQLite store's notices
    client = store.client_for(config.tracking_uri)
    exp_id = store.find_experiment(client, config.experiment)
    if exp_id is not None:
        store.sweep_run(client, exp_id, config.name, config.settings_hash())


def connect_ray(config: SweepConfig) -> Mapping[str, float]:
    """Join the cluster this job runs on (or start a local one) and check it can serve the sweep."""
    import ray

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # we keep 1 checkpoint
    # Reused trial actors must not sit in a deleted trial folder, so trials keep their working directory. What the
    # trials write reaches the driver's output (log_to_driver), their warnings above all; the hub's and MLflow's
    # progress bars (a model's "Loading weights", an artifact's download) and MLflow's hint on integer columns of
    # logged tables would drown them.
    env_vars = {
        "RAY_CHDIR_TO_TRIAL_DIR": "0",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "PYTHONWARNINGS": "ignore::UserWarning:mlflow.types.utils",
    }
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # a log gets the trials' lines without colour codes
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # nor a bar per file the report downloads
    local = "RAY_ADDRESS" not in os.environ  # a submitted job has RAY_ADDRESS; otherwise start a private local cluster
    ray.init(
        address="local" if local else None,
        runtime_env={"env_vars": env_vars},
        ignore_reinit_error=True,
        log_to_driver=True,
        configure_logging=False,
    )
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


def phase_resources(config: SweepConfig, resources: Mapping[str, float], phase: RunKind) -> dict[str, float]:
    """What one trial of `phase` asks Ray for: `resources`, with an edit trial's GPU share where trials get GPUs."""
    if phase == RunKind.EDIT and resources.get("gpu", 0) > 0 and config.gpus_per_edit_trial is not None:
        return {**resources, "gpu": config.gpus_per_edit_trial}
    return dict(resources)


def experiment_name(config: SweepConfig, phase: RunKind, trials: Sequence[DiscoveryTrial | EditTrial]) -> str:
    """The Tune experiment of one phase with exactly these trials: a rerun that asks for the same trials restores it,
    one that asks for others (other discoveries found, other settings) starts its own, never an old trial list."""
    specs = json.dumps([tune_config(t) for t in trials], sort_keys=True)
    return f"{config.name}-{phase}-{hashlib.sha256(specs.encode()).hexdigest()[:12]}"


def run_phase(
    phase: RunKind,
    trainable: Callable[[dict[str, Any]], None],
    trials: Sequence[DiscoveryTrial | EditTrial],
    config: SweepConfig,
    resources: dict[str, float],
    restore: bool = True,
):
    """Run (or resume) one phase as a Ray Tune experiment with one trial per entry of `trials`, each asking for
    `resources` (an edit trial for its GPU share: `phase_resources`). With `restore=False` the trials run in a new
    experiment (`-retryN`) even where one of theirs exists."""
    from ray import tune

    assert config.storage_path is not None, "a sweep runs on its resolved config"
    name = experiment_name(config, phase, trials)
    root = config.storage_path.rstrip("/")
    if not restore:
        retries = (f"{name}-retry{n}" for n in itertools.count(1))
        name = next(retry for retry in retries if not tune.Tuner.can_restore(f"{root}/{retry}"))
    path = f"{root}/{name}"
    wrapped = tune.with_resources(trainable, phase_resources(config, resources, phase))
    if STOP.requested:
        raise SweepStopped(phase)
    if restore and tune.Tuner.can_restore(path):
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
    try:
        grid = tuner.fit()  # the first SIGINT or SIGTERM stops it as Tune stops on SIGINT (sweeps.progress.Stop)
    finally:
        STOP.detach()
    if STOP.requested:  # its trials were cut short, not ended: nothing is retried, the rerun restores them
        raise SweepStopped(phase)
    return grid


def stranded(
    trials: Sequence[DiscoveryTrial | EditTrial],
    clean: Collection[str],
    left: Collection[str],
) -> list[DiscoveryTrial | EditTrial]:
    """The trials that Tune ended without an error (keys in `clean`) yet that have no FINISHED MLflow run (`left`).
    A restored Tune experiment can stop a restarted trial after its first checkpoint and record it as terminated (seen
    once in CI; the cause in Ray is not known); restoring it again never reruns that trial, so it needs a new one."""
    return [t for t in trials if t.key in left and t.key in clean]


def settle_phase(
    phase: RunKind,
    trainable: Callable[[dict[str, Any]], None],
    trials: Sequence[DiscoveryTrial | EditTrial],
    run: SweepRun,
    client,
    resources: dict[str, float],
    driver: str = "",
) -> dict[str, str]:
    """`run_phase`, then once more, in a new experiment, for its `stranded` trials and those whose checkpoint Tune lost
    (`outcomes.lost_checkpoints`; they start over): a trial ends either FINISHED in MLflow or with an error that a
    rerun of the sweep resumes. Returns the trials that failed on their input in this run of the sweep (`driver`),
    {key: line}, each printed as one line and not retried; one that failed on its input in an earlier run is
    stranded (its restored experiment would not run it again), so it runs again here."""
    grid = run_phase(phase, trainable, trials, run.config, resources)
    results = [grid[i] for i in range(len(grid))]
    failed, earlier = outcomes.input_failures(results, driver)
    clean = {r.config["trial"]["key"] for r in results if r.error is None and r.config is not None} - failed.keys()
    left = set(unfinished(client, run, trials))
    restarted = outcomes.lost_checkpoints(results) & left
    again = [t for t in trials if t.key in restarted] + stranded(trials, clean, left)
    if again and STOP.requested:
        raise SweepStopped(phase)
    if again:
        if restarted:
            print(
                f"sweep {run.config.name}: Ray Tune lost the checkpoint of {len(restarted)} {phase} trial(s) "
                f"({shown(sorted(restarted), 5)}; a driver killed as it replaced one); running them again from the "
                "start in a new experiment",
                file=sys.stderr,
            )
        redo = [t.key for t in again if t.key in earlier]
        lost = [t.key for t in again if t.key not in earlier and t.key not in restarted]
        if redo:
            print(
                f"sweep {run.config.name}: {len(redo)} {phase} trial(s) failed on their input in an earlier run "
                f"({', '.join(redo[:5])}); running them again in a new experiment",
                file=sys.stderr,
            )
        if lost:
            print(
                f"sweep {run.config.name}: {len(lost)} {phase} trial(s) not finished yet ({', '.join(lost[:5])}) are "
                "ones Ray Tune's experiment counts as ended, as it may after a stop; running them again in a new "
                "experiment",
                file=sys.stderr,
            )
        retried = run_phase(phase, trainable, again, run.config, resources, restore=False)
        failed |= outcomes.input_failures([retried[i] for i in range(len(retried))], driver)[0]
    for key, line in failed.items():
        print(f"sweep {run.config.name}: {key} failed on its input, not retried: {line}", file=sys.stderr)
    return failed


def found_circuits(client, run: SweepRun, trials: Sequence[DiscoveryTrial]) -> list[CircuitRef]:
    """The circuits of every finished discovery of `trials`, as MLflow records them: phase 2's one source."""
    runs: dict[str, Any] = {}
    for logged in store.child_runs(client, run.experiment_id, run.parent_run_id, RunKind.DISCOVER, run.settings_hash):
        runs.setdefault(logged.data.tags.get(names.TAG_TRIAL, ""), logged)  # the newest run of a trial wins
    found = []
    for trial in trials:
        logged = runs.get(trial.key)
        if logged is None or logged.info.status != "FINISHED":
            continue
        reached = set(logged.data.tags.get(names.TAG_REACHED, "").split(","))
        found += [
            CircuitRef(trial.name, trial.seed, target, logged.info.run_id)
            for target in run.config.discovery.densities
            if density_key(target) in reached
        ]
    return found


def unfinished(client, run: SweepRun, trials: Sequence[DiscoveryTrial | EditTrial]) -> list[str]:
    """The trials without a FINISHED MLflow run of these settings: the sweep's own check of what it logged. Runs left
    RUNNING by a trial that died with its worker are marked FAILED on the way (no trial runs any more)."""
    status: dict[str, str] = {}
    for kind in (RunKind.DISCOVER, RunKind.EDIT):
        runs = store.child_runs(client, run.experiment_id, run.parent_run_id, kind, run.settings_hash)
        store.fail_running(client, runs)
        for logged in runs:  # newest first: the newest run of a trial wins
            status.setdefault(logged.data.tags.get(names.TAG_TRIAL, ""), logged.info.status)
    return [t.key for t in trials if status.get(t.key) != "FINISHED"]


def shown(keys: Sequence[str], most: int = 10) -> str:
    """Up to `most` trial keys, and how many more there are."""
    return ", ".join(keys[:most]) + (f" and {len(keys) - most} more" if len(keys) > most else "")


def summary(
    circuits: Sequence[CircuitRef],
    discoveries: Sequence[DiscoveryTrial],
    edits: Sequence[EditTrial],
    failed: Sequence[str],
) -> str:
    """What a sweep produced, counting distinct circuits (dataset, seed, target) and distinct trials (their keys):
    a list that names one twice is counted once, never as two results."""
    n_circuits = len({(c.dataset, c.seed, density_key(c.target)) for c in circuits})
    n_discoveries = len({t.key for t in discoveries})
    n_edits = len({t.key for t in edits})
    return f"{n_circuits} circuits from {n_discoveries} discoveries, {n_edits} edit trials, {len(set(failed))} failed"


def resume_command(prog: str, argv: Sequence[str]) -> str:
    """The command line that runs this sweep again (so resumes it): as it was given, with this interpreter where it
    lies under the working directory (`make demo`'s `.venv/bin/python`), `python` otherwise."""
    try:
        python = str(Path(sys.executable).relative_to(Path.cwd()))
    except ValueError:
        python = "python"
    script = sys.argv[0] if prog == PROG and sys.argv[0].endswith(".py") else "sweeps/size_sweep.py"
    head = [python, script] if prog == PROG else prog.split()
    return shlex.join([*head, *argv])


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv, prog)
        config = resolve_config(args)
        if args.dry_run:
            print(json.dumps(dataclasses.asdict(config), indent=2))
            print(
                f"{len(config.datasets) * len(config.seeds)} discovery trials; "
                f"{config.shards()} edit shards per circuit variant"
            )
            return 0
        with driver_lock(sweep_folder(config)):  # first: two drivers must not even initialise MLflow's store at once
            check_params(config)
            preflight(config)
            freeze_params(config)
            return run_sweep(config, resume_command(prog, given), report=not args.no_report)
    except InputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the sweep took SIGINT for itself (run_sweep): nothing ran yet
        print(f"{prog}: stopped before any trial started", file=sys.stderr)
        return 128 + signal.SIGINT


def stopped(
    client,
    run: SweepRun,
    phases: Sequence[tuple[RunKind, Sequence[DiscoveryTrial | EditTrial]]],
    not_started: Sequence[RunKind],
    resume: str,
) -> int:
    """After a stop (`SweepStopped`): the runs of the trials it cut short and the sweep's run are marked KILLED, one
    line says what finished, what was cut short and how to resume; the exit code is 128 + the signal's number."""
    status: dict[str, str] = {}
    cut = set(STOP.cut_short())
    for kind in (RunKind.DISCOVER, RunKind.EDIT):
        for logged in store.child_runs(client, run.experiment_id, run.parent_run_id, kind, run.settings_hash):
            key = logged.data.tags.get(names.TAG_TRIAL, "")
            if logged.info.status == "RUNNING":  # its trial was cut short: Tune has stopped its actor by now
                store.terminate(client, logged.info.run_id, "KILLED")
                cut.add(key)
            status.setdefault(key, logged.info.status)  # newest first: the newest run of a trial wins
    store.terminate(client, run.parent_run_id, "KILLED")
    rows = []
    for phase, trials in phases:
        keys = list(dict.fromkeys(t.key for t in trials))
        finished = [k for k in keys if status.get(k) == "FINISHED"]
        rows.append((phase, len(keys), finished, [k for k in keys if k in cut and k not in finished]))
    signame = STOP.signal or "SIGINT"
    print(stop_line(run.config.name, signame, rows, not_started, resume), file=sys.stderr, flush=True)
    return 128 + signal.Signals[signame].value


def run_sweep(config: SweepConfig, resume: str = "", report: bool = True) -> int:
    """Both phases; returns the exit code (1 when any trial failed, after logging everything that finished; 128 + the
    signal's number when a SIGINT or SIGTERM stopped it)."""
    resume = resume or resume_command(PROG, sys.argv[1:])
    STOP.install(
        last_words=f"sweep {config.name}: stopped at once, without waiting for its trials; resume with: {resume}"
    )
    assert config.tracking_uri is not None, "a sweep runs on its resolved config"
    watch = TrackingWatch(config.tracking_uri).start() if TrackingWatch.watches(config.tracking_uri) else None
    try:
        return _run_sweep(config, resume, report)
    finally:
        if watch is not None:
            watch.close()
        STOP.uninstall()


def _run_sweep(config: SweepConfig, resume: str, report: bool) -> int:
    assert config.tracking_uri is not None and config.experiment is not None, "a sweep runs on its resolved config"
    client = store.client_for(config.tracking_uri)
    embedded = config.tracking_uri.startswith("sqlite:")
    artifact_root = (Path(config.work_dir) / "mlartifacts").as_uri() if embedded else None  # servers proxy their own
    exp_id = store.experiment_id(client, config.experiment, artifact_root)
    parent = store.open_sweep_run(client, exp_id, config.name, options.flatten(config), config.settings_hash())
    # One driver per sweep, whatever its work dir or machine: the lease on the parent run, held in MLflow until the
    # sweep ends (the work dir's flock covers one work dir only), taken before Ray starts so a second driver is
    # refused at once.
    with lease.acquire(client, parent, label=f"sweep {config.name!r}"):
        return _drive(config, resume, report, client, exp_id, parent)


def _drive(config: SweepConfig, resume: str, report: bool, client, exp_id: str, parent: str) -> int:
    """The sweep, under its lease: Ray, both phases, the end of the sweep's run and its report."""
    from sweeps.trials import discovery_trial, edit_trial, trainable

    driver = uuid.uuid4().hex  # this run of the sweep, as the trials it starts report it (sweeps.outcomes)
    cluster = connect_ray(config)
    STOP.take()  # ray.init set its own SIGTERM handler
    resources = trial_resources(config, cluster, can_grow="RAY_ADDRESS" in os.environ)
    store.describe_sweep(client, exp_id, parent, *ui.sweep_description(config))
    print(f"sweep {config.name}: MLflow run {parent} in experiment {config.experiment!r} at {config.tracking_uri}")
    print(
        f"trial resources {resources} (edit trials {phase_resources(config, resources, RunKind.EDIT)}); results and "
        f"checkpoints under {config.storage_path}"
    )
    run = SweepRun(config, exp_id, parent)

    discoveries = discovery_trials(run)
    try:
        inputs = settle_phase(
            RunKind.DISCOVER,
            trainable(discovery_trial, DiscoveryTrial, driver),
            discoveries,
            run,
            client,
            resources,
            driver,
        )
    except SweepStopped:
        return stopped(client, run, [(RunKind.DISCOVER, discoveries)], [RunKind.EDIT], resume)
    circuits = found_circuits(client, run, discoveries)
    edits = edit_trials(run, circuits)
    if edits:
        try:
            inputs |= settle_phase(
                RunKind.EDIT, trainable(edit_trial, EditTrial, driver), edits, run, client, resources, driver
            )
        except SweepStopped:
            return stopped(client, run, [(RunKind.DISCOVER, discoveries), (RunKind.EDIT, edits)], [], resume)
    failed = list(dict.fromkeys(unfinished(client, run, [*discoveries, *edits])))  # each trial once
    store.terminate(client, parent, "FAILED" if failed else "FINISHED")
    print(f"sweep {config.name}: {summary(circuits, discoveries, edits, failed)}")
    on_input = [key for key in failed if key in inputs]
    if on_input:
        print(
            f"sweep {config.name}: {len(on_input)} trial(s) failed on their input ({shown(on_input)}), each named "
            "above; a retry cannot help them: fix the input, then run the sweep again to resume",
            file=sys.stderr,
        )
    others = [key for key in failed if key not in inputs]
    if others:
        print(
            f"sweep {config.name}: not finished in MLflow: {shown(others)}; rerun the same command to redo them",
            file=sys.stderr,
        )
    if report and circuits:  # the analysis judges circuits; with none, there is nothing to report
        report_sweep(config, parent)
    print(
        f"browse: mlflow ui --backend-store-uri {config.tracking_uri}  then open "
        f"{names.experiment_url('http://127.0.0.1:5000', exp_id)}"
    )
    print(f"analyse: circuitlib report --experiment {config.experiment} --tracking-uri {config.tracking_uri}")
    return 1 if failed else 0


def report_sweep(config: SweepConfig, parent: str) -> None:
    """End with the sweep's analysis (analysis.cli.report_sweep): its report under the sweep's folder, logged to its
    MLflow run, and each claim's verdict printed; a report that cannot be made is one line, and the sweep stands."""
    from analysis.cli import report_sweep as analyse_sweep  # the analysis reads what the sweep logged

    assert config.experiment is not None, "a sweep runs on its resolved config"
    folder = Path(config.work_dir) / config.name
    try:
        lines = analyse_sweep(
            config.experiment, parent, config.tracking_uri, folder / "report", folder / "analysis-cache"
        )
    except (InputError, store.StoreError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(
            f"sweep {config.name}: no report ({reason}); make it with: circuitlib report --experiment "
            f"{config.experiment} --sweep {parent} --tracking-uri {config.tracking_uri}",
            file=sys.stderr,
        )
        return
    for line in lines:
        print(line)


def command(argv: list[str]) -> int:
    """`circuitlib sweep ARGS` (a `circuitlib.commands` entry point)."""
    return main(argv, prog="circuitlib sweep")


if __name__ == "__main__":
    sys.exit(main())
