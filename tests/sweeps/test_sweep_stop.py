"""Ctrl-C stops a sweep: its running trials are cut short and marked KILLED, nothing is retried, one line says what
finished and how to resume, and the same command resumes it to every circuit; a second Ctrl-C exits at once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import suppress
from pathlib import Path

import pytest
from test_sweep_resume import (
    SWEEP,
    checkpoint_on_record,
    child_runs,
    discovery_in_progress,
    run_name,
    run_sweep,
    sweep_env,
)

from record import names

pytestmark = pytest.mark.integration

# A slower discovery than the preset's (it still reaches both targets of both datasets), checkpointed and evaluated
# every 10 steps, so the stop lands while discovery runs and after its first checkpoint.
SLOW = [
    "--discovery.lr",
    "0.003",
    "--discovery.max_steps",
    "3000",
    "--discovery.checkpoint_every",
    "10",
    "--discovery.eval_every",
    "10",
]
STOP_WITHIN_S = 60  # Tune saves its state and stops the trials' actors (5 s at most), the driver marks the runs


def start(work: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [*SWEEP, "--work-dir", str(work), *SLOW],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=sweep_env(),
            start_new_session=True,
        )


def wait_for_discovery(driver: subprocess.Popen, work: Path, log: Path, timeout: float = 300) -> None:
    """Until both discovery trials run (the driver says so), one has logged a density, and Tune's saved state names a
    trial checkpoint (on a loaded machine the first checkpoint can land well after the first density)."""
    deadline = time.time() + timeout
    while time.time() < deadline and driver.poll() is None:
        running = "[discover] 0/2 done, 2 running" in log.read_text() and discovery_in_progress(work / "mlflow.db")
        if running and checkpoint_on_record(work / "ray"):
            return
        time.sleep(0.2)
    raise AssertionError(f"discovery never ran while the sweep did:\n{log.read_text()[-3000:]}")


def stop(driver: subprocess.Popen, *signals: signal.Signals, gap: float = 0.0) -> tuple[int, float]:
    """Send `signals` to the driver alone (as a terminal's Ctrl-C reaches it: Ray's processes block SIGINT); its exit
    code and how long it took to exit. The driver's group is killed in any case (a driver that never exits)."""
    sent = time.time()
    try:
        for sig in signals:
            os.kill(driver.pid, sig)
            time.sleep(gap)
        return driver.wait(timeout=STOP_WITHIN_S), time.time() - sent
    finally:
        with suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()


def test_ctrl_c_stops_the_sweep_and_the_same_command_resumes_it(tmp_path):
    work, log = tmp_path / "work", tmp_path / "stopped.log"
    driver = start(work, log)
    wait_for_discovery(driver, work, log)
    code, took = stop(driver, signal.SIGINT)
    text = log.read_text()
    assert code == 128 + signal.SIGINT, text[-3000:]
    assert took < STOP_WITHIN_S

    # One line: what finished, what was cut short, the command that resumes it.
    lines = [ln for ln in text.splitlines() if ln.startswith("sweep tiny stopped by SIGINT: ")]
    assert len(lines) == 1, text[-3000:]
    line = lines[0]
    python = os.path.relpath(SWEEP[0]) if not os.path.relpath(SWEEP[0]).startswith("..") else "python"
    assert line.endswith(f"; resume with: {python} {' '.join(SWEEP[1:])} --work-dir {work} {' '.join(SLOW)}"), line
    assert "edit not started" in line and "cut short (" in line, line
    # Nothing retried, nothing Tune would print for its own restore, no traceback.
    assert not list((work / "ray").glob("*-retry*")), sorted(p.name for p in (work / "ray").iterdir())
    assert "running them again" not in text and "Traceback" not in text and "Tuner.restore" not in text, text[-3000:]

    # The trials it cut short, their runs and the sweep's run: KILLED in MLflow; none left RUNNING.
    _, parents, children = child_runs(work)
    assert [p.info.status for p in parents] == ["KILLED"]
    discover = {run_name(r): r.info.status for r in children if r.data.tags[names.TAG_KIND] == "discover"}
    assert set(discover.values()) <= {"KILLED", "FINISHED"} and "KILLED" in discover.values(), discover
    killed = sorted(name for name, status in discover.items() if status == "KILLED")
    finished = sorted(name for name, status in discover.items() if status == "FINISHED")
    assert f"discover {len(finished)}/2 finished, {len(killed)} cut short ({', '.join(killed)})" in line, line
    assert not [r for r in children if r.data.tags[names.TAG_KIND] == "edit"]

    # The same command resumes it: the cut-short trials continue from their checkpoints (a trial's log line, which
    # reaches the driver's output), and the sweep ends with every circuit, each run once.
    rerun = run_sweep(work, *SLOW)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert "from checkpoint" in rerun.stdout + rerun.stderr, rerun.stderr[-3000:]
    assert not list((work / "ray").glob("*-retry*"))
    assert "sweep tiny: 4 circuits from 2 discoveries, 26 edit trials, 0 failed" in rerun.stdout, rerun.stdout[-3000:]
    _, parents, children = child_runs(work)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert all(r.info.status == "FINISHED" for r in children)
    run_names = [run_name(r) for r in children]
    assert len(run_names) == len(set(run_names))
    discover_runs = [r for r in children if r.data.tags[names.TAG_KIND] == "discover"]
    reached = sum(len([t for t in r.data.tags[names.TAG_REACHED].split(",") if t]) for r in discover_runs)
    assert len(discover_runs) == 2 and reached == 4  # both targets of both datasets
    assert len(children) - len(discover_runs) == reached * 3 * 2 + 2  # circuit x 3 variants x 2 shards, full x 2


def test_a_second_ctrl_c_exits_at_once(tmp_path):
    work, log = tmp_path / "work", tmp_path / "twice.log"
    driver = start(work, log)
    wait_for_discovery(driver, work, log)
    code, took = stop(driver, signal.SIGINT, signal.SIGINT, gap=0.3)
    text = log.read_text()
    assert code == 128 + signal.SIGINT, text[-3000:]
    assert took < 10, (took, text[-3000:])
    python = os.path.relpath(SWEEP[0]) if not os.path.relpath(SWEEP[0]).startswith("..") else "python"
    assert f"sweep tiny: stopped at once, without waiting for its trials; resume with: {python} " in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
