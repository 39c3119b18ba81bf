"""How hard is a dataset to be faithful on? Its head's margins, in the feature spreads that `loss: features` counts.

    python benchmarks/head_margins.py [--preset smollm2-window] [--datasets csv:A.csv,csv:B.csv]
        [--discovery.SETTING VALUE ...] --out FILE.json

For each dataset (rows and mask seed as a sweep's seed 0 draws them, the head as discovery fits it): each held-out
row's margin, |logit gap| / ||(w1 - w0) * spread||, is how far the row's features may move along the head's
direction, in spreads of the training features, before the full model's decision flips. A circuit whose features
were off by independent noise of s spreads in every dimension (a held-out feature MSE of s², the quantity
`loss: features` trains and `generalization_gap.py` measures) would keep faithfulness mean(Φ(margin / s)). The
script writes the margins' quantiles, that curve, and the largest s (and MSE) that keeps 0.9, so sets can be
compared before any discovery runs. Real circuits' errors are not independent noise, so the curve ranks sets
rather than predicting a circuit's figure (`head_error` measures how far a circuit's error leans toward the head).
Writes FILE.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from circuitlib import data
from circuitlib.discovery import Task, prepare_task
from circuitlib.jsonio import write_json
from circuitlib.models import load_model
from sweeps.config import add_discovery_arguments, apply_discovery_overrides, load_preset

NOISE = (0.1, 0.2, 0.3, 0.4, 0.5)  # feature error, in spreads, at which the curve is written
QUANTILES = (0.05, 0.1, 0.25, 0.5)


def decision_direction(task: Task) -> torch.Tensor:
    """The head's logit gap per spread of each training feature: [d_model]."""
    weight = task.head.weight.detach()
    return (weight[1] - weight[0]) * task.feature_scale


def margins(task: Task) -> torch.Tensor:
    """Each held-out row's distance to the head's boundary in spreads of the training features: [n_eval]."""
    gap = task.eval_full_logits[:, 1] - task.eval_full_logits[:, 0]
    return gap.abs() / decision_direction(task).norm()


def head_error(task: Task, features: torch.Tensor, full: torch.Tensor) -> float:
    """The root-mean-square of a circuit's feature error [n, d_model] along the head's direction, in the spreads
    `margins` counts. Independent noise of s spreads per dimension gives s, as it gives a feature MSE of s²; an error
    larger along the head than its MSE says leans toward the decision."""
    direction = decision_direction(task)
    along = ((features - full) / task.feature_scale) @ (direction / direction.norm())
    return along.square().mean().sqrt().item()


def faithfulness_under_noise(margin: torch.Tensor, noise: float) -> float:
    """The share of rows whose decision survives independent Gaussian feature error of `noise` spreads per dimension:
    along the head's direction that error is Gaussian with `noise` spreads, so a row keeps its side with Φ(m / s)."""
    return torch.special.ndtr(margin / noise).mean().item()


def noise_for(margin: torch.Tensor, level: float = 0.9) -> float:
    """The largest feature error (in spreads) under which `faithfulness_under_noise` stays at `level` (bisection:
    the curve falls as the noise grows)."""
    low, high = 1e-6, 100.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if faithfulness_under_noise(margin, middle) >= level else (low, middle)
    return low


def measure(task: Task, name: str) -> dict:
    """The row of the table for one dataset."""
    margin = margins(task)
    ordered = margin.sort().values
    noise = noise_for(margin)
    return {
        "dataset": name,
        "eval_rows": len(margin),
        "full_accuracy": (task.eval_full_preds == task.eval_labels).float().mean().item(),
        "margin_quantiles": {str(q): ordered[int(q * (len(ordered) - 1))].item() for q in QUANTILES},
        "faithfulness_under_noise": {str(s): faithfulness_under_noise(margin, s) for s in NOISE},
        "noise_for_0.9": noise,
        "feature_mse_for_0.9": noise**2,
    }


def table(rows: list[dict]) -> str:
    """The markdown table the README quotes."""
    head = ["dataset", "held-out rows", "full acc.", *(f"margin q{q}" for q in QUANTILES)]
    head += [*(f"faithful at s={s}" for s in NOISE), "s for 0.9", "MSE for 0.9"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r["dataset"], str(r["eval_rows"]), f"{r['full_accuracy']:.3f}"]
        cells += [f"{v:.2f}" for v in r["margin_quantiles"].values()]
        cells += [f"{v:.3f}" for v in r["faithfulness_under_noise"].values()]
        cells += [f"{r['noise_for_0.9']:.2f}", f"{r['feature_mse_for_0.9']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smollm2-window")
    parser.add_argument("--datasets", default=None, help="comma-separated dataset specs (default: the preset's)")
    parser.add_argument("--out", required=True, help="JSON file of the measurements")
    add_discovery_arguments(parser)
    args = parser.parse_args()
    preset = apply_discovery_overrides(load_preset(args.preset), args)
    specs = args.datasets.split(",") if args.datasets else list(preset.datasets)
    lm = load_model(preset.model)
    report = {
        "command": " ".join(["python", "benchmarks/head_margins.py", *sys.argv[1:]]),
        "preset": args.preset,
        "rows": [],
    }
    for spec in specs:
        name = data.dataset_name(spec)
        split, config = preset.trial_inputs(spec, 0)  # the rows and config of a sweep's seed-0 trial
        train, held_out = split.load()
        report["rows"].append(measure(prepare_task(lm, train, held_out, config.resolved()), name))
        write_json(Path(args.out), report)
    print(table(report["rows"]))


if __name__ == "__main__":
    main()
