"""Does a preset's discovery generalise? Its discovery settings on every dataset of ../shared/data, one table.

    python benchmarks/bench_faithful.py [--preset smollm2-cpu] [--datasets csv:A.csv,csv:B.csv] [--min-eval-rows N]
                                        [--discovery.densities 0.7,0.5] [--discovery.SETTING VALUE ...] [--out DIR]

For each dataset: the preset's model, row limit, held-out share and discovery config (mask seed derived as in a
sweep, seed 0), then per target density the snapshot's actual density, held-out faithfulness with its 95% interval,
circuit, complement and full-model accuracy, the snapshot's step, how many evaluations it was chosen among (and,
with --discovery.select_rows, its faithfulness on the rows that chose it) and the seconds the whole discovery
took. Writes `faithful_<preset>_<date>.json` and `.md` (the table the README quotes) after every dataset, so a cut
run keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

from circuitlib import data
from circuitlib.discovery import discover
from circuitlib.jsonio import write_json
from circuitlib.models import load_model
from sweeps.config import add_discovery_arguments, apply_discovery_overrides, load_preset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"


def shared_datasets() -> list[str]:
    return [f"csv:{p}" for p in sorted(SHARED.glob("*.csv"))]


def table(report: dict) -> str:
    """The markdown table of the measured snapshots; `steps` is how many mask steps the whole discovery took."""
    lines = [
        "| dataset | target | density | faithfulness (95% CI) | circuit acc. | complement acc. | full acc. "
        "| eval rows | snapshot step | chosen among | on its own rows | steps | seconds |",
        "|" + " --- |" * 13,
    ]
    for r in report["rows"]:
        steps = report["history"][r["dataset"]][-1]["step"]
        apart = f"{r['selection_faithfulness']:.3f} ({r['selection_rows']} rows)" if "selection_rows" in r else "—"
        lines.append(
            f"| {r['dataset']} | {r['target']:g} | {r['density']:.3f} | {r['faithfulness']:.3f} "
            f"({r['faithfulness_low']:.2f}–{r['faithfulness_high']:.2f}) | {r['circuit_accuracy']:.3f} "
            f"| {r['complement_accuracy']:.3f} | {r['full_accuracy']:.3f} | {r['eval_rows']} | {r['step']} "
            f"| {r['selected_among']} | {apart} | {steps} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smollm2-cpu")
    parser.add_argument("--datasets", default=None, help="comma-separated specs (default: every CSV in shared/data)")
    parser.add_argument("--min-eval-rows", type=int, default=None, help="held-out rows (default: the preset's)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--name", default=None, help="file name stem (default: faithful_<preset>_<date>)")
    add_discovery_arguments(parser)  # --discovery.densities 0.7,0.5, ... as in a sweep
    args = parser.parse_args()
    preset = apply_discovery_overrides(load_preset(args.preset), args)
    if args.min_eval_rows is not None:
        preset.split = dataclasses.replace(preset.split, min_eval_rows=args.min_eval_rows)
    specs = args.datasets.split(",") if args.datasets else shared_datasets()
    stamp = datetime.date.today().isoformat()
    stem = args.name or f"faithful_{args.preset}_{stamp}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "bench_faithful",
        "preset": args.preset,
        "model": preset.model,
        "date": stamp,
        "command": " ".join(["python", "benchmarks/bench_faithful.py", *sys.argv[1:]]),
        "split": dataclasses.asdict(preset.split),
        "discovery": dataclasses.asdict(preset.discovery.resolved()),  # what ran: the method filled in
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "rows": [],
    }
    lm = load_model(preset.model)
    for spec in specs:
        name = data.dataset_name(spec)
        split, config = preset.trial_inputs(spec, 0)  # the rows and config of a sweep's seed-0 trial
        train, held_out = split.load()
        start = time.perf_counter()
        curve = report.setdefault("history", {}).setdefault(name, [])

        def keep(row: dict[str, float], curve: list[dict[str, float]] = curve, start: float = start) -> None:
            curve.append({**row, "seconds": time.perf_counter() - start})
            write_json(out / f"{stem}.json", report)  # every evaluation, so a cut run keeps its curve

        result = discover(lm, train, held_out, config, on_eval=keep, progress=False)
        seconds = time.perf_counter() - start
        for circuit in result.circuits:
            p = circuit.provenance
            report["rows"].append(
                {
                    "dataset": name,
                    "target": circuit.target_density,
                    "density": circuit.density,
                    "step": p["step"],
                    "seconds": seconds,
                    "train_rows": len(train),
                    **{
                        k: p[k]
                        for k in (
                            "faithfulness",
                            "faithfulness_low",
                            "faithfulness_high",
                            "kl",
                            "circuit_accuracy",
                            "complement_accuracy",
                            "full_accuracy",
                            "eval_rows",
                            "selected_among",
                        )
                    },
                    **{k: p[k] for k in ("selection_faithfulness", "selection_rows") if k in p},
                }
            )
        report.setdefault("unreached", {})[name] = result.unreached
        write_json(out / f"{stem}.json", report)  # NaN (no loss at step 0) as null
        (out / f"{stem}.md").write_text(table(report) + "\n")
        print(table(report).splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
