"""The tiny sweep end to end through Ray Tune and MLflow, and its resumption after the driver is killed."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing, suppress
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from circuitlib import circuits, provenance
from circuitlib.types import density_key
from record import names

REPO = Path(__file__).resolve().parents[2]
# --no-report: these tests count the sweep's own runs; the report at a sweep's end is tested on the tiny_sweep fixture
SWEEP = [sys.executable, str(REPO / "sweeps" / "size_sweep.py"), "--preset", "tiny", "--no-report"]
# Slower discovery than the preset (paper learning rate), so the kill lands mid-discovery.
SLOW = [
    "--discovery.lr",
    "0.01",
    "--discovery.max_steps",
    "2000",
    "--discovery.checkpoint_every",
    "10",
    "--discovery.eval_every",
    "10",
]

pytestmark = pytest.mark.integration


def sweep_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return env | {"HF_HUB_OFFLINE": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


def run_sweep(work: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SWEEP, "--work-dir", str(work), *extra], capture_output=True, text=True, timeout=timeout, env=sweep_env()
    )


def run_name(run: Run) -> str:
    """A run's name (the sweep names every run it creates)."""
    assert run.info.run_name is not None
    return run.info.run_name


def child_runs(work: Path, name: str = "tiny"):
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(names.TAG_KIND) == "sweep"]
    children = [r for r in runs if r.data.tags.get(names.PARENT_TAG)]
    return client, parents, children


def outcome(work: Path) -> tuple[dict[str, str], dict[str, dict[str, float]], dict[str, list[float]]]:
    """Circuit digests by (run, artifact), edit summaries by run name, discovery density histories."""
    client, _, children = child_runs(work)
    digests, summaries, histories = {}, {}, {}
    for run in children:
        name = run.info.run_name
        if run.data.tags[names.TAG_KIND] == "discover":
            for art in client.list_artifacts(run.info.run_id, names.CIRCUITS_DIR):
                path = client.download_artifacts(run.info.run_id, art.path, str(work / "dl" / run.info.run_id))
                digests[f"{name}/{art.path}"] = circuits.load(path).digest
            histories[name] = [
                (m.step, m.value)
                for m in sorted(client.get_metric_history(run.info.run_id, "density"), key=lambda m: m.step)
            ]
        else:
            summaries[name] = {k: round(v, 5) for k, v in run.data.metrics.items()}
    return digests, summaries, histories


def test_tiny_sweep_logs_every_trial_once(tmp_path):
    proc = run_sweep(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[edit]" in proc.stdout and "done" in proc.stdout
    client, parents, children = child_runs(tmp_path)
    assert len(parents) == 1
    parent = parents[0].info.run_id
    assert all(r.data.tags[names.PARENT_TAG] == parent for r in children)
    run_names = [r.info.run_name for r in children]
    assert len(run_names) == len(set(run_names))
    discover = [r for r in children if r.data.tags[names.TAG_KIND] == "discover"]
    edits = [r for r in children if r.data.tags[names.TAG_KIND] == "edit"]
    assert sorted(run_name(r) for r in discover) == ["discover/determiner_noun/seed0", "discover/hierarchy/seed0"]
    assert all(r.info.status == "FINISHED" for r in children)
    reached = {r.info.run_name: r.data.tags[names.TAG_REACHED].split(",") for r in discover}
    n_circuits = sum(len([t for t in v if t]) for v in reached.values())
    assert len(edits) == n_circuits * 3 * 2 + 2  # circuit x 3 variants x 2 shards, plus full x 2 shards
    for run in discover:
        arts = {a.path for a in client.list_artifacts(run.info.run_id, names.CIRCUITS_DIR)}
        assert arts == {names.circuit_artifact(float(t)) for t in reached[run.info.run_name]}
        assert client.get_metric_history(run.info.run_id, "faithfulness")
        # Snapshot honesty: each snapshot's actual figures, and flags that agree with the circuit files.
        tags, metrics = run.data.tags, run.data.metrics
        snapshots = {
            float(t): circuits.load(
                client.download_artifacts(
                    run.info.run_id, names.circuit_artifact(float(t)), str(tmp_path / "snapshots" / run.info.run_id)
                )
            )
            for t in reached[run.info.run_name]
        }
        flags = tags[names.TAG_SNAPSHOT_FLAGS]
        for target, snap in snapshots.items():
            assert tags[names.circuit_tag(target, "density")] == f"{snap.density:.6g}"
            assert tags[names.circuit_tag(target, "faithfulness")] == f"{snap.provenance['faithfulness']:.4g}"
            assert metrics[names.circuit_metric(target, "faithfulness")] == snap.provenance["faithfulness"]
            assert (
                metrics[names.circuit_metric(target, "complement_accuracy")] == snap.provenance["complement_accuracy"]
            )
            below = f"{names.density_label(target)} at density {snap.density:.3g}: well below"
            assert (below in flags) == names.well_below(snap.density, target), flags
        shares = len({snap.digest for snap in snapshots.values()}) < len(snapshots)
        assert ("one snapshot" in flags) == shares, flags
    for run in edits:
        assert "efficacy_score" in run.data.metrics and "nll_new_drop" in run.data.metrics
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {names.EDITS_ARTIFACT}
        if run.data.tags[names.TAG_VARIANT] != "full":
            source = client.get_run(run.data.tags[names.TAG_CIRCUIT_RUN])
            assert run_name(source).startswith(f"discover/{run.data.tags[names.TAG_DATASET]}/")
            assert run.data.tags[names.TAG_TARGET] in reached[source.info.run_name]

    # `circuitlib discover` recomputes a sweep circuit bit for bit from what its file records.
    path = client.download_artifacts(discover[0].info.run_id, names.CIRCUITS_DIR, str(tmp_path / "dl"))
    circuit = circuits.load(sorted(Path(path).glob("*.safetensors"))[0])
    out = tmp_path / "recomputed"
    cli = subprocess.run(
        [sys.executable, "-m", "circuitlib", "discover", *provenance.discover_args(circuit), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=sweep_env() | {"OMP_NUM_THREADS": "1"},
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert circuit.target_density is not None
    recomputed = circuits.load(out / f"circuit_d{density_key(circuit.target_density)}.safetensors")
    assert recomputed.digest == circuit.digest

    rerun = run_sweep(tmp_path)  # everything finished: nothing is redone, nothing duplicated
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _, parents2, children2 = child_runs(tmp_path)
    assert len(parents2) == 1 and len(children2) == len(children)

    # Tune's experiment says every trial terminated, MLflow says one discovery did not finish (the state a restored
    # experiment once left in CI): the rerun runs that trial again in a new experiment and finishes the sweep.
    stranded = next(r for r in discover if run_name(r) == "discover/hierarchy/seed0")
    client.set_terminated(stranded.info.run_id, "FAILED")
    again = run_sweep(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    line = "(discover/hierarchy/seed0) are ones Ray Tune's experiment counts as ended, as it may after a stop; running"
    assert line in again.stderr, again.stderr[-3000:]
    assert [p.name for p in (tmp_path / "ray").glob("tiny-discover-*-retry1")]
    _, parents3, children3 = child_runs(tmp_path)
    assert len(parents3) == 1 and len(children3) == len(children)
    assert all(r.info.status == "FINISHED" for r in children3)


def discovery_in_progress(db: Path) -> bool:
    """Whether a discovery run is RUNNING with a density logged, read straight from the SQLite file.

    Read-only on purpose: an MlflowClient would create or migrate the tables while the driver does the same.
    """
    if not db.exists():
        return False
    query = (
        "SELECT 1 FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid JOIN metrics m ON m.run_uuid = r.run_uuid"
        " WHERE r.status = 'RUNNING' AND t.key = ? AND t.value = 'discover' AND m.key = 'density' LIMIT 1"
    )
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
            return conn.execute(query, (names.TAG_KIND,)).fetchone() is not None
    except sqlite3.OperationalError:  # tables not created yet, or the file is locked for a write
        return False


def checkpoint_on_record(storage: Path) -> bool:
    """Whether the discovery phase's saved Tune experiment state names a trial checkpoint (its trial data holds the
    checkpoint's path pickled, as hex)."""
    marker = b"checkpoint_0".hex()
    for state in storage.glob("*-discover-*/experiment_state-*.json"):
        with suppress(OSError):
            if marker in state.read_text():
                return True
    return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted sweep that an interrupted one must resume to."""
    work = tmp_path_factory.mktemp("reference")
    proc = run_sweep(work, *SLOW)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


@pytest.mark.parametrize("lose_checkpoints", [False, True], ids=["checkpoints-kept", "checkpoints-lost"])
def test_killed_sweep_resumes_to_the_uninterrupted_result(tmp_path, reference, lose_checkpoints):
    """SIGKILL of the driver and its Ray cluster mid-discovery; the rerun ends with the uninterrupted sweep's runs,
    circuits, histories and edit summaries. With the checkpoints Tune's saved state names deleted (as a kill between
    Tune deleting a checkpoint and saving its state leaves them), the rerun starts those trials over."""
    work = tmp_path / "interrupted"
    log = tmp_path / "interrupted.log"
    with log.open("w") as out:
        driver = subprocess.Popen(
            [*SWEEP, "--work-dir", str(work), *SLOW],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=sweep_env(),
            start_new_session=True,
        )
    killed_mid_discovery = False
    deadline = time.time() + 300
    try:
        while time.time() < deadline and driver.poll() is None:
            time.sleep(0.5)
            if discovery_in_progress(work / "mlflow.db") and (
                not lose_checkpoints or checkpoint_on_record(work / "ray")
            ):
                killed_mid_discovery = True
                break
    finally:
        with suppress(ProcessLookupError):  # the group is gone if the driver already exited
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
        driver.wait()
    assert killed_mid_discovery, f"the sweep ended before it could be interrupted:\n{log.read_text()[-3000:]}"
    if lose_checkpoints:
        saved = list((work / "ray").glob("*-discover-*/*/checkpoint_*"))
        assert saved
        for path in saved:
            shutil.rmtree(path)

    resumed = run_sweep(work, *SLOW)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if lose_checkpoints:  # (a kill can also land in Tune's own window without it: the kept case may restart a trial)
        assert "Ray Tune lost the checkpoint of" in resumed.stderr, resumed.stderr[-3000:]
    _, parents, children = child_runs(work)
    _, _, reference_children = child_runs(reference)
    assert len(parents) == 1
    assert sorted(run_name(r) for r in children) == sorted(run_name(r) for r in reference_children)
    digests, summaries, histories = outcome(work)
    ref_digests, ref_summaries, ref_histories = outcome(reference)
    assert digests == ref_digests
    assert summaries == ref_summaries
    assert histories == ref_histories


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc: Linux, as CI)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def trial_workers(driver: int) -> list[int]:
    """The Ray worker processes of the sweep `driver` started (its own local cluster): where its trials run."""
    workers = []
    for pid in set(descendants(driver)):
        with suppress(OSError):
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            if title.startswith(b"ray::") and not title.endswith(b"Agent"):
                workers.append(pid)
    return workers


def trial_errors(storage: Path) -> str:
    """The errors Ray Tune recorded for failed trials (error.txt in their folders), for a failure message."""
    return "".join(f"\n--- {path}\n{path.read_text()[-3000:]}" for path in sorted(storage.rglob("error.txt")))


def test_trials_killed_without_retries_and_corrupt_checkpoints_resume_to_every_run(tmp_path):
    """Workers killed mid-discovery with --max-failures 0: the sweep exits 1 naming the lost trials, their runs FAILED
    (not RUNNING) and the parent not FINISHED; with every checkpoint then truncated, the rerun (default retries)
    still ends with every run the discoveries call for (edits recomputed, not restored from the first run's list)."""
    flags = ["--max-failures", "0"]
    log = tmp_path / "killed.log"
    with log.open("w") as out:
        driver = subprocess.Popen(
            [*SWEEP, "--work-dir", str(tmp_path), *flags],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=sweep_env(),
            start_new_session=True,
        )
    killed: list[int] = []
    deadline = time.time() + 300
    try:
        while time.time() < deadline and driver.poll() is None and not killed:
            time.sleep(0.5)
            if discovery_in_progress(tmp_path / "mlflow.db") and list((tmp_path / "ray").rglob("state.pt")):
                killed = trial_workers(driver.pid)
                for pid in killed:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        assert driver.wait(timeout=300) == 1, log.read_text()[-3000:]
    finally:
        with suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    assert killed, f"the sweep ended before it could be interrupted:\n{log.read_text()[-3000:]}"
    text = log.read_text()
    _, parents, children = child_runs(tmp_path)
    assert [p.info.status for p in parents] == ["FAILED"]
    assert "RUNNING" not in {r.info.status for r in children}
    discover = [r for r in children if r.data.tags[names.TAG_KIND] == "discover"]
    lost = sorted(run_name(r) for r in discover if r.info.status == "FAILED")
    assert lost, [(run_name(r), r.info.status) for r in discover]
    line = next((ln for ln in text.splitlines() if "not finished in MLflow:" in ln), "")
    assert all(name in line for name in lost), text[-3000:]
    # A discovery whose worker started after the kill may finish: the summary counts its circuits, and only its.
    finished = [r for r in discover if r.info.status == "FINISHED"]
    n_done = sum(len([t for t in r.data.tags[names.TAG_REACHED].split(",") if t]) for r in finished)
    assert f"sweep tiny: {n_done} circuits from 2 discoveries" in text, text[-3000:]

    states = list((tmp_path / "ray").rglob("state.pt"))
    assert states
    for state in states:
        state.write_bytes(state.read_bytes()[:64])
    # The rerun keeps the default retries (max_failures is operational: the same sweep), so one passing failure of a
    # trial cannot fail it; a checkpoint it could not get past would fail every retry the same way.
    rerun = run_sweep(tmp_path)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:] + trial_errors(tmp_path / "ray")
    _, parents, children = child_runs(tmp_path)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert all(r.info.status == "FINISHED" for r in children)
    run_names = [run_name(r) for r in children]
    assert len(run_names) == len(set(run_names))
    discover = [r for r in children if r.data.tags[names.TAG_KIND] == "discover"]
    assert len(discover) == 2
    n_circuits = sum(len([t for t in r.data.tags[names.TAG_REACHED].split(",") if t]) for r in discover)
    assert n_circuits and len(children) - len(discover) == n_circuits * 3 * 2 + 2
