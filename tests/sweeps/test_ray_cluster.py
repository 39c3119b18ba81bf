"""The sweep as users run it on a cluster: `ray start` nodes, an `mlflow server`, and `ray job submit`.

Each test starts its own Ray head (and, for the multi-node case, a second node) and an MLflow
server on 127.0.0.1, and stops all of them at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient
from servers import BIN, free_ports, wait_for

from circuitlib import circuits
from record import names

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


TOKEN_DIR = Path(tempfile.mkdtemp(prefix="ray-token-"))
TOKEN = TOKEN_DIR / "auth_token"
TOKEN.write_text(secrets.token_hex(32))


def env() -> dict[str, str]:
    """The venv first on PATH (the job's `python`), and Ray's token authentication with a test-only token."""
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return base | {
        "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(TOKEN),
    }


class RayCluster:
    """Ray nodes started with `ray start` in a private temp dir; `stop` ends them all."""

    def __init__(self) -> None:
        # Short paths (Ray's socket paths have a length limit); one per node, as on separate machines,
        # so one node's cleanup of its runtime-env cache cannot delete another's.
        self.temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
        self.node_temps: list[str] = []
        self.gcs_port, self.dashboard_port, *self.spare = free_ports(10)

    def ray(self, *args: str) -> None:
        subprocess.run([str(BIN / "ray"), *args], check=True, env=env(), capture_output=True, timeout=180)

    def agent_ports(self) -> list[str]:
        """Free ports for a node's agents: their fixed defaults clash when two nodes share a machine."""
        ports = [str(self.spare.pop()) for _ in range(4)]
        flags = [
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
            "--metrics-export-port",
        ]
        return [x for pair in zip(flags, ports, strict=True) for x in pair]

    def wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        """Block until `count` nodes are alive, so trials can spread over all of them."""
        probe = (
            f"import ray; ray.init(address='127.0.0.1:{self.gcs_port}', log_to_driver=False); "
            "print(sum(n['Alive'] for n in ray.nodes()))"
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env(), timeout=120)
            if out.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            time.sleep(2)
        raise TimeoutError(f"{count} Ray nodes were not alive within {timeout}s")

    def start_head(self, cpus: int, gpus: int) -> None:
        self.ray(
            "start",
            "--head",
            *self.agent_ports(),
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(self.gcs_port),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(self.dashboard_port),
            "--num-cpus",
            str(cpus),
            "--num-gpus",
            str(gpus),
            "--object-store-memory",
            str(200 * 2**20),
            "--temp-dir",
            self.temp,
            "--disable-usage-stats",
        )
        wait_for(f"{self.dashboard}/api/version", timeout=120)

    def add_node(self, cpus: int, gpus: int) -> None:
        self.node_temps.append(tempfile.mkdtemp(prefix="rn", dir="/tmp"))
        self.ray(
            "start",
            "--address",
            f"127.0.0.1:{self.gcs_port}",
            *self.agent_ports(),
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            str(cpus),
            "--num-gpus",
            str(gpus),
            "--object-store-memory",
            str(200 * 2**20),
            "--temp-dir",
            self.node_temps[-1],
            "--disable-usage-stats",
        )

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def submit(self, tracking_uri: str, work_dir: Path, *args: str) -> subprocess.CompletedProcess:
        runtime_env = {
            "env_vars": {"MLFLOW_TRACKING_URI": tracking_uri, "HF_HUB_OFFLINE": "1"},
            "excludes": [".venv", ".git", "runs"],
        }
        command = [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            self.dashboard,
            "--working-dir",
            str(REPO),
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            "python",
            "sweeps/size_sweep.py",
            "--preset",
            "tiny",
            "--no-report",  # the checks below count the sweep's own runs
            "--work-dir",
            str(work_dir),
            *args,
        ]
        for _ in range(20):  # the dashboard answers before its job agent is up; Ray says to try again later
            proc = subprocess.run(command, capture_output=True, text=True, env=env(), timeout=900)
            if "No available agent to submit job" not in proc.stdout + proc.stderr:
                return proc
            time.sleep(3)
        return proc

    def stop(self) -> None:
        """Kill this cluster's processes only (`ray stop` would end every Ray cluster on the machine)."""
        dirs = (self.temp, *self.node_temps)
        ours = [
            p for p in psutil.process_iter(["cmdline"]) if any(d in " ".join(p.info["cmdline"] or []) for d in dirs)
        ]
        for proc in ours:
            proc.kill()
        psutil.wait_procs(ours, timeout=30)
        for path in dirs:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ray_cluster() -> Iterator[RayCluster]:
    cluster = RayCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def sweep_runs(tracking_uri: str, experiment: str = "tiny"):
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} missing on {tracking_uri}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(names.TAG_KIND) == "sweep"]
    children = [r for r in runs if names.PARENT_TAG in r.data.tags]
    return client, parents, children


def check_sweep_on_server(tracking_uri: str, tmp_path: Path):
    client, parents, children = sweep_runs(tracking_uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert children and all(r.data.tags[names.PARENT_TAG] == parents[0].info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in children)
    discover = [r for r in children if r.data.tags[names.TAG_KIND] == "discover"]
    assert len(discover) == 2
    for run in discover:
        arts = client.list_artifacts(run.info.run_id, names.CIRCUITS_DIR)
        assert arts, f"{run.info.run_name} logged no circuit"
        local = client.download_artifacts(run.info.run_id, arts[0].path, str(tmp_path / run.info.run_id))
        assert circuits.load(local).model_id == "tiny-gpt2"
    return children


def test_job_submission_to_a_ray_head_with_an_mlflow_server(tmp_path, ray_cluster, mlflow_server):
    ray_cluster.start_head(cpus=2, gpus=1)  # a logical GPU: trials ask for it, torch runs on the CPU
    proc = ray_cluster.submit(mlflow_server, tmp_path / "job")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "succeeded" in proc.stdout.lower()
    children = check_sweep_on_server(mlflow_server, tmp_path)
    assert len([r for r in children if r.data.tags[names.TAG_KIND] == "edit"]) > 0
    assert "'gpu': 1" in proc.stdout  # each trial asked Ray for the cluster's GPU


def test_trials_spread_over_two_nodes_and_reach_one_server(tmp_path, ray_cluster, mlflow_server):
    ray_cluster.start_head(cpus=1, gpus=0)
    ray_cluster.add_node(cpus=1, gpus=0)
    ray_cluster.wait_for_nodes(2)
    proc = ray_cluster.submit(mlflow_server, tmp_path / "job")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    children = check_sweep_on_server(mlflow_server, tmp_path)
    nodes = {r.data.tags[names.TAG_NODE] for r in children}
    assert len(nodes) == 2, f"trials ran on {nodes}"
