"""Fixtures of the sweep's integration tests: a real MLflow tracking server."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from servers import mlflow_process


@pytest.fixture
def mlflow_server(tmp_path) -> Iterator[str]:
    """An `mlflow server` on a SQLite store and a local artifact folder under tmp_path; its base URL."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    store = ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    with mlflow_process(
        "server", [*store, "--artifacts-destination", str(tmp_path / "server-art")], env, tmp_path / "server.log"
    ) as url:
        yield url
