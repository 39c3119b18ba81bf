"""Draw discovery curves from bench_faithful JSON files: held-out faithfulness and density against step.

    python benchmarks/curves.py RESULT [RESULT ...] --out curves.png [--labels a,b] [--table]

A RESULT is a bench_faithful JSON file or the `--out` folder of `circuitlib discover` (its history.json, or, for a
run still going or cut short, the history its last checkpoint holds).

One line per (file, dataset): faithfulness on the reporting rows (solid, with its 95% interval shaded) in the top
panel, the deterministic mask's density (log scale) in the bottom one; dotted grey lines mark 0.9 and the targets.
`--table` also prints, per reached target, the snapshot the run chose (or, for a run cut short in a hold, would
have chosen so far) from its history, by the rule of `discover`: the first evaluation at or below the target with the
highest selection score within `hold_steps` of reaching it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import matplotlib
import torch

from circuitlib import options
from circuitlib.data import dataset_name
from circuitlib.discovery import DiscoveryConfig

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load_report(path: Path) -> dict:
    """A bench_faithful report, or one in its shape from a `circuitlib discover` folder: its settings and history."""
    if not path.is_dir():
        return json.loads(path.read_text())
    if (path / "history.json").is_file():
        run = json.loads((path / "history.json").read_text())
        history = run["history"]
    elif not (path / "checkpoint" / "state.pt").is_file():
        raise SystemExit(f"{path}: no history.json and no checkpoint yet (one is written every checkpoint_every steps)")
    else:  # still running or cut: the settings frozen beside the checkpoint and the history it holds
        run = json.loads((path / "checkpoint" / "params.json").read_text())
        history = torch.load(path / "checkpoint" / "state.pt", weights_only=True, map_location="cpu")["history"]
    config = options.build(DiscoveryConfig, run["config"], lambda key: f"{path} config.{key}").resolved()
    return {"discovery": asdict(config), "history": {dataset_name(run["split"]["dataset"]): history}}


def snapshots(report: dict, rows: list[dict]) -> list[tuple[float, dict]]:
    """(target, chosen row) for every target the history reached, as discover's holds choose them."""
    hold, chosen = report["discovery"]["hold_steps"], []
    for target in report["discovery"]["densities"]:
        reached = next((r["step"] for r in rows if r["density"] <= target), None)
        if reached is None:
            break
        looks = [r for r in rows if r["density"] <= target and reached <= r["step"] <= reached + hold]
        best = max(looks, key=lambda r: r.get("selection_faithfulness", r["faithfulness"]))  # max keeps the first
        chosen.append((target, {**best, "looks": len(looks)}))
    return chosen


def table(reports: list[tuple[str, dict]]) -> str:
    """Markdown: one row per reached target of each run."""
    lines = [
        "| run | dataset | target | density | faithfulness (95% CI) | chosen on | complement acc. | full acc. "
        "| reporting rows | step | seconds |",
        "|" + " --- |" * 11,
    ]
    for label, report in reports:
        for dataset, rows in report["history"].items():
            for target, r in snapshots(report, rows):
                chose = f"{r['selection_faithfulness']:.3f} (best of {r['looks']})" if "selection_rows" in r else "—"
                lines.append(
                    f"| {label} | {dataset} | {target:g} | {r['density']:.3f} | {r['faithfulness']:.3f} "
                    f"({r['faithfulness_low']:.2f}–{r['faithfulness_high']:.2f}) | {chose} "
                    f"| {r['complement_accuracy']:.2f} | {r['full_accuracy']:.3f} | {r['eval_rows']} "
                    f"| {r['step']} | {r.get('seconds', float('nan')):.0f} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="bench_faithful JSON files or `circuitlib discover` folders")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--labels", default=None, help="comma-separated label per file (default: file stem)")
    parser.add_argument("--table", action="store_true", help="print the chosen snapshots as a markdown table")
    args = parser.parse_args()
    labels = args.labels.split(",") if args.labels else [Path(p).stem for p in args.results]
    fig, (faith, dens) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, height_ratios=(3, 2))
    targets: set[float] = set()
    reports = [load_report(Path(p)) for p in args.results]
    for report, label in zip(reports, labels, strict=True):
        targets |= set(report["discovery"]["densities"])
        for dataset, rows in report["history"].items():
            steps = [r["step"] for r in rows]
            name = f"{label}: {dataset}"
            (line,) = faith.plot(steps, [r["faithfulness"] for r in rows], marker=".", label=name)
            faith.fill_between(
                steps,
                [r["faithfulness_low"] for r in rows],
                [r["faithfulness_high"] for r in rows],
                color=line.get_color(),
                alpha=0.15,
            )
            dens.plot(steps, [r["density"] for r in rows], color=line.get_color())
    faith.axhline(0.9, color="grey", linestyle=":")
    for t in targets:
        dens.axhline(t, color="grey", linestyle=":", linewidth=0.7)
    faith.set_ylabel("held-out faithfulness")
    faith.legend(fontsize=8)
    dens.set_yscale("log")
    dens.set_ylabel("density (kept / masked)")
    dens.set_xlabel("mask step")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    if args.table:
        print(table(list(zip(labels, reports, strict=True))))


if __name__ == "__main__":
    main()
