"""Config dataclasses as command-line options and back, shared by `circuitlib discover/edit` and the sweep.

Every field becomes `--{prefix}{name}` (dashes; the underscore spelling works too), with its doc and default as
help; a nested config dataclass becomes options under `--{name}.` (e.g. `--discovery.lr`). Values are text read by
the field's type: lists as `a,b` or `[a, b]`, `none` for an unset optional, and a bool option given alone means true
(`--compile-model`, or `--compile-model false`). `build` makes the dataclass from such text or from a preset's
YAML values, so the dataclass's own `__post_init__` validates every value, once.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

import yaml

from circuitlib import settings
from circuitlib.errors import InputError
from circuitlib.settings import SettingError

T = TypeVar("T")
NONE_WORDS = ("", "none", "null", "~")


class OptionParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and no abbreviated options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        hint = "; --help lists the options" if message.startswith("unrecognized arguments") else ""
        self.exit(2, f"{self.prog}: error: {message}{hint}\n")


def flag(name: str) -> str:
    """The option that sets the (dotted) setting `name`: `--discovery.max-steps` for discovery.max_steps."""
    return "--" + name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, else (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1:
            return inner[0], True
    return tp, False


def _words(text: str) -> list[str]:
    """The items of a list written as `a,b` or `[a, b]`."""
    stripped = text.strip()
    if not stripped.startswith("["):
        return [w.strip() for w in stripped.split(",") if w.strip()]
    try:
        loaded = yaml.safe_load(stripped)
    except yaml.YAMLError:
        loaded = None
    if not isinstance(loaded, list):
        raise ValueError("expected a list such as a,b or [a, b]")
    return [str(v) for v in loaded]


def parse(tp: Any, text: str) -> Any:
    """The value `text` spells for a field of type `tp`; a ValueError says what was expected instead."""
    inner, optional = _unwrap_optional(tp)
    if optional and text.strip().lower() in NONE_WORDS:
        return None
    origin = typing.get_origin(inner)
    if origin in (list, tuple):
        values = [parse(typing.get_args(inner)[0], w) for w in _words(text)]
        return tuple(values) if origin is tuple else values
    if inner is bool:
        value = yaml.safe_load(text) if text.strip() else None
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if inner in (int, float):
        try:
            return inner(text)
        except ValueError:
            raise ValueError("expected an integer" if inner is int else "expected a number") from None
    if inner is str or origin is typing.Literal:  # a Literal's allowed values are its field's check
        return text
    raise ValueError(f"cannot be given as text (a {inner})")


def _coerce(tp: Any, value: Any) -> Any:
    """A preset's or an option's value as the field's type: text parsed, ints as floats, lists as the field's kind."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        return None
    if isinstance(value, str) and (inner is not str or optional):  # an optional's `none` is unset, as documented
        return parse(tp, value)
    origin = typing.get_origin(inner)
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        values = [_coerce(typing.get_args(inner)[0], v) for v in value]
        return tuple(values) if origin is tuple else values
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _init_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def build(cls: type[T], values: Mapping[str, Any], name: Callable[[str], str] = str) -> T:
    """`cls(**values)` with text parsed and nested mappings built into their config dataclasses.

    An unknown key, a missing required one or a bad value raises one InputError naming the setting as
    `name(dotted path)`.
    """
    hints = typing.get_type_hints(cls)
    known = [f.name for f in _init_fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InputError(f"{name(unknown[0])}: no such setting (known: {', '.join(known)})")
    missing = [f.name for f in _init_fields(cls) if settings.default(f) is dataclasses.MISSING and f.name not in values]
    if missing:
        raise InputError(f"{name(missing[0])}: required")
    typed = {}
    for key, value in values.items():
        inner, _ = _unwrap_optional(hints[key])
        if dataclasses.is_dataclass(inner) and isinstance(value, Mapping):
            typed[key] = build(typing.cast(type, inner), value, lambda sub, key=key: name(f"{key}.{sub}"))
            continue
        try:
            typed[key] = _coerce(hints[key], value)
        except ValueError as exc:
            raise SettingError(name(key), value, str(exc)) from None
    try:
        return cls(**typed)
    except SettingError as exc:
        raise SettingError(name(exc.name), values.get(exc.name, exc.value), exc.problem) from None


def format_value(value: Any) -> str:
    """A value as option text that `parse` reads back exactly."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def _help(field: dataclasses.Field) -> str:
    default = settings.default(field)
    text = settings.doc(field)
    if default is not dataclasses.MISSING:
        text += f" (default: {format_value(default)})"
    return text.replace("%", "%%")


def _metavar(tp: Any, allowed: tuple[Any, ...] | None) -> str:
    if allowed:
        return "{" + ",".join(map(str, allowed)) + "}"
    if typing.get_origin(tp) in (list, tuple):
        return "A,B"
    return {int: "N", float: "X", bool: "BOOL"}.get(tp, "TEXT")


def add_options(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """One option per field of `cls`, nested config dataclasses under `{prefix}{name}.`; unset options stay None."""
    hints = typing.get_type_hints(cls)
    for f in _init_fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            add_options(parser, typing.cast(type, tp), f"{prefix}{f.name}.")
            continue
        dest = prefix + f.name
        inner, _ = _unwrap_optional(tp)
        allowed = settings.choices(f)
        kwargs: dict[str, Any] = {"dest": dest, "default": None, "help": _help(f), "metavar": _metavar(inner, allowed)}
        if inner is bool:
            kwargs |= {"nargs": "?", "const": "true"}
        parser.add_argument(flag(dest), **kwargs)
        if "_" in dest:
            alias: dict[str, Any] = {**kwargs, "help": argparse.SUPPRESS}
            parser.add_argument(f"--{dest}", **alias)


def given(args: argparse.Namespace, cls: type, prefix: str = "") -> dict[str, Any]:
    """The options of `cls` set on the command line, as {field: text} (nested configs as nested dicts)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in _init_fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            nested = given(args, hints[f.name], f"{prefix}{f.name}.")
            if nested:
                out[f.name] = nested
        elif (text := getattr(args, prefix + f.name, None)) is not None:
            out[f.name] = text
    return out


def as_args(config: Any, prefix: str = "", first: tuple[str, ...] = ()) -> list[str]:
    """The options that set every field of `config` to its value (what `add_options` and `given` read back); the
    fields named in `first` lead, in that order, so a command line reads as a person would write it."""
    pairs = flatten(config, prefix)
    pairs = {key: pairs[key] for key in first} | pairs
    return [text for key, value in pairs.items() for text in (flag(key), format_value(value))]


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Every field of `config` under its dotted name (`discovery.lr`), nested configs expanded: a config as flat
    key-value pairs (MLflow params). `unflatten` reads it back."""
    out: dict[str, Any] = {}
    for f in _init_fields(type(config)):
        value = getattr(config, f.name)
        out |= flatten(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else {prefix + f.name: value}
    return out


def unflatten(cls: type[T], flat: Mapping[str, Any], name: Callable[[str], str] = str) -> T:
    """The `cls` that `flatten` gave `flat` (values as they were, or as text: MLflow params), checked as `build`
    checks a preset."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *outer, last = key.split(".")
        node = nested
        for part in outer:
            node = node.setdefault(part, {})
        node[last] = value
    return build(cls, nested, name)


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied, nested mappings merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        inner = base.get(key)
        out[key] = merged(inner, value) if isinstance(value, Mapping) and isinstance(inner, Mapping) else value
    return out
