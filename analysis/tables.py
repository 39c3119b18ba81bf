"""Tables as markdown and CSV, with missing values shown as a dash (markdown) or an empty cell (CSV), never 0."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from analysis.bootstrap import Estimate

GAP = "—"
Column = tuple[str, Callable[[Any], str]]  # header, cell of a row


def number(x: float | None, digits: int = 3) -> str:
    """A number to `digits` significant digits; GAP where missing."""
    return GAP if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def percent(x: float | None) -> str:
    """A fraction as a percentage; GAP where missing."""
    return GAP if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def estimate(e: Estimate | None) -> str:
    """`mean [low, high]`; the mean alone for a single observation (no spread to resample); GAP where missing."""
    if e is None:
        return GAP
    return f"{e.mean:.3g} (one value)" if e.n == 1 else f"{e.mean:.3g} [{e.low:.3g}, {e.high:.3g}]"


def yes_no(flag: bool | None) -> str:
    return GAP if flag is None else ("yes" if flag else "no")


def markdown_table(columns: Sequence[Column], rows: Sequence[Any]) -> str:
    """A pipe table with one line per row; `_(no rows)_` for an empty table."""
    if not rows:
        return "_(no rows)_\n"
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _flat(row: Any) -> dict[str, Any]:
    """A dataclass row as one flat dict: a mapping field `x` (per variant) becomes `x_circuit`, `x_complement`, ...;
    an Estimate `x` becomes `x_mean`, `x_low`, `x_high`, `x_n`, ..."""
    out: dict[str, Any] = {}
    for f in fields(row):
        value = getattr(row, f.name)
        items = value.items() if isinstance(value, Mapping) else [(None, value)]
        for key, item in items:
            name = f.name if key is None else f"{f.name}_{key}"
            if "Estimate" in str(f.type):  # flattened even when None, so every row has the same columns
                out |= {f"{name}_{g.name}": getattr(item, g.name, None) for g in fields(Estimate)}
            else:
                out[name] = item
    return out


def _cell(value: Any) -> Any:
    """A CSV cell: empty for None and NaN, a tuple's items joined by spaces."""
    if isinstance(value, tuple):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def write_csv(path: Path, rows: Sequence[Any]) -> Path:
    """Dataclass rows as a CSV file (header from the first row); an empty file for no rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = [_flat(r) for r in rows]
    with path.open("w", newline="") as f:
        if flat:
            writer = csv.DictWriter(f, fieldnames=list(flat[0]))
            writer.writeheader()
            writer.writerows({k: _cell(v) for k, v in row.items()} for row in flat)
    return path
