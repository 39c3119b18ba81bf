"""The dtypes a model's weights load in, by name: what a sweep's `dtype` and `circuitlib discover --dtype` take."""

from __future__ import annotations

import torch

from circuitlib.errors import InputError

DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(name: str) -> torch.dtype:
    """The dtype `name` stands for; auto is bfloat16 where CUDA is available and float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if name not in DTYPES:
        raise InputError(f"dtype {name!r}: must be one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def dtype_name(dtype: torch.dtype) -> str:
    """`float32` for torch.float32: the name `resolve_dtype` reads back."""
    return str(dtype).removeprefix("torch.")
