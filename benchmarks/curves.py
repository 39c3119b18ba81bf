"""Draw discovery curves from bench_faithful JSON files: held-out faithfulness and density against step.

    python benchmarks/curves.py RESULT.json [RESULT.json ...] --out curves.png [--labels a,b]

One line per (file, dataset): faithfulness on the reporting rows (solid, with its 95% interval shaded) in the top
panel, the deterministic mask's density (log scale) in the bottom one; dotted grey lines mark 0.9 and the targets.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="bench_faithful JSON files")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--labels", default=None, help="comma-separated label per file (default: file stem)")
    args = parser.parse_args()
    labels = args.labels.split(",") if args.labels else [Path(p).stem for p in args.results]
    fig, (faith, dens) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, height_ratios=(3, 2))
    targets: set[float] = set()
    for path, label in zip(args.results, labels, strict=True):
        report = json.loads(Path(path).read_text())
        targets |= set(report["discovery"]["densities"])
        for dataset, rows in report["history"].items():
            steps = [r["step"] for r in rows]
            name = f"{label}: {dataset}" if len(report["history"]) > 1 else label
            line, = faith.plot(steps, [r["faithfulness"] for r in rows], marker=".", label=name)
            faith.fill_between(steps, [r["faithfulness_low"] for r in rows], [r["faithfulness_high"] for r in rows],
                               color=line.get_color(), alpha=0.15)
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


if __name__ == "__main__":
    main()
