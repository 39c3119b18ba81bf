"""Time overlap and composition of two GPT2-XL-sized circuits (~1.5e9 masked weights) on their packed bits.

Usage: python benchmarks/bench_overlap.py [--repeats 5] [--layers 48]. Prints one JSON object: median seconds per
call and the peak extra memory (tracemalloc, which numpy reports its array allocations to) of one call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from circuitlib.circuits import Circuit, complement, composition, overlap, overlap_by_module, random_like
from circuitlib.types import MaskedParam

D, MLP = 1600, 6400  # GPT2-XL hidden and MLP widths
BLOCK = [  # (name, shape, module type) of one GPT-2 block's parameters
    ("ln_1.weight", (D,), "norm"),
    ("ln_1.bias", (D,), "norm"),
    ("attn.c_attn.weight", (D, 3 * D), "attention"),
    ("attn.c_attn.bias", (3 * D,), "attention"),
    ("attn.c_proj.weight", (D, D), "attention"),
    ("attn.c_proj.bias", (D,), "attention"),
    ("ln_2.weight", (D,), "norm"),
    ("ln_2.bias", (D,), "norm"),
    ("mlp.c_fc.weight", (D, MLP), "mlp"),
    ("mlp.c_fc.bias", (MLP,), "mlp"),
    ("mlp.c_proj.weight", (MLP, D), "mlp"),
    ("mlp.c_proj.bias", (D,), "mlp"),
]


def gpt2_xl_params(layers: int) -> list[MaskedParam]:
    """The masked parameters of GPT2-XL's transformer blocks."""
    return [
        MaskedParam(f"transformer.h.{i}.{name}", shape, module_type, i)
        for i in range(layers)
        for name, shape, module_type in BLOCK
    ]


def synthetic_circuit(params: list[MaskedParam], seed: int) -> Circuit:
    """A circuit of density ~0.5 from random bytes (GPT2-XL numels are multiples of 8: no pad bits)."""
    offsets = np.concatenate(([0], np.cumsum([p.numel // 8 for p in params])))
    bits = np.random.default_rng(seed).integers(0, 256, size=int(offsets[-1]), dtype=np.uint8)
    return Circuit(params, bits, offsets, "synthetic-gpt2-xl", provenance={"seed": seed})


def measure(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Median wall time over `repeats` calls, and the peak extra memory of one more call traced by tracemalloc."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    tracemalloc.start()
    result = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del result
    return {"median_s": round(statistics.median(times), 4), "peak_extra_mib": round(peak / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=48)
    args = parser.parse_args()

    params = gpt2_xl_params(args.layers)
    a, b = synthetic_circuit(params, 0), synthetic_circuit(params, 1)
    report = {
        "masked_weights": a.total,
        "packed_mib_per_circuit": round(a.bits.nbytes / 2**20, 1),
        "n_params": len(params),
        "overlap": measure(lambda: overlap(a, b), args.repeats),
        "overlap_by_module": measure(lambda: overlap_by_module(a, b), args.repeats),
        "composition": measure(lambda: composition(a), args.repeats),
        "complement": measure(lambda: complement(a), args.repeats),
        "random_like": measure(lambda: random_like(a, seed=0), 1),
        "jaccard": overlap(a, b).jaccard,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
