"""The report on a real sweep: the `tiny` preset run through Ray Tune into a temporary MLflow store, then analysed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from analysis.report import SECTIONS
from sweeps import layout

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_report_on_the_tiny_sweep(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env |= {"HF_HUB_OFFLINE": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    work, out = tmp_path / "work", tmp_path / "report"
    sweep = subprocess.run(
        [sys.executable, str(ROOT / "sweeps" / "size_sweep.py"), "--preset", "tiny", "--work-dir", str(work)],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    uri = f"sqlite:///{work / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "analysis", "report", "--experiment", "tiny", "--tracking-uri", uri,
         "--out", str(out), "--cache", str(tmp_path / "cache"), "--bootstrap", "500"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    text = (out / "report.md").read_text()
    for section in SECTIONS:
        assert f"## {section}" in text
    for plot in ("size_window", "overlap", "composition_by_layer", "discovery"):
        path = out / "plots" / f"{plot}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plots/{plot}.png" in text
    assert "determiner_noun" in text and "hierarchy" in text
    assert "no edits of the full model" not in text

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], f"tags.`{layout.TAG_KIND}` = 'analysis'")
    parent = client.search_runs([exp.experiment_id], f"tags.`{layout.TAG_KIND}` = 'sweep'")[0]
    assert len(runs) == 1 and runs[0].data.tags[layout.PARENT_TAG] == parent.info.run_id
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"report.md", "report.html", "plots", "tables"} <= artifacts
