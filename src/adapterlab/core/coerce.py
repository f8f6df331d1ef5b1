"""Converting a setting's value to its dataclass field's annotated type, for adapter options and training settings.

YAML 1.1 reads `3e-4` as a string, JSON configs get edited by hand (`"r": "8"`), and flags arrive as text. Where
the conversion is unambiguous the value is converted; else `Mismatch` is raised and the caller names the setting,
its value, `describe(type)` and where it came from.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any

TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class Mismatch(ValueError):
    """A value that does not convert to the annotated type."""


def coerce(value: Any, hint: Any, *, split_commas: bool = False) -> Any:
    """`value` as type `hint` (scalars, unions, list[X], dict, Any) where unambiguous; else raise Mismatch.

    A union keeps a value that already is one of its members, else takes the first member it converts to. A
    string given for a list is one item, or comma-separated items with `split_commas` ("q,v" -> ["q", "v"]).
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if any(_is_instance(value, member) for member in args):
            return value
        for member in args:
            if member is not type(None):
                try:
                    return coerce(value, member, split_commas=split_commas)
                except Mismatch:
                    continue
        raise Mismatch
    if origin is list:
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",") if p.strip()] if split_commas else [value]
        if not isinstance(value, (list, tuple)):
            raise Mismatch
        return [coerce(item, args[0] if args else Any) for item in value]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise Mismatch
        return dict(value)
    if hint is type(None):
        if value is None:
            return None
        raise Mismatch
    if hint not in _SCALARS:
        if isinstance(hint, type) and isinstance(value, hint):
            return value
        raise Mismatch
    return _SCALARS[hint](value)


def _is_instance(value: Any, hint: Any) -> bool:
    """isinstance for plain types, where True is not an int (to a user it is not)."""
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is not None or not isinstance(hint, type):
        return False
    return isinstance(value, hint) and not (isinstance(value, bool) and hint is not bool)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise Mismatch


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Mismatch
    try:
        number = float(value)
    except ValueError:
        raise Mismatch from None
    if not math.isfinite(number):
        raise Mismatch
    return number


def _integer(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = _float(value)
    if not number.is_integer():
        raise Mismatch
    return int(number)


def _string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise Mismatch


_SCALARS = {bool: _boolean, int: _integer, float: _float, str: _string}


def describe(hint: Any) -> str:
    """What a setting of type `hint` accepts, in words ("a whole number (int) or null")."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        text = "a number" if set(members) == {int, float} else " or ".join(describe(m) for m in members)
        return text + (" or null" if len(members) < len(args) else "")
    if origin is list:
        plural = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}
        return f"a list of {plural.get(args[0], 'values') if args else 'values'}"
    if origin is dict:
        return "a mapping of option: value"
    words = {bool: "true or false", int: "an integer (int)", float: "a number (float)", str: "a string",
             type(None): "null"}
    return words.get(hint, getattr(hint, "__name__", str(hint)))
