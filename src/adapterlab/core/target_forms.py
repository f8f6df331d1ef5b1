"""The forms a `targets` option takes beside a list of names: a regex matched in full against module names, and
"all-linear"; and `exclude`, which takes out of the resolved targets what a regex or a list of names matches.

PEFT's forms (its `target_modules` str / "all-linear", `exclude_modules`), so that a PEFT user's settings place an
adapter on the same layers. One difference of spelling: PEFT reads any string as a regex, while adapterlab keeps a
string without regex characters a comma-separated list of names ("q,v", "q_proj"), as before.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from ..errors import AdapterError
from .layers import is_linear

ADAPTER_SLOT = "adapterlab"  # name of the ModuleDict that holds a layer's adapters (engine.HOST_ATTR)
ALL_LINEAR = "all-linear"
REGEX_CHARS = frozenset("\\^$*+?{}[]|()")  # a target string holding one of these is a regex
HEAD_NAMES = ("score", "classifier")  # classification heads all-linear leaves out (PEFT's SEQ_CLS_HEAD_NAMES)


def is_regex(text: str) -> bool:
    """Whether a target string is a regex (it holds a regex character) rather than names."""
    return any(c in REGEX_CHARS for c in text)


def target_form(option: str, value: Any, method: str) -> list[str] | str | None:
    """A `targets` or `exclude` value in its form: None, "all-linear" (targets only), a compiled-checked regex
    string, or a list of names (a string without regex characters split at commas)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if option == "targets" and text.lower() == ALL_LINEAR:
            return ALL_LINEAR
        if is_regex(text):
            try:
                re.compile(text)
            except re.error as exc:
                raise AdapterError(f"{method}: `{option}` {text!r} is not a valid regular expression ({exc}); "
                                   "fix the pattern.") from None
            return text
        value = [t.strip() for t in text.split(",") if t.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) and t for t in value):
        raise AdapterError(f"{method}: `{option}` must be a list of names, a regex or 'all-linear', got {value!r}.")
    value = list(value)
    if not value:
        raise AdapterError(f"{method}: `{option}` is empty; name at least one module or leave it unset.")
    regexes = [t for t in value if is_regex(t) or t.lower() == ALL_LINEAR]
    if regexes:
        raise AdapterError(f"{method}: `{option}` lists {regexes[0]!r} among names; a regex or 'all-linear' is the "
                           f"whole value (pass {option}={regexes[0]!r} alone, as a string).")
    return value


def module_names(model: nn.Module) -> list[str]:
    """The model's own module names (the root and adapters' modules left out)."""
    return [n for n, _ in model.named_modules() if n and ADAPTER_SLOT not in n.split(".")]


def regex_paths(model: nn.Module, pattern: str) -> list[str]:
    """The model's modules whose full name the regex matches in full (PEFT's str target_modules)."""
    regex = re.compile(pattern)
    return [n for n in module_names(model) if regex.fullmatch(n)]


def head_paths(model: nn.Module) -> set[str]:
    """The output layer and everything inside it: the model's output embeddings (a language model's lm_head) and
    a classification head (`score` / `classifier`, PEFT's SEQ_CLS_HEAD_NAMES, with its inner layers)."""
    heads = []
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    if isinstance(output, nn.Module):
        heads.append(output)
    heads += [m for m in (getattr(model, n, None) for n in HEAD_NAMES) if isinstance(m, nn.Module)]
    ids = {id(m) for m in heads}
    roots = [n for n, m in model.named_modules() if id(m) in ids]
    return {n for n, _ in model.named_modules() for root in roots if n == root or n.startswith(root + ".")}


def all_linear_paths(model: nn.Module) -> list[str]:
    """Every linear layer (nn.Linear, transformers' Conv1D) but the output head (`head_paths`): PEFT's all-linear."""
    heads, own = head_paths(model), set(module_names(model))
    return [n for n, m in model.named_modules() if is_linear(m) and n in own and n not in heads]


def excludes(name: str, exclude: list[str] | str) -> bool:
    """Whether `exclude` takes out module `name`: a regex matched in full, or a name equal to it or ending it
    after a dot (PEFT's exclude_modules)."""
    if isinstance(exclude, str):
        return re.fullmatch(exclude, name) is not None
    return any(name == e or name.endswith("." + e) for e in exclude)


__all__ = ["ALL_LINEAR", "all_linear_paths", "excludes", "head_paths", "is_regex", "regex_paths", "target_form"]
