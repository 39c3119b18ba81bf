"""The seeds of a sweep, each named for what it seeds and derived here only, from a dataset and a sweep seed.

- `split_seed`: the dataset's label-balanced subsample and its train/eval split (`data.SplitSpec`).
- `mask_seed`: `DiscoveryConfig.mask_seed`, i.e. the mask logits' init, the Gumbel noise, the batch order and the head.
- `random_mask_seed`: the random variant's mask (`editing.variant_masks`).

A circuit records its split and mask seeds in its provenance, so `circuitlib discover` recomputes it from the file.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Seeds:
    """The three seeds of one dataset under one sweep seed."""

    split_seed: int
    mask_seed: int
    random_mask_seed: int


def mask_seed(dataset: str, seed: int) -> int:
    """Discovery's seed for one dataset: independent across datasets, so circuits of different datasets share no
    initial logits or Gumbel noise and their overlap is not inflated by common randomness."""
    return zlib.crc32(f"{dataset}/{seed}".encode()) % 2**31


def sweep_seeds(dataset: str, seed: int) -> Seeds:
    """The seeds a sweep uses for dataset `dataset` (its name) under sweep seed `seed`."""
    return Seeds(split_seed=seed, mask_seed=mask_seed(dataset, seed), random_mask_seed=seed)
