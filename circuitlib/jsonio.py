"""Standard JSON out of results that may hold NaN or infinities (an edit that diverged, a metric with no rows)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path


def json_safe(payload: object) -> object:
    """`payload` with every non-finite float as None, so it dumps as standard JSON (null, never NaN)."""
    if isinstance(payload, float):
        return payload if math.isfinite(payload) else None
    if isinstance(payload, Mapping):
        return {k: json_safe(v) for k, v in payload.items()}
    if isinstance(payload, list | tuple):
        return [json_safe(v) for v in payload]
    return payload


def write_json(path: Path, payload: object) -> None:
    """Write standard JSON (NaN as null), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(payload), indent=2))
