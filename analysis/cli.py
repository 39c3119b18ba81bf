"""The `python -m analysis` command: `report` reads a sweep from MLflow, writes its report and logs it back."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from circuitlib import settings
from circuitlib.errors import InputError
from circuitlib.options import build

if TYPE_CHECKING:
    from analysis.pipeline import Options


def _default_cache() -> Path:
    """Where downloaded artifacts are kept between reports: $XDG_CACHE_HOME or ~/.cache, then circuitlib-analysis."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "circuitlib-analysis"


# The command line's name of each analysis option (analysis.pipeline.Options declares them).
FLAGS = {
    "faithfulness_threshold": "--faithfulness",
    "n_boot": "--bootstrap",
    "confidence": "--confidence",
    "seed": "--seed",
}


def cmd_report(args: argparse.Namespace) -> None:
    from analysis.pipeline import Options

    cache = Path(args.cache) if args.cache else _default_cache()
    given = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
    options = build(Options, given, FLAGS.__getitem__)  # a bad value: one line naming its flag
    for line in report_sweep(args.experiment, args.sweep, args.tracking_uri, args.out, cache, options, not args.no_log):
        print(line)


def report_sweep(
    experiment: str,
    sweep_run_id: str | None,
    tracking_uri: str | None,
    out: str | Path | None,
    cache: Path,
    options: Options | None = None,
    log: bool = True,
) -> list[str]:
    """Analyse a sweep, write its report to `out` (default reports/<sweep name>) and, with `log`, log it as the
    sweep's `analysis` run; returns what to tell the user: where the report is and each claim's verdict."""
    from record.reader import read_sweep

    sweep = read_sweep(experiment, sweep_run_id, cache, tracking_uri)

    from analysis.findings import findings  # torch and matplotlib load only once the sweep is found
    from analysis.pipeline import Options, analyse
    from analysis.publish import log_analysis
    from analysis.report import write_report

    options = options or Options()
    folder = Path(out) if out else Path("reports") / re.sub(r"[^\w.-]+", "_", sweep.name)
    analysis = analyse(sweep, options)
    report = write_report(analysis, folder)
    lines = [
        f"report: {report.markdown} and {report.html.name}",
        f"circuits: {len(analysis.used)} faithful and used, {len(analysis.excluded)} excluded "
        f"(faithfulness below {options.faithfulness_threshold:g} or unknown)",
        f"size window: {analysis.window.describe()}; missing pieces: {len(analysis.notes)}",
    ]
    lines += [
        f"  claim {i}, {f.verdict}: {f.result}"
        for i, f in enumerate(findings(report.headline, options.faithfulness_threshold), 1)
    ]
    if log:
        lines.append(f"analysis run: {log_analysis(sweep, report, options)} (child of sweep run {sweep.run_id})")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("report", help="overlap, size window and composition of a sweep, with plots and a report")
    r.add_argument("--experiment", required=True, help="MLflow experiment name")
    r.add_argument("--sweep", default=None, help="the sweep's parent run id; default: the experiment's latest sweep")
    r.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI; default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db",
    )
    r.add_argument("--out", default=None, help="report folder; default: reports/<sweep name>")
    r.add_argument("--cache", default=None, help="artifact download cache; default: ~/.cache/circuitlib-analysis")
    from analysis.pipeline import Options

    for f in dataclasses.fields(Options):
        r.add_argument(FLAGS[f.name], dest=f.name, metavar="X", default=None, help=f"{settings.doc(f)} ({f.default})")
    r.add_argument("--no-log", action="store_true", help="write the report without logging an analysis run")
    r.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar per downloaded file
    from record.store import StoreError  # MLflow loads with the command that needs it

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (InputError, StoreError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"analysis: error: {message}", file=sys.stderr)
        return 2
    return 0


def report_command(argv: list[str]) -> int:
    """`circuitlib report ARGS`: the `report` command of this command line (a `circuitlib.commands` entry point)."""
    return main(["report", *argv])
