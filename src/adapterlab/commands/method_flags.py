"""The adapter method options of `adapterlab train`: one argument group per method (the methods of one file in
methods/ share one, as the bottleneck family), generated from the registry and each option's help metadata."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

from ..core.config import AdapterConfig
from ..core.option_help import default_of, describe, show, summary, type_name
from ..core.registry import METHODS, config_class

METAVARS = {"int": "INT", "float": "FLOAT", "bool": "BOOL", "str": "TEXT", "float | str": "VALUE"}


def families() -> list[list[str]]:
    """The registered methods, grouped by the file of methods/ that defines them, in registry order."""
    by_module: dict[str, list[str]] = {}
    for method in METHODS:
        by_module.setdefault(config_class(method).__module__, []).append(method)
    return list(by_module.values())


def field_of(method: str, name: str) -> dataclasses.Field | None:
    """Option `name` of `method`'s config, or None where it has no such option."""
    return {f.name: f for f in dataclasses.fields(config_class(method))}.get(name)


def metavar(f: dataclasses.Field) -> str:
    """INT, FLOAT, BOOL, TEXT, LIST, YAML: what the flag's value is."""
    kind = type_name(f)
    return METAVARS.get(kind, "LIST" if kind.startswith("list") else "YAML" if kind.startswith("dict") else "VALUE")


def spellings(name: str, owners: list[str], aliases: tuple[str, ...], taken: set[str]) -> tuple[list[str], list[str]]:
    """(shown, hidden) flags of an option: --dashed-name shown; the --underscored_name and the aliases work but
    stay out of the help. Where a training flag has the name (--split), each owner's --method-name is shown."""
    every = list(dict.fromkeys([f"--{name.replace('_', '-')}", f"--{name}", *aliases]))
    free = [s for s in every if s not in taken]
    prefixed = [f"--{method}-{name.replace('_', '-')}" for method in owners] if len(free) < len(every) else []
    shown = prefixed or free[:1]
    return shown, [s for s in free + prefixed if s not in shown]


def entry_help(name: str, methods: list[str], family: list[str], aliases: tuple[str, ...]) -> str:
    """An option's help within one group: what it is, its default (per method where they differ), the paper's
    value, the methods of the group it belongs to when not all, and the other methods that have it."""
    mine = [m for m in family if m in methods]
    first = field_of(mine[0], name)
    values = {m: default_of(field_of(m, name)) for m in mine}
    main = max(values.values(), key=list(values.values()).count)  # the most common; the first on a tie
    others = [f"{m}: {show(v)}" for m, v in values.items() if v != main]
    default = f"{show(main)} ({'; '.join(others)})" if others else main
    text = describe(first, default)
    if len(mine) < len(family):
        text = f"{', '.join(mine)}: {text}"
    elsewhere = [m for m in methods if m not in family]
    if elsewhere:
        text += f" Also an option of {', '.join(elsewhere)}."
    if aliases:
        text += f" LLM-Adapters spell it {', '.join(a for a in aliases if '_' in a)}."
    return text.replace("%", "%%")


def group_description(family: list[str]) -> str:
    """Each method's summary (its class docstring's first paragraph) and its default targets."""
    parts = []
    for method in family:
        cls = config_class(method)
        targets = f" Default targets: {','.join(cls.default_targets)}." if cls.default_targets else ""
        parts.append(f"{method}: {summary(cls)}{targets}" if len(family) > 1 else f"{summary(cls)}{targets}")
    return " ".join(parts).replace("%", "%%")


def add_method_groups(parser: argparse.ArgumentParser, aliases: dict[str, str],
                      flag_kwargs: Callable[[str], dict[str, Any]]) -> None:
    """One argument group for the options of every method, then one per method (file): a flag is registered in
    the first group that has it, and listed (display only) with that group's help in the later ones.

    `aliases`: other spellings -> option name (LLM-Adapters'); `flag_kwargs(name)`: add_argument's keywords for
    option `name` (dest, action, type, ...), the same for every spelling."""
    taken = {s for a in parser._actions for s in a.option_strings}
    owners: dict[str, list[str]] = {}
    for method in METHODS:
        for f in dataclasses.fields(config_class(method)):
            owners.setdefault(f.name, []).append(method)
    shared = [f.name for f in dataclasses.fields(AdapterConfig)]
    common = parser.add_argument_group(
        "adapter options of every method",
        "Each method's own options follow, one group per method. Every flag also takes underscores "
        "(--kernel_size); a flag of a method other than --adapter's is refused, naming the methods that have it.")
    groups = [(common, shared, list(METHODS))]
    for family in families():
        names = [f.name for m in family for f in dataclasses.fields(config_class(m)) if f.name not in shared]
        group = parser.add_argument_group(f"--adapter {' | '.join(family)}", group_description(family))
        groups.append((group, list(dict.fromkeys(names)), family))
    registered: set[str] = set()
    for group, names, family in groups:
        for name in names:
            spelled = tuple(f"--{form}" for alias, target in aliases.items() if target == name
                            for form in (alias.replace("_", "-"), alias))
            shown, hidden = spellings(name, owners[name], spelled, taken)
            text = entry_help(name, owners[name], family, spelled)
            var = metavar(field_of(owners[name][0], name))
            if name in registered:  # display only: the flag is parsed by the group that registered it
                group._group_actions.append(argparse.Action(shown, argparse.SUPPRESS, nargs="?", metavar=var,
                                                            help=text))
                continue
            registered.add(name)
            group.add_argument(*shown, metavar=var, help=text, **flag_kwargs(name))
            if hidden:
                group.add_argument(*hidden, help=argparse.SUPPRESS, **flag_kwargs(name))
