"""Log a report as the `analysis` child run of its sweep (record/names.py): settings, headline metrics, files; and
give the sweep's own run the headline metrics, the self-contained report.html and a description of the findings."""

from __future__ import annotations

from dataclasses import asdict

from analysis.findings import findings, metrics
from analysis.pipeline import Options
from analysis.report import Report
from record import names, store
from record.names import RunKind
from record.reader import Sweep


def log_analysis(sweep: Sweep, report: Report, options: Options) -> str:
    """Create a new `analysis` child run of the sweep holding the report; returns its run id."""
    client = store.client_for(sweep.tracking_uri)
    tags = {
        names.PARENT_TAG: sweep.run_id,
        names.TAG_KIND: RunKind.ANALYSIS,
        names.TAG_SWEEP: sweep.name,
        names.TAG_TRIAL: RunKind.ANALYSIS,
    }
    if sweep.model:
        tags[names.TAG_MODEL] = sweep.model
    run_id = store.create_run(client, sweep.experiment_id, RunKind.ANALYSIS, tags)
    with store.outcome(client, run_id):
        store.log_metrics(client, run_id, [metrics(report.headline)])
        store.log_params(client, run_id, asdict(options))
        store.log_file(client, run_id, report.markdown)
        store.log_file(client, run_id, report.html)
        for folder in {p.parent for p in (*report.plots, *report.tables)}:
            store.log_folder(client, run_id, folder, folder.name)
    log_to_sweep(client, sweep, report, options, run_id)
    return run_id


def sweep_note(sweep: Sweep, report: Report, options: Options, analysis_run_id: str) -> str:
    """The sweep run's description: each claim's verdict and result, and where the full report is."""
    h = report.headline
    lines = [
        f"| {i} | {f.claim} | **{f.verdict}** | {f.result} |"
        for i, f in enumerate(findings(h, options.faithfulness_threshold), 1)
    ]
    analysis = names.run_link(sweep.experiment_id, analysis_run_id, "analysis run")
    return (
        f"## Headline findings of sweep {sweep.name}\n\n"
        f"Judged from {h.circuits - h.excluded} faithful circuits of {h.circuits} (faithfulness at least "
        f"{options.faithfulness_threshold:g}); size window (targets): **{h.window.describe()}**.\n\n"
        "| # | paper's claim | verdict | this sweep |\n|---|---|---|---|\n" + "\n".join(lines) + "\n\n"
        f"The full report is `{report.html.name}` in this run's artifacts and in the {analysis} (with its "
        "tables and plots)."
    )


def log_to_sweep(
    client: store.MlflowClient, sweep: Sweep, report: Report, options: Options, analysis_run_id: str
) -> None:
    """Give the sweep's run the headline metrics, the self-contained report and the findings as its description
    (a later analysis replaces them)."""
    store.log_metrics(client, sweep.run_id, [metrics(report.headline)])
    store.log_file(client, sweep.run_id, report.html)
    store.set_tags(client, sweep.run_id, {names.NOTE_TAG: sweep_note(sweep, report, options, analysis_run_id)})
