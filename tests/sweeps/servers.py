"""Real servers for the integration tests of the sweep: free ports, waiting for an address, an MLflow process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    """n distinct free ports (all held open while choosing, so none is handed out twice)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def wait_for(url: str, timeout: float = 60, process: subprocess.Popen | None = None) -> None:
    """Until `url` answers (any HTTP status: a 401 without a token is up); an error once `process` has exited."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{url}: its process exited with {process.returncode}") from None
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@contextmanager
def mlflow_process(
    command: str, options: list[str], env: Mapping[str, str], log: Path, timeout: float = 120
) -> Iterator[str]:
    """`mlflow server` or `mlflow ui` (`command`) on a free port of 127.0.0.1, its output in `log`; its base URL.
    Stopped by its process group (MLflow 3's server also runs a job runner that may not stop on SIGTERM)."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), command, "--host", "127.0.0.1", "--port", str(port), "--workers", "1", *options],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for(f"{base}/health", timeout=timeout, process=proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"mlflow {command} did not answer on {base}: {exc}\n{log.read_text()[-3000:]}") from None
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
