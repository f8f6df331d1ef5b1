"""The evaluation protocols by name (generate, choice, classify) and the one rule for their options: an option
is read by the protocols that declare it, and refused by name, with the reason, by any other."""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from .choice import Choice
from .class_runner import Classify
from .loop import Protocol
from .runner import Generate

PROTOCOLS: dict[str, type[Protocol]] = {p.name: p for p in (Generate, Choice, Classify)}


def flag(name: str) -> str:
    """The command-line spelling of an option's argparse name: max_new_tokens -> --max-new-tokens."""
    return "--" + name.replace("_", "-")


def protocol_options(values: dict[str, Any], protocol: type[Protocol], why: str) -> dict[str, Any]:
    """The options `protocol` reads, from `values` (None: not given) with its defaults filled in. Options only
    other protocols read are refused when given, all named in one line, with `why` this one has no use for them."""
    given = [name for p in PROTOCOLS.values() for name in p.flags
             if name not in protocol.flags and values.get(name) is not None]
    given = list(dict.fromkeys(given))
    if given:
        readers = [p.title for p in PROTOCOLS.values() if any(name in p.flags for name in given)]
        verb, pronoun = ("apply", "them") if len(given) > 1 else ("applies", "it")
        raise UsageError(f"{', '.join(map(flag, given))} only {verb} to {' and '.join(readers)}, and {why}; "
                         f"drop {pronoun}.")
    return {name: default if values.get(name) is None else values[name] for name, default in protocol.flags.items()}
