"""The GPU figures of issue 10 on the path a `paper` sweep runs: one mask step, one edit request, their peak memory.

Usage: python benchmarks/bench_gpu.py [--device cuda] [--model random:gpt2-xl] [--out gpu_check.json]
       python benchmarks/bench_gpu.py --device cpu --model tiny-gpt2 --requests 2 --repeats 2   (a smoke run)

The settings are the `paper` preset's own (sweeps/presets/paper.yaml): its DiscoveryConfig (precision, fused mask
kernels above 1e7 masked weights, compile_model, batch 128) on float32 weights loaded as a discovery trial loads
them, and its EditConfig (25 steps of lr 5e-4 clamped at 5e-4) with stop_loss 0, so every request takes all 25 steps.
`random:gpt2-xl` is gpt2-xl's architecture with random weights (benchmarks/bench_core.py; speed does not depend on
the weights' values).
- mask_step_s: the median of `repeats` calls of `discovery.mask_step`, the step `discover` runs, after warm-up steps
  (the first compiles the fused kernels), on batches of the built-in hierarchy rows (BLiMP-length texts);
- edit_request_s: the median over `requests` requests of one `edit_requests` call on one request (pre-edit scores,
  25 steps, post-edit scores, restoration), on the circuit variant of a random half of the weights, after one
  warm-up request;
- discovery_peak_gpu_gib, edit_peak_gpu_gib: the peak of allocated GPU memory in each phase (null on a CPU).
Writes one JSON object (`--out`) with these keys, `gpu`, `commit` and the settings measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuitlib import data
from circuitlib.circuits import Circuit
from circuitlib.discovery import FUSE_ABOVE, DiscoveryState, StepBuffers, mask_step, masked_hidden, prepare_task
from circuitlib.editing import edit_requests, variant_masks
from circuitlib.models import LoadedModel, load_model
from sweeps.config import SweepConfig, load_preset
from sweeps.ui import git_commit

GOALS = {"mask_step_s": 0.060, "edit_request_s": 1.0, "discovery_peak_gpu_gib": 48.0}  # issue 10, items 2 and 3
KEYS = ("gpu", "commit", "mask_step_s", "edit_request_s", "discovery_peak_gpu_gib", "edit_peak_gpu_gib", "settings")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def median_s(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> tuple[float, list[float]]:
    """The median wall seconds of `fn` over `repeats` calls after `warmup` calls, each ended by a device sync."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), [round(t, 4) for t in times]


def model_for(spec: str, device: torch.device) -> LoadedModel:
    """A discovery trial's model (float32 weights), or `random:NAME`'s architecture with random weights."""
    if spec.startswith("random:"):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_core import random_model

        return random_model(spec.removeprefix("random:"), device)
    return load_model(spec, device=device)


def bench_discovery(lm: LoadedModel, sweep: SweepConfig, args: argparse.Namespace) -> dict[str, Any]:
    """The paper preset's mask step on `lm`: its median seconds and the phase's peak GPU memory."""
    # The rows are also the held-out ones and nothing is reported from them, so none are set aside to choose snapshots.
    config = dataclasses.replace(sweep.discovery, head_epochs=args.head_epochs, select_rows=0)
    rows = data.load_classification("builtin:hierarchy", limit=args.rows, seed=0)
    reset_peak(lm.device)
    task = prepare_task(lm, rows, rows, config)
    state = DiscoveryState(lm, config, len(rows))
    buffers = StepBuffers.for_run(lm, state.layout, config)
    fused = config.fused if config.fused is not None else state.layout.total >= FUSE_ABOVE
    forward = masked_hidden(lm, state.layout, config.precision, config.compile_model, buffers.grad)
    width = task.train.max_width if config.compile_model else None
    median, times = median_s(
        lambda: mask_step(lm, task, state, config, buffers, fused, forward, width), lm.device, args.repeats, warmup=3
    )
    return {
        "mask_step_s": round(median, 4),
        "mask_step_times_s": times,
        "discovery_peak_gpu_gib": peak_gib(lm.device),
        "fused_kernels": fused,
        "masked_weights": state.layout.total,
        "rows": len(rows),
        "tokens_per_row_max": task.train.max_width,
    }


def bench_edits(lm: LoadedModel, sweep: SweepConfig, args: argparse.Namespace) -> dict[str, Any]:
    """One request at a time through `edit_requests` under the paper preset's edit settings."""
    config = dataclasses.replace(sweep.edit, stop_loss=0.0)
    pool = data.load_requests("builtin:hierarchy", limit=args.requests + 1)
    rng = np.random.default_rng(0)
    circuit = Circuit.from_masks(lm.params, {p.name: rng.random(p.shape) < 0.5 for p in lm.params}, lm.model_id)
    masks = variant_masks(circuit, "circuit")
    reset_peak(lm.device)
    times = []
    for i, request in enumerate(pool):
        start = time.perf_counter()
        edit_requests(lm, [request], "circuit", masks, config, pool=pool, progress=False)
        sync(lm.device)
        if i:  # the first request warms up
            times.append(time.perf_counter() - start)
    return {
        "edit_request_s": round(statistics.median(times), 4),
        "edit_request_times_s": [round(t, 4) for t in times],
        "edit_peak_gpu_gib": peak_gib(lm.device),
        "edit_steps": config.max_steps,
        "variant": "circuit",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="random:gpt2-xl")
    parser.add_argument("--rows", type=int, default=256, help="rows the mask steps draw their batches from")
    parser.add_argument("--head-epochs", type=int, default=20, help="the head is not what is timed")
    parser.add_argument("--repeats", type=int, default=10, help="timed mask steps")
    parser.add_argument("--requests", type=int, default=5, help="timed edit requests (after one warm-up request)")
    parser.add_argument("--out", default="gpu_check.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: error: no CUDA device is visible (use --device cpu for a smoke run)", file=sys.stderr)
        return 2
    sweep = load_preset("paper")
    lm = model_for(args.model, device)
    started = time.perf_counter()
    discovery = bench_discovery(lm, sweep, args)
    edits = bench_edits(lm, sweep, args)
    result = {
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "commit": git_commit(),
        "mask_step_s": discovery.pop("mask_step_s"),
        "edit_request_s": edits.pop("edit_request_s"),
        "discovery_peak_gpu_gib": discovery.pop("discovery_peak_gpu_gib"),
        "edit_peak_gpu_gib": edits.pop("edit_peak_gpu_gib"),
        "settings": {
            "preset": "paper",
            "model": args.model,
            "device": args.device,
            "model_dtype": "float32",
            "discovery": dataclasses.asdict(sweep.discovery),
            "edit": dataclasses.asdict(sweep.edit),
            "edit_stop_loss": 0.0,
            "rows": args.rows,
            "repeats": args.repeats,
            "requests": args.requests,
        },
        "discovery": discovery,
        "edits": edits,
        "torch": torch.__version__,
    }
    result["goals"] = {
        key: {"goal_max": goal, "met": result[key] is not None and result[key] <= goal} for key, goal in GOALS.items()
    }
    result["wall_s"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in KEYS if k != "settings"} | {"goals": result["goals"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
