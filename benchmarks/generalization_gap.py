"""Is a circuit unfaithful because it fits its training rows badly, or because what it fits does not carry over?

    python benchmarks/generalization_gap.py --dataset csv:../shared/data/blimp_dna1.csv [--preset smollm2-window]
        [--train-rows 400] [--discovery.densities 0.7,0.5] [--discovery.SETTING VALUE ...] --out FILE.json

Runs a preset's discovery on one dataset (rows and mask seed as a sweep's seed 0 draws them) and, at each snapshot,
measures the circuit against the full model on the first `--train-rows` training rows and on every held-out row,
through one head: agreement of the head's decisions and the feature distance that `loss: features` trains
(mean squared gap over each dimension's spread), and that gap along the head's direction (`head_margins.head_error`).
Writes FILE.json after every snapshot.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from circuitlib.circuits import Circuit
from circuitlib.classifier import cached_features, tokenize
from circuitlib.discovery import discover, prepare_task
from circuitlib.jsonio import write_json
from circuitlib.masks import apply_masks
from circuitlib.models import load_model
from sweeps.config import add_discovery_arguments, apply_discovery_overrides, load_preset

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or loaded by file, as the tests do
from head_margins import faithfulness_under_noise, head_error, margins  # noqa: E402  (a sibling script)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smollm2-window")
    parser.add_argument("--dataset", required=True, help="a dataset spec, e.g. csv:PATH")
    parser.add_argument("--train-rows", type=int, default=400, help="training rows measured (the first ones)")
    parser.add_argument("--out", required=True, help="JSON file of the measurements")
    add_discovery_arguments(parser)
    args = parser.parse_args()
    preset = apply_discovery_overrides(load_preset(args.preset), args)
    split, config = preset.trial_inputs(args.dataset, 0)  # the rows and config of a sweep's seed-0 trial
    train, held_out = split.load()
    lm = load_model(preset.model)
    task = prepare_task(lm, train, held_out, config)
    rows = {"train": tokenize(lm.tokenizer, train.texts[: args.train_rows], config.max_length), "held_out": task.eval}
    full = {name: cached_features(lm, tokens, config.feature_batch_size) for name, tokens in rows.items()}
    report = {
        "command": " ".join(["python", "benchmarks/generalization_gap.py", *sys.argv[1:]]),
        "dataset": args.dataset,
        "preset": args.preset,
        "discovery": dataclasses.asdict(config.resolved()),
        "snapshots": [],
    }

    @torch.no_grad()
    def measure(circuit: Circuit) -> None:
        weights = apply_masks(lm.model, circuit.to_masks())
        row: dict[str, float | int | None] = {
            "target": circuit.target_density,
            "density": circuit.density,
            "step": circuit.provenance["step"],
            "reported_faithfulness": circuit.provenance["faithfulness"],
        }
        errors: dict[str, float] = {}
        for name, tokens in rows.items():
            masked = cached_features(lm, tokens, config.feature_batch_size, weights)
            agree = task.head(masked).argmax(dim=1) == task.head(full[name]).argmax(dim=1)
            row[f"{name}_agreement"] = agree.float().mean().item()
            row[f"{name}_feature_mse"] = ((masked - full[name]) / task.feature_scale).square().mean().item()
            errors[name] = row[f"{name}_head_error"] = head_error(task, masked, full[name])
        # what independent noise of that size along the head would keep (head_margins): below the agreement where the
        # error spares the rows near the boundary, above it where the error flips them
        row["held_out_noise_agreement"] = faithfulness_under_noise(margins(task), errors["held_out"])
        report["snapshots"].append(row)
        write_json(Path(args.out), report)
        print(row, flush=True)

    discover(lm, train, held_out, config, on_snapshot=measure, progress=False)


if __name__ == "__main__":
    main()
