"""One driver per sweep, wherever it runs: two drivers of one sweep, with two work dirs, against one MLflow server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from record import lease, names

REPO = Path(__file__).resolve().parents[2]
SWEEP = [sys.executable, str(REPO / "sweeps" / "size_sweep.py"), "--preset", "tiny", "--no-report", "--name", "dup"]
# The tiny sweep ends within a minute; held at each target for a thousand steps, its discovery outlasts a second
# driver's start (imports and all, half a minute on a loaded two-core machine).
LONG = ["--discovery.hold_steps", "1000", "--discovery.max_steps", "2500"]
TTL_S = 60  # the killed driver's lease: longer than a driver takes to start, shorter than the default 90 s

pytestmark = pytest.mark.integration


def sweep_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return env | {"HF_HUB_OFFLINE": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


def leased_run(client: MlflowClient, log: Path, timeout: float) -> str:
    """The id of sweep `dup`'s parent run once the driver writing `log` holds its lease and has gone past taking it
    (it prints its run once Ray is up): a taker too slow to be sure of its write drops it and tries again later."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        exp = client.get_experiment_by_name("dup")
        if exp is not None and "sweep dup: MLflow run" in log.read_text():
            for run in client.search_runs([exp.experiment_id], filter_string=f"tags.`{names.TAG_KIND}` = 'sweep'"):
                if lease.LEASE_TAG in run.data.tags:
                    return run.info.run_id
        time.sleep(0.5)
    raise TimeoutError(f"no driver took the lease within {timeout}s:\n{log.read_text()[-2000:]}")


def test_a_second_driver_of_a_sweep_is_refused_whatever_its_work_dir(mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server)
    log = tmp_path / "a.log"
    with log.open("w") as out:
        a = subprocess.Popen(
            [*SWEEP, *LONG, "--work-dir", str(tmp_path / "a"), "--tracking-uri", mlflow_server],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=sweep_env(),
            start_new_session=True,
        )
    try:
        parent = leased_run(client, log, timeout=180)
        holder = lease.holder(client, parent)
        assert holder is not None and holder.pid == a.pid

        b = subprocess.run(
            [*SWEEP, *LONG, "--work-dir", str(tmp_path / "b"), "--tracking-uri", mlflow_server],
            capture_output=True,
            text=True,
            timeout=120,
            env=sweep_env(),
        )
        assert b.returncode != 0, b.stdout + b.stderr
        assert a.poll() is None, "B was refused while A still ran: it did not wait for A's sweep to end"
        errors = [line for line in b.stderr.splitlines() if "error" in line]
        assert len(errors) == 1, b.stderr
        assert "sweep 'dup': another driver runs it" in errors[0] and f"pid {a.pid}" in errors[0], b.stderr
        assert "Traceback" not in b.stderr

        assert a.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
            a.wait(timeout=30)

    assert lease.holder(client, parent) is None  # released at the end
    exp = client.get_experiment_by_name("dup")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(names.TAG_KIND) == "sweep"]
    assert [r.info.run_id for r in parents] == [parent]
    counts = Counter(r.info.run_name for r in runs if r.data.tags.get(names.PARENT_TAG) == parent)
    assert counts and all(n == 1 for n in counts.values()), counts


def started_discoveries(client: MlflowClient, parent: str, timeout: float) -> dict[str, str]:
    """{run name: run id} of sweep run `parent`'s discovery trials once one of them has started."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        exp = client.get_experiment_by_name("dup")
        assert exp is not None
        query = f"tags.`{names.PARENT_TAG}` = '{parent}' and tags.`{names.TAG_KIND}` = 'discover'"
        runs = client.search_runs([exp.experiment_id], filter_string=query, max_results=1000)
        if runs:
            return {str(r.info.run_name): r.info.run_id for r in runs}
        time.sleep(0.5)
    raise TimeoutError(f"no discovery trial started within {timeout}s")


def test_a_killed_drivers_sweep_is_taken_over_after_its_lease_expires_with_nothing_duplicated(mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server)
    env = sweep_env() | {lease.TTL_ENV: str(TTL_S)}
    log = tmp_path / "a.log"
    with log.open("w") as out:
        a = subprocess.Popen(
            [*SWEEP, "--work-dir", str(tmp_path / "a"), "--tracking-uri", mlflow_server],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env | {lease.HOST_ENV: "another-machine"},  # as from another host: B cannot see that A is gone
            start_new_session=True,
        )
    try:
        parent = leased_run(client, log, timeout=180)
        held = lease.holder(client, parent)
        assert held is not None and held.pid == a.pid
        assert held.expires - time.time() <= TTL_S + 1  # the environment's TTL, not the default's
        begun = started_discoveries(client, parent, timeout=300)
    finally:
        os.killpg(a.pid, signal.SIGKILL)  # the driver and all it started in its session: its Ray too
        a.wait(timeout=30)
    killed = time.time()

    held = lease.holder(client, parent)
    assert held is not None and held.pid == a.pid and held.live(), "the dead driver's lease stands until it expires"
    b_cmd = [*SWEEP, "--work-dir", str(tmp_path / "b"), "--tracking-uri", mlflow_server]
    early = subprocess.run(b_cmd, capture_output=True, text=True, timeout=120, env=env)
    assert early.returncode != 0, early.stdout + early.stderr
    errors = [line for line in early.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, early.stderr
    assert "sweep 'dup': another driver runs it" in errors[0] and f"pid {a.pid}" in errors[0], early.stderr
    assert "Traceback" not in early.stderr

    held = lease.holder(client, parent)
    assert held is not None and held.pid == a.pid  # the refused driver left the dead one's lease as it was
    time.sleep(max(0.0, held.expires - time.time()) + 1)
    assert time.time() - killed < TTL_S + 20  # the short TTL, not the default 90 s, is what B waited for
    blog = tmp_path / "b.log"
    with blog.open("w") as out:
        b = subprocess.run(b_cmd, stdout=out, stderr=subprocess.STDOUT, timeout=900, env=env, start_new_session=True)
    assert b.returncode == 0, blog.read_text()[-3000:]

    assert lease.holder(client, parent) is None  # B released it at the end
    exp = client.get_experiment_by_name("dup")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(names.TAG_KIND) == "sweep"]
    assert [r.info.run_id for r in parents] == [parent]
    assert parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get(names.PARENT_TAG) == parent]
    counts = Counter(r.info.run_name for r in children)
    duplicated = {name: n for name, n in counts.items() if n > 1}
    assert counts and not duplicated, duplicated
    assert {r.info.run_name: r.info.status for r in children if r.info.status != "FINISHED"} == {}
    ids = {r.info.run_name: r.info.run_id for r in children}
    assert {name: ids.get(name) for name in begun} == begun  # B finished the runs A had begun, under their ids
