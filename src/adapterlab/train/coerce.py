"""Converting setting values (from YAML files or Python) to a dataclass field's annotated type.

YAML 1.1 reads `3e-4` as a string and users write `epochs: "3"`; where the conversion is unambiguous the
value is converted, else `Mismatch` is raised and the caller names the setting, the value and `describe(type)`.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any


class Mismatch(ValueError):
    """A value that does not convert to the annotated type."""


def coerce(value: Any, hint: Any) -> Any:
    """`value` as type `hint` (scalars, X | None, int | float, list[X], dict) where unambiguous; else Mismatch."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if value is None and len(members) < len(args):
            return None
        if set(members) == {int, float}:
            return _number(value)
        return coerce(value, members[0])
    if origin is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise Mismatch
        return [coerce(item, args[0]) for item in items]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise Mismatch
        return dict(value)
    return _SCALARS[hint](value)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.strip().lower() in ("true", "yes", "on", "1")
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


def _number(value: Any) -> int | float:
    """An int stays an int and a float a float; a string becomes whichever it spells ("120", "0.1")."""
    if isinstance(value, str):
        number = _float(value)
        return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    return _integer(value) if isinstance(value, int) else _float(value)


def _string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise Mismatch


_SCALARS = {bool: _boolean, int: _integer, float: _float, str: _string}


def describe(hint: Any) -> str:
    """What a setting of type `hint` accepts, in words."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        text = "a number" if set(members) == {int, float} else describe(members[0])
        return text + (" or null" if len(members) < len(args) else "")
    if origin is list:
        return "a list of strings (or one string)"
    if origin is dict:
        return "a mapping of option: value"
    return {bool: "true or false", int: "a whole number (int)", float: "a number (float)",
            str: "a string"}[hint]
