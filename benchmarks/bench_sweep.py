"""Fan-out efficiency: the `tiny` sweep through Ray Tune + MLflow against the same work in one plain process.

    python benchmarks/bench_sweep.py [--repeats 3] [--smollm2]

Prints JSON: wall times (median of the repeats), trials, driver overhead per trial, and with
--smollm2 the wall time of the `smollm2-cpu` preset (run once; it takes many minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from circuitlib import data  # noqa: E402
from circuitlib.discovery import discover  # noqa: E402
from circuitlib.editing import edit_requests, variant_masks  # noqa: E402
from circuitlib.models import load_model  # noqa: E402
from sweeps.config import load_preset  # noqa: E402
from sweeps.specs import SweepRun, discovery_trials  # noqa: E402
from sweeps.trials import discovery_inputs  # noqa: E402


def in_process(preset: str) -> tuple[float, int]:
    """The sweep's computation (every discovery and edit trial) sequentially in this process."""
    cfg = load_preset(preset)
    start = time.perf_counter()
    trials = 0
    pool = data.load_requests(cfg.requests, cfg.edit_limit)
    shards = [pool[i : i + cfg.shard_size] for i in range(0, len(pool), cfg.shard_size)]
    for trial in discovery_trials(SweepRun(cfg, "", "")):
        lm = load_model(cfg.model, device="cpu")
        split, config = discovery_inputs(trial)
        found = discover(lm, *split.load(), config, progress=False)
        trials += 1
        for circuit in found.circuits:
            for variant in cfg.variants:
                masks = variant_masks(circuit, variant, trial.seeds.random_mask_seed)
                for shard in shards:
                    edit_requests(lm, shard, variant, masks, cfg.edit, pool=pool, progress=False)
                    trials += 1
    lm = load_model(cfg.model, device="cpu")
    for shard in shards:
        edit_requests(lm, shard, "full", None, cfg.edit, pool=pool, progress=False)
        trials += 1
    return time.perf_counter() - start, trials


def through_ray(preset: str) -> float:
    """Wall time of `python sweeps/size_sweep.py --preset PRESET` in a fresh working folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, str(REPO / "sweeps" / "size_sweep.py"), "--preset", preset, "--work-dir", work],
            check=True,
            capture_output=True,
            env=env | {"HF_HUB_OFFLINE": "1"},
        )
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smollm2", action="store_true", help="also time the smollm2-cpu preset once")
    args = parser.parse_args()
    plain = [in_process("tiny") for _ in range(args.repeats)]
    trials = plain[0][1]
    ray_walls = [through_ray("tiny") for _ in range(args.repeats)]
    plain_wall = statistics.median(p[0] for p in plain)
    ray_wall = statistics.median(ray_walls)
    result = {
        "machine_cpus": os.cpu_count(),
        "repeats": args.repeats,
        "tiny_trials": trials,
        "tiny_in_one_process_s": round(plain_wall, 2),
        "tiny_through_ray_s": round(ray_wall, 2),
        "ray_over_plain": round(ray_wall / plain_wall, 2),
        "driver_overhead_per_trial_s": round((ray_wall - plain_wall) / trials, 3),
    }
    if args.smollm2:
        result["smollm2_cpu_preset_wall_s"] = round(through_ray("smollm2-cpu"), 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
