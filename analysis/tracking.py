"""Log a report as the `analysis` child run of its sweep (sweeps/layout.py): settings, headline metrics, files."""

from __future__ import annotations

import time
from dataclasses import asdict

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis.findings import metrics
from analysis.pipeline import Options
from analysis.report import Report
from analysis.sweep_data import Sweep
from sweeps import layout

ANALYSIS = "analysis"  # run name, kind and trial key of the analysis run


def log_analysis(sweep: Sweep, report: Report, options: Options) -> str:
    """Create a new `analysis` child run of the sweep holding the report; returns its run id."""
    client = MlflowClient(sweep.tracking_uri)
    tags = {
        layout.PARENT_TAG: sweep.run_id,
        layout.TAG_KIND: ANALYSIS,
        layout.TAG_SWEEP: sweep.name,
        layout.TAG_TRIAL: ANALYSIS,
    }
    if sweep.model:
        tags[layout.TAG_MODEL] = sweep.model
    run_id = client.create_run(sweep.experiment_id, run_name=ANALYSIS, tags=tags).info.run_id
    try:
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in metrics(report.headline).items()],
            params=[Param(k, str(v)) for k, v in asdict(options).items()],
        )
        client.log_artifact(run_id, str(report.markdown))
        client.log_artifact(run_id, str(report.html))
        for folder in {p.parent for p in (*report.plots, *report.tables)}:
            client.log_artifacts(run_id, str(folder), folder.name)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id
