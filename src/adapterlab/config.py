"""The base config dataclass every adapter method extends (one dataclass per method, like PEFT)."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import AdapterError

if TYPE_CHECKING:
    from torch import nn

    from .methods.base import Adapter
    from .sites import Placement, Site


@dataclass
class AdapterConfig:
    """Options shared by every method.

    targets: module-name suffixes (``"q_proj"``) or logical names (``q k v o up gate down attn mlp``);
    ``None`` means the method's ``default_targets``. layers: restrict to these block indices.
    """

    method: ClassVar[str] = ""
    default_targets: ClassVar[tuple[str, ...]] = ()
    mergeable: ClassVar[bool] = False
    # site kinds the method can use: "module" (one layer), "sublayer" (attn/mlp), "model" (the forward call)
    site_kinds: ClassVar[tuple[str, ...]] = ("module",)
    # option values that an adapter saved before the option existed implies (its behaviour then)
    legacy_defaults: ClassVar[dict[str, Any]] = {}

    targets: list[str] | None = None
    layers: list[int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = [t.strip() for t in self.targets.split(",") if t.strip()]
        if self.targets is not None and not self.targets:
            raise AdapterError(f"{self.method}: `targets` is empty; name at least one module or leave it unset.")
        if self.targets is not None:
            self.targets = list(self.targets)
        if self.layers is not None:
            self.layers = [int(i) for i in self.layers]
        self.validate()

    def validate(self) -> None:
        """Check option values; methods override and raise AdapterError naming the option."""

    def sites(self, model: "nn.Module", placement: "Placement") -> list["Site"]:
        """Where this adapter goes: its targets' sites. A method that also adapts layers no target names
        (BitFit's normalisation layers) extends this."""
        return placement.resolve(self.resolved_targets, self.layers, defaults=self.targets is None)

    def build(self, site: "Site", model: "nn.Module", placement: "Placement") -> "Adapter":
        """The adapter module for one site; must not read weight values (attach works on meta models).

        `placement` holds the model's architecture (the user's override honoured) and all the sites: use
        it rather than looking the architecture up again.
        """
        raise NotImplementedError

    @property
    def resolved_targets(self) -> list[str]:
        return list(self.targets) if self.targets is not None else list(self.default_targets)

    def to_dict(self) -> dict[str, Any]:
        out = {"method": self.method}
        out.update(dataclasses.asdict(self))
        return out

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_options(cls, options: dict[str, Any], source: str | None = None) -> "AdapterConfig":
        """Build from options (attach keywords, or a saved adapter_config.json named by `source`).

        Unknown names are refused with the valid ones. Each value is coerced to its field's annotated type
        where that is unambiguous ("8" -> 8 for an int, 8 -> 8.0 for a float, "q,v" -> a list), else refused
        with an AdapterError naming the option, its value, the type and the file.
        """
        where = f" in {source}" if source else ""
        known = set(cls.option_names())
        unknown = sorted(set(options) - known)
        if unknown:
            raise AdapterError(f"{cls.method}: unknown option(s) {unknown}{where}. Valid options: {sorted(known)}.")
        hints = typing.get_type_hints(cls)
        values = {}
        for key, value in options.items():
            values[key] = coerce(value, hints[key])
            if values[key] is MISMATCH:
                raise AdapterError(
                    f"{cls.method}: `{key}`{where} is {value!r}, but it must be {describe(hints[key])}; "
                    f"fix the value{' there' if source else ''}."
                )
        try:
            return cls(**values)
        except AdapterError as exc:
            if source:  # a saved config's bad value: say which file holds it
                raise type(exc)(f"{exc} ({source})") from exc
            raise


MISMATCH = object()  # what `coerce` returns for a value that does not fit its type


def coerce(value: Any, kind: Any) -> Any:
    """`value` as the annotated type `kind` where the conversion is unambiguous, else MISMATCH.

    int: ints, integral floats and digit strings; float: numbers and numeric strings; bool: booleans and
    "true"/"false"; str: strings only; list[X]: lists (or comma-separated strings) of X; a union: the value
    as is when it is one of the members, else the first member it converts to.
    """
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        if any(_is_instance(value, member) for member in args):
            return value
        converted = (coerce(value, member) for member in args if member is not type(None))
        return next((c for c in converted if c is not MISMATCH), MISMATCH)
    if origin is list:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            return MISMATCH
        items = [coerce(item, args[0] if args else Any) for item in value]
        return MISMATCH if any(item is MISMATCH for item in items) else items
    if isinstance(value, bool) and kind is not bool:  # True is an int to Python, not to a user
        return MISMATCH
    if kind is bool and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is int and isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    if kind is float and isinstance(value, (int, str)):
        try:
            return float(value)
        except ValueError:
            return MISMATCH
    return value if _is_instance(value, kind) else MISMATCH


def _is_instance(value: Any, kind: Any) -> bool:
    if kind is type(None):
        return value is None
    if typing.get_origin(kind) is not None or not isinstance(kind, type):
        return False
    return isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)


def describe(kind: Any) -> str:
    """An annotated type in words, for error messages ("an integer (int)", "a list of str or null")."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(describe(member) for member in args)
    if origin is list:
        return f"a list of {getattr(args[0], '__name__', args[0])}" if args else "a list"
    words = {int: "an integer (int)", float: "a number (float)", bool: "true or false (bool)", str: "a string (str)",
             type(None): "null"}
    return words.get(kind, getattr(kind, "__name__", str(kind)))


def positive_int(method: str, name: str, value: Any) -> None:
    """Raise AdapterError unless value is a positive int."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise AdapterError(f"{method}: `{name}` must be a positive integer, got {value!r}.")


def one_of(method: str, name: str, value: Any, allowed: tuple) -> None:
    """Raise AdapterError unless value is one of allowed."""
    if value not in allowed:
        raise AdapterError(f"{method}: `{name}` must be one of {list(allowed)}, got {value!r}.")


__all__ = ["AdapterConfig", "field", "positive_int", "one_of"]
