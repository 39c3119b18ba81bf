"""Hyperparameters declared once: a default, a one-line doc and a check per dataclass field.

A config dataclass declares each field with `setting(...)`; `validate(config)` runs every field's check
and raises one `InputError` naming the field, so the library, the sweep and the command line share
one definition, one doc and one validation of every hyperparameter.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from circuitlib.errors import InputError
from circuitlib.jsonio import write_json

Check = Callable[[Any], str | None]  # returns what is wrong with a value, or None when it is fine


class SettingError(InputError):
    """A setting's value that fails its check, with the setting's name, the value and the problem kept apart."""

    def __init__(self, name: str, value: Any, problem: str):
        super().__init__(f"{name} {value!r}: {problem}")
        self.name, self.value, self.problem = name, value, problem


def setting(
    default: Any = dataclasses.MISSING,
    doc: str = "",
    *,
    check: Check | None = None,
    choices: tuple[Any, ...] | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field with its doc, an optional check and optional allowed values."""
    metadata = {"doc": doc, "check": check, "choices": choices}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def doc(field: dataclasses.Field) -> str:
    """The one-line doc of a field declared with `setting`."""
    return field.metadata.get("doc", "")


def choices(field: dataclasses.Field) -> tuple[Any, ...] | None:
    """The allowed values of a field declared with `setting(choices=...)`, or None."""
    return field.metadata.get("choices")


def validate(config: Any, prefix: str = "") -> None:
    """Run every field's check and choices; the first problem becomes one `SettingError` naming the field. A field
    whose default is None (unset) may be None whatever its choices."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        allowed = None if value is None and f.default is None else choices(f)
        for check in (one_of(allowed) if allowed is not None else None, f.metadata.get("check")):
            problem = check(value) if check is not None else None
            if problem:
                raise SettingError(prefix + f.name, value, problem)


def default(field: dataclasses.Field) -> Any:
    """A field's default value (a fresh one where it has a factory)."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def changed(before: Any, after: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts of settings (a key missing on one side differs)."""
    if isinstance(before, dict) and isinstance(after, dict):
        return sorted(
            k
            for key in before.keys() | after.keys()
            for k in changed(before.get(key), after.get(key), f"{prefix}{key}.")
        )
    return [] if before == after else [prefix.rstrip(".")]


def freeze(
    path: Path,
    settings: Any,
    changes: Callable[[Any], list[str]],
    refusal: Callable[[list[str]], str],
    update: bool = False,
) -> bool:
    """Freeze a run's `settings` in `path` (its params.json) the first time; later, refuse in one line (`refusal` of
    the names) when `changes(the frozen settings)` names settings that would compute something else, and with
    `update` record the allowed changes (a larger budget). Returns whether the run was frozen before. The one freezer
    of a discovery's checkpoint (circuitlib.cli) and of a sweep."""
    existed = path.is_file()
    if existed:
        changed_now = changes(json.loads(path.read_text()))
        if changed_now:
            raise InputError(refusal(changed_now))
    if update or not existed:
        write_json(path, settings)
    return existed


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive(value: Any) -> str | None:
    """A finite number above zero."""
    return None if _number(value) and value > 0 else "must be a finite number above 0"


def non_negative(value: Any) -> str | None:
    """A finite number of at least zero."""
    return None if _number(value) and value >= 0 else "must be a finite number of at least 0"


def at_least(low: int) -> Check:
    """An integer of at least `low`."""

    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        return None if ok else f"must be an integer of at least {low}"

    return check


def optional(inner: Check) -> Check:
    """None, or a value that passes `inner`."""
    return lambda value: None if value is None else inner(value)


def fraction(value: Any) -> str | None:
    """A number strictly between 0 and 1."""
    return None if _number(value) and 0.0 < value < 1.0 else "must lie strictly between 0 and 1"


def probability(value: Any) -> str | None:
    """A number from 0 to 1, both included."""
    return None if _number(value) and 0.0 <= value <= 1.0 else "must lie in [0, 1]"


def share(value: Any) -> str | None:
    """A number above 0 and at most 1 (a share of one device)."""
    return None if _number(value) and 0.0 < value <= 1.0 else "must lie in (0, 1]"


def densities(value: Any) -> str | None:
    """A non-empty sequence of target densities, each strictly between 0 and 1."""
    if not isinstance(value, (list, tuple)) or not value:
        return "must be a non-empty list such as 0.5,0.25; each target density must lie in (0, 1)"
    bad = [d for d in value if fraction(d)]
    return f"each target density must lie in (0, 1); {bad} do not" if bad else None


def decreasing_densities(value: Any) -> str | None:
    """Target densities as `densities` checks them, each strictly below the one before (a discovery visits them in
    turn, so a repeated or rising target could only be a typo)."""
    problem = densities(value)
    if problem:
        return problem
    rising = [(a, b) for a, b in zip(value, value[1:], strict=False) if b >= a]
    return (
        f"must decrease strictly, each target below the one before; {rising[0][1]:g} follows {rising[0][0]:g}"
        if rising
        else None
    )


def text(value: Any) -> str | None:
    """A non-empty string."""
    return None if isinstance(value, str) and value.strip() else "must be a non-empty text"


def one_of(allowed: tuple[Any, ...]) -> Check:
    """One of `allowed`."""
    return lambda value: None if value in allowed else f"must be one of {', '.join(map(str, allowed))}"


def non_empty(item: Check) -> Check:
    """A non-empty list whose every item passes `item`."""

    def check(value: Any) -> str | None:
        if not isinstance(value, (list, tuple)) or not value:
            return "must be a non-empty list such as a,b"
        problems = [f"item {v!r} {problem}" for v in value if (problem := item(v))]
        return problems[0] if problems else None

    return check


def finite(value: Any) -> str | None:
    """Any finite number."""
    return None if _number(value) else "must be a finite number"


_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def identifier(value: Any) -> str | None:
    """A name safe as a folder and in a query: letters, digits, `_`, `.` and `-`, without `..`."""
    ok = isinstance(value, str) and value != "" and set(value) <= _NAME_CHARS and ".." not in value
    return None if ok else "must be letters, digits, _ . - only (no .., no /)"


def location(schemes: tuple[str, ...]) -> Check:
    """A local path, or a URI with one of `schemes` (`s3` for s3://...)."""

    def check(value: Any) -> str | None:
        if not isinstance(value, str) or not value.strip():
            return "must be a non-empty text"
        if "://" not in value or value.split("://", 1)[0] in schemes:
            return None
        return f"must be a local path or a URI of {', '.join(s + '://' for s in schemes)}"

    return check
