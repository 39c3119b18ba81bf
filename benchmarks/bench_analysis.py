"""Time the analysis's overlap and composition of two GPT2-XL-sized circuits (~1.5e9 masked weights, synthetic).

The budget (issue 4): overlap of the pair, whole model and per module type, in at most 5 s and 1 GiB of extra memory.
Usage: python benchmarks/bench_analysis.py [--repeats 3] [--layers 48]. Prints one JSON object; exits 1 over budget.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench_overlap import gpt2_xl_params, measure, synthetic_circuit

from analysis.composition import circuit_composition
from analysis.overlap import density_overlaps

BUDGET_S = 5.0
BUDGET_MIB = 1024.0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=48)
    args = parser.parse_args()

    params = gpt2_xl_params(args.layers)
    a, b = synthetic_circuit(params, 0), synthetic_circuit(params, 1)
    overlap = measure(lambda: density_overlaps(0.5, {"a": a, "b": b}), args.repeats)
    report = {
        "masked_weights": a.total,
        "analysis_overlap_pair": overlap,
        "analysis_composition_one_circuit": measure(lambda: circuit_composition("a", 0.5, a), args.repeats),
        "budget": {"seconds": BUDGET_S, "extra_mib": BUDGET_MIB},
        "within_budget": overlap["median_s"] <= BUDGET_S and overlap["peak_extra_mib"] <= BUDGET_MIB,
    }
    print(json.dumps(report, indent=2))
    return 0 if report["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
