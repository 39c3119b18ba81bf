"""What a discovery ran on, recorded in each circuit it finds, and the `circuitlib discover` arguments that redo it.

`discover` records the dataset's name and the whole DiscoveryConfig (its mask_seed included); `stamp` adds the rows
(a `SplitSpec`: dataset spec, limit, eval fraction, split seed) and the dtype of the model's weights (float32; a
circuit found by an older circuitlib on bfloat16 weights says so, and this one cannot recompute it), so the circuit
file alone says how to recompute it bit for bit (on the same kind of device).
"""

from __future__ import annotations

import dataclasses

from circuitlib import options
from circuitlib.circuits import Circuit
from circuitlib.data import SPLIT_BEFORE_RECORDED, SplitSpec
from circuitlib.errors import InputError
from circuitlib.models import LoadedModel

NEEDED = ("split", "model_dtype", "config")  # the provenance keys `discover_args` reads


def stamp(circuit: Circuit, split: SplitSpec, lm: LoadedModel) -> Circuit:
    """`circuit` with its rows and the dtype of the model's weights added to its provenance."""
    extra = {"split": dataclasses.asdict(split), "model_dtype": str(lm.model.dtype).removeprefix("torch.")}
    return dataclasses.replace(circuit, provenance={**circuit.provenance, **extra})


def discover_args(circuit: Circuit) -> list[str]:
    """The `circuitlib discover` arguments, all but --out, that recompute `circuit` from its provenance."""
    from circuitlib.discovery import DiscoveryConfig

    found = circuit.provenance
    missing = [key for key in NEEDED if key not in found]
    if missing:
        raise InputError(
            f"circuit of {circuit.model_id}: its provenance lacks {', '.join(missing)}, "
            "so it does not say how to recompute it"
        )
    if found["model_dtype"] != "float32":
        raise InputError(
            f"circuit of {circuit.model_id}: found on {found['model_dtype']} weights by an older "
            "circuitlib, which this one cannot recompute (discovery runs on float32 weights; precision "
            "selects bfloat16 autocast); recompute it with the circuitlib that found it"
        )
    split = options.build(SplitSpec, {**SPLIT_BEFORE_RECORDED, **found["split"]}, lambda key: f"provenance split.{key}")
    config = options.build(DiscoveryConfig, found["config"], lambda key: f"provenance config.{key}")
    revision = ["--revision", circuit.model_revision] if circuit.model_revision else []
    rows = options.as_args(split, first=("dataset", "split_seed"))  # which rows, then how they are split
    return ["--model", circuit.model_id, *revision, *rows, *options.as_args(config)]
