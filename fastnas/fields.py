"""Typed dataclass fields read from JSON or from command-line text, with errors that say where.

:func:`check_value` validates one value against a field's type (``int``, ``float``, ``bool``, ``str``,
``Literal[...]``, ``X | None``, ``tuple[float, float]``, ``dict[str, Any]``, ``list[int]``);
:func:`parse_text` converts command-line text to a field's type; :func:`load_fields` reads a whole
mapping into a dataclass's keyword arguments, rejecting unknown keys and wrong types. Pure Python.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union, get_args, get_origin

from fastnas.errors import ConfigError

__all__ = [
    "check_value",
    "describe_type",
    "field_types",
    "load_fields",
    "parse_text",
    "setting",
]

_MISSING = object()


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def field_types(cls: type) -> dict[str, Any]:
    """``{field name: resolved type}`` of dataclass ``cls`` (string annotations evaluated, cached)."""
    if cls not in _FIELD_TYPES:
        hints = typing.get_type_hints(cls)
        _FIELD_TYPES[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _FIELD_TYPES[cls]


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def describe_type(tp: Any) -> str:
    """A short human name of a type: ``int``, ``float``, ``one of 1, 2``, ``int or null`` ..."""
    if _is_union(tp):
        return " or ".join("null" if a is type(None) else describe_type(a) for a in get_args(tp))
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    origin = get_origin(tp)
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a comma-separated list of {describe_type(args[0])}"
        return "a list of " + ", ".join(describe_type(a) for a in args)
    if origin in (list, dict):
        return "a list" if origin is list else "an object"
    return getattr(tp, "__name__", str(tp))


def check_value(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against type ``tp`` (ints are accepted for floats, lists for tuples; floats
    must be finite); raises :class:`~fastnas.errors.ConfigError` naming ``where``."""
    result = _check(value, tp)
    if result is _MISSING:
        raise ConfigError(f"{where} must be {describe_type(tp)}, got {type(value).__name__} {value!r:.80}")
    if isinstance(result, float) and not math.isfinite(result):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    return result


def _check(value: Any, tp: Any) -> Any:
    if tp is Any:
        return value
    if _is_union(tp):
        for arg in get_args(tp):
            out = _check(value, arg)
            if out is not _MISSING:
                return out
        return _MISSING
    if tp is type(None):
        return None if value is None else _MISSING
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        return value if any(value == a and type(value) is type(a) for a in allowed) else _MISSING
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
            if not isinstance(value, (list, tuple)):
                return _MISSING
            args = (args[0],) * len(value)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            return _MISSING
        items = tuple(_check(v, a) for v, a in zip(value, args, strict=True))
        return _MISSING if any(i is _MISSING for i in items) else items
    if origin is list:
        (item_type,) = get_args(tp) or (Any,)
        if not isinstance(value, list):
            return _MISSING
        items_list = [_check(v, item_type) for v in value]
        return _MISSING if any(i is _MISSING for i in items_list) else items_list
    if origin is dict or tp is dict:
        return value if isinstance(value, dict) and all(isinstance(k, str) for k in value) else _MISSING
    if tp is bool:
        return value if isinstance(value, bool) else _MISSING
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _MISSING
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return _MISSING
    if tp is str:
        return value if isinstance(value, str) else _MISSING
    if isinstance(tp, type):
        return value if isinstance(value, tp) else _MISSING
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_text(text: str, tp: Any, where: str) -> Any:
    """Command-line ``text`` converted to type ``tp`` (``bool``: true/false/yes/no/1/0/on/off)."""
    if tp is Any or tp is str:
        return text
    if _is_union(tp):
        args = [a for a in get_args(tp) if a is not type(None)]
        if text.lower() in ("none", "null") and len(args) < len(get_args(tp)):
            return None
        if len(args) == 1:  # X | None: X's own message
            return parse_text(text, args[0], where)
        for arg in args:
            try:
                return parse_text(text, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be {describe_type(tp)}, got {text!r}")
    if get_origin(tp) is Literal:
        for allowed in get_args(tp):
            if str(allowed) == text:
                return allowed
        raise ConfigError(f"{where} must be {describe_type(tp)}, got {text!r}")
    if get_origin(tp) is tuple:  # "5,11,17"
        items = [t.strip() for t in text.split(",")] if text.strip() else []
        item_types = get_args(tp)
        if len(item_types) == 2 and item_types[1] is Ellipsis:
            item_types = (item_types[0],) * len(items)
        if len(items) != len(item_types):
            raise ConfigError(f"{where} must be {describe_type(tp)}, got {text!r}")
        return tuple(parse_text(item, a, where) for item, a in zip(items, item_types, strict=True))
    try:
        if tp is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError
        if tp is int:
            return int(text)
        if tp is float:
            value = float(text)
    except ValueError:
        raise ConfigError(f"{where} must be {describe_type(tp)}, got {text!r}") from None
    if tp is float:
        return check_value(value, float, where)  # finite
    raise ConfigError(f"{where}: values of type {describe_type(tp)} cannot be given as text")


def load_fields(cls: type, data: Any, where: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Keyword arguments for dataclass ``cls`` from ``data`` (a JSON object): unknown keys and values
    of the wrong type are :class:`~fastnas.errors.ConfigError` s naming ``where`` and the key; missing
    keys are left out (the dataclass default applies). Fields in ``exclude`` are not read."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a JSON object with named settings, got {type(data).__name__}")
    types_of = {k: v for k, v in field_types(cls).items() if k not in exclude}
    unknown = sorted(set(data) - set(types_of))
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {unknown}; known keys are {sorted(types_of)}")
    return {key: check_value(value, types_of[key], f"{where}: {key!r}") for key, value in data.items()}


def setting(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    const: Any = _MISSING,
    choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]] | None = None,
    metavar: str | None = None,
    cli: bool = True,
) -> Any:
    """A configuration field with its command-line flag: ``--name-with-dashes`` (or ``flag``) plus
    ``aliases``; ``choices`` may be a function (read when the parser is built, e.g. the registered
    methods); a field with ``const`` is a switch that stores ``const`` (e.g. ``--download`` stores
    True, ``--nondeterministic`` stores False); ``cli=False`` keeps it off the command line."""
    metadata = {
        "help": help,
        "flag": flag,
        "aliases": aliases,
        "choices": choices,
        "metavar": metavar,
        "cli": cli,
    }
    if const is not _MISSING:
        metadata["const"] = const
    field: Any = dataclasses.field(default=default, metadata=metadata)
    return field
