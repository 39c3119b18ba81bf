"""Draw discovery curves from bench_faithful JSON files: held-out faithfulness and density against step.

    python benchmarks/curves.py RESULT.json [RESULT.json ...] --out curves.png [--labels a,b] [--table]

One line per (file, dataset): faithfulness on the reporting rows (solid, with its 95% interval shaded) in the top
panel, the deterministic mask's density (log scale) in the bottom one; dotted grey lines mark 0.9 and the targets.
`--table` also prints, per reached target, the snapshot the run chose (or, for a run cut short in a hold, would
have chosen so far) from its history, by the rule of `discover`: the first evaluation at or below the target with the
highest selection score within `hold_steps` of reaching it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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
    parser.add_argument("results", nargs="+", help="bench_faithful JSON files")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--labels", default=None, help="comma-separated label per file (default: file stem)")
    parser.add_argument("--table", action="store_true", help="print the chosen snapshots as a markdown table")
    args = parser.parse_args()
    labels = args.labels.split(",") if args.labels else [Path(p).stem for p in args.results]
    fig, (faith, dens) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, height_ratios=(3, 2))
    targets: set[float] = set()
    for path, label in zip(args.results, labels, strict=True):
        report = json.loads(Path(path).read_text())
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
        print(
            table(
                [(label, json.loads(Path(path).read_text())) for path, label in zip(args.results, labels, strict=True)]
            )
        )


if __name__ == "__main__":
    main()
