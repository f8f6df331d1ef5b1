"""Help text of method options: `option_field()` declares a config field with its help (PEFT's `metadata={"help"}`),
`documented` ends a config class's docstring with its options, and `describe` renders one option."""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
from types import MappingProxyType
from typing import Any, TypeVar

T = TypeVar("T", bound=type)


def option_field(default: Any = dataclasses.MISSING, help: str = "", *, paper: str = "",
                 default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field carrying its help text (what it is) and, where it differs, the paper's or reference
    code's value (`paper`); the default is read from the field, so the help never restates it."""
    metadata = {"help": help, **({"paper": paper} if paper else {})}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def default_of(f: dataclasses.Field) -> Any:
    """The value a field takes when the option is not given."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def show(value: Any) -> str:
    """A default as a user types it: unset, true/false, q,v, 0.1."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "none"
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return str(value)


def type_name(f: dataclasses.Field) -> str:
    """The field's annotation as written ('int', 'float | str'), without the '| None' that means unset."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return text.replace(" | None", "").replace("None | ", "")


def describe(f: dataclasses.Field, default: Any = dataclasses.MISSING) -> str:
    """'<what it is>. Default: <value>. <paper's value>.' for one field (`default`: the value to show instead of
    the field's, or None to show none; an unset default goes unsaid where the help says what unset means)."""
    text = f.metadata.get("help", "")
    value = default_of(f) if default is dataclasses.MISSING else default
    if value is not None or (default is dataclasses.MISSING and "unset:" not in text):
        text += f". Default: {show(value)}"
    if f.metadata.get("paper"):
        paper = f.metadata["paper"]
        text += f". {paper[:1].upper()}{paper[1:]}"
    return text + "."


def options_section(cls: type) -> str:
    """The 'Options:' section of a config class's docstring, one entry per field."""
    lines = ["Options (keywords of `attach`; on the command line --name VALUE):", ""]
    for f in dataclasses.fields(cls):
        lines.append(f"{f.name} ({type_name(f)})")
        text = describe(f, default_targets(cls) if f.name == "targets" else dataclasses.MISSING)
        lines.extend(textwrap.wrap(text, 100, initial_indent="    ", subsequent_indent="    "))
    return "\n".join(lines)


def default_targets(cls: type) -> Any:
    """The targets a method adapts when `targets` is unset ("q,v"), or MISSING where it has none to show."""
    return list(getattr(cls, "default_targets", ())) or dataclasses.MISSING


def summary(cls: type) -> str:
    """The class docstring's first paragraph (without the generated options section)."""
    doc = cls.__dict__.get("_summary") or inspect.cleandoc(cls.__doc__ or "")
    return doc.split("\n\n")[0].replace("\n", " ")


def inherited_help(cls: type, name: str) -> str:
    """The help of field `name` on the nearest base class that gives one."""
    for base in cls.__mro__[1:]:
        f = getattr(base, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata.get("help"):
            return f.metadata["help"]
    return ""


def documented(cls: T) -> T:
    """Class decorator (put above @dataclass): a field that a subclass only re-defaults keeps its base's help,
    and the class docstring ends with the generated options section (what `help(config_class(m))` shows)."""
    for f in dataclasses.fields(cls):
        if not f.metadata.get("help"):
            f.metadata = MappingProxyType({**f.metadata, "help": inherited_help(cls, f.name)})
    cls._summary = inspect.cleandoc(cls.__doc__ or "")
    cls.__doc__ = f"{cls._summary}\n\n{options_section(cls)}"
    return cls
