"""Log a report as the `analysis` child run of its sweep (sweeps/layout.py): settings, headline metrics, files; and
give the sweep's own run the headline metrics, the self-contained report.html and a description of the findings."""

from __future__ import annotations

import time
from dataclasses import asdict

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis.findings import findings, metrics
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
    log_to_sweep(client, sweep, report, options, run_id)
    return run_id


def sweep_note(sweep: Sweep, report: Report, options: Options, analysis_run_id: str) -> str:
    """The sweep run's description: each claim's verdict and result, and where the full report is."""
    h = report.headline
    lines = [
        f"| {i} | {f.claim} | **{f.verdict}** | {f.result} |"
        for i, f in enumerate(findings(h, options.faithfulness_threshold), 1)
    ]
    analysis = layout.run_link(sweep.experiment_id, analysis_run_id, "analysis run")
    return (
        f"## Headline findings of sweep {sweep.name}\n\n"
        f"Judged from {h.circuits - h.excluded} faithful circuits of {h.circuits} (faithfulness at least "
        f"{options.faithfulness_threshold:g}); size window (targets): **{h.window.describe()}**.\n\n"
        "| # | paper's claim | verdict | this sweep |\n|---|---|---|---|\n" + "\n".join(lines) + "\n\n"
        f"The full report is `{report.html.name}` in this run's artifacts and in the {analysis} (with its "
        "tables and plots)."
    )


def log_to_sweep(client: MlflowClient, sweep: Sweep, report: Report, options: Options, analysis_run_id: str) -> None:
    """Give the sweep's run the headline metrics, the self-contained report and the findings as its description
    (a later analysis replaces them)."""
    now = int(time.time() * 1000)
    client.log_batch(sweep.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics(report.headline).items()])
    client.log_artifact(sweep.run_id, str(report.html))
    client.set_tag(sweep.run_id, layout.NOTE_TAG, sweep_note(sweep, report, options, analysis_run_id))
