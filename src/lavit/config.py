"""Typed configs: dataclasses whose fields carry help text, filled from a YAML recipe plus
`key=value` overrides, then checked against each field's type.

An override is text: a `str` field takes it as written (surrounding quotes optional), any other field
parses it as a YAML scalar or list (`1e-4`, `true`, `[a, b]`). Numbers must be finite and integers (counts,
sizes, seeds) non-negative. Every bad value is a `ValueError` naming the key, which the CLI prints as one line."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def field(default: Any, help: str, **kwargs) -> Any:  # noqa: A002 - mirrors argparse's name
    """A dataclass field with help text (shown by `lavit <stage> --help-config`)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


class OverrideText(str):
    """The text of a `key=value` override, before the field's type says how to read it."""


def _takes_text(annotation: Any) -> bool:
    """Fields whose values are text as written: `str` and Literals of strings."""
    if annotation is str:
        return True
    args = typing.get_args(annotation)
    return typing.get_origin(annotation) is typing.Literal and all(isinstance(a, str) for a in args)


def _read_override(name: str, text: OverrideText, annotation: Any) -> Any:
    raw = str(text).strip()
    if _takes_text(annotation):
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            return raw[1:-1]
        return raw
    if not raw:
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ValueError(f"{name}: cannot read {raw!r} ({str(err).splitlines()[0]})") from None


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    if isinstance(value, OverrideText):
        value = _read_override(name, value, annotation)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{name} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, value, arg)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(f"{name}: {value!r} fits none of {annotation}: {errors}")
    if origin is list:
        if not isinstance(value, list):
            value = [value]
        return [_coerce(name, v, args[0]) for v in value] if args else value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
        return value
    if annotation is float:
        # YAML 1.1 reads `1e-4` (no dot) as a string; a number is what the user meant.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
        return float(value)
    if annotation is str:
        if value is None:
            return ""
        if isinstance(value, (bool, list, dict)):  # YAML read `on`, `no`, `a: b` or `[x]` in a recipe
            raise ValueError(f"{name} must be text, got {value!r}: quote it in the recipe")
        return str(value)
    return value


def build_config(cls: type[T], values: dict[str, Any]) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {unknown}; known keys: {sorted(names)}")
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})


def parse_overrides(overrides: list[str]) -> dict[str, OverrideText]:
    """`key=value` items → {key: the value's text}; `build_config` reads each as its field's type."""
    values = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not key=value")
        values[key.strip()] = OverrideText(raw)
    return values


def load_config(cls: type[T], recipe: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """`cls` from an optional YAML recipe, with `key=value` overrides applied on top."""
    values: dict[str, Any] = {}
    if recipe:
        if not Path(recipe).is_file():
            raise FileNotFoundError(f"recipe {recipe} does not exist (the first argument, if it has no '=', is a YAML "
                                    "recipe; settings are key=value)")
        try:
            loaded = yaml.safe_load(Path(recipe).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ValueError(f"recipe {recipe} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"recipe {recipe} must be a YAML mapping of config keys")
        values.update(loaded)
    values.update(parse_overrides(overrides or []))
    return build_config(cls, values)


def describe_config(cls: type) -> str:
    """One line per field: name, default, help."""
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"  {f.name} = {default!r}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
