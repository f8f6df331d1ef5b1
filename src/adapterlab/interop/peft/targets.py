"""Which modules a saved PEFT adapter sits on, decided as PEFT decides it (`check_target_module_exists` and
`_maybe_include_all_linear_layers` in peft/tuners/tuners_utils.py), so that `load_peft` places it on exactly
the layers PEFT would, whatever form its target_modules / exclude_modules / layers_to_transform take."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from ...core.checkpoint import CONFIG_NAME
from ...core.layers import is_linear
from ...core.target_forms import ALL_LINEAR, HEAD_NAMES, excludes, module_names
from ...errors import CorruptFileError, IncompatibleAdapterError

CONSUMED = ("exclude_modules", "layers_to_transform", "layers_pattern")  # folded into the list of paths


def peft_paths(model: nn.Module, saved: dict[str, Any], where: str) -> dict[str, Any]:
    """`saved` with target_modules the exact module paths PEFT adapts in `model` (exclude_modules,
    layers_to_transform and layers_pattern applied, then dropped), and feedforward_modules (IA3) those of them it
    names."""
    out = dict(saved)
    names = module_names(model)
    targets = saved.get("target_modules")
    if targets is not None:
        _check_regexes(saved, where)
        if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
            targets = _peft_all_linear(model, saved.get("task_type"))
        protected = list(saved.get("modules_to_save") or [])
        if saved.get("task_type") == "SEQ_CLS":
            protected += HEAD_NAMES  # what PEFT adds to modules_to_save for SEQ_CLS
        rules = {**saved, "target_modules": targets}
        out["target_modules"] = [n for n in names if _peft_targets(rules, protected, n)]
        if not out["target_modules"]:
            raise IncompatibleAdapterError(
                f"The PEFT adapter in {where} targets modules matching {saved['target_modules']!r} (exclude_modules "
                f"{saved.get('exclude_modules')!r}), and no module of this model matches; load it into the base "
                "model it was trained on.")
        for key in CONSUMED:
            out.pop(key, None)
    feedforward = saved.get("feedforward_modules")
    if feedforward and targets is not None:  # IA3's: a regex matched in full, or names a path ends with (no dot)
        out["feedforward_modules"] = [
            n for n in out["target_modules"]
            if (re.fullmatch(feedforward, n) if isinstance(feedforward, str) else any(n.endswith(f) for f in feedforward))]
    return out


def _check_regexes(saved: dict[str, Any], where: str) -> None:
    """A CorruptFileError naming the file for a string option that is not a valid regex."""
    for key in ("target_modules", "exclude_modules", "feedforward_modules"):
        pattern = saved.get(key)
        if isinstance(pattern, str):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise CorruptFileError(f"{Path(where) / CONFIG_NAME}: {key} {pattern!r} is not a valid regular "
                                       f"expression ({exc}); fix it in the file, or save the adapter again with "
                                       "peft.") from exc


def _peft_all_linear(model: nn.Module, task_type: str | None) -> list[str]:
    """PEFT's all-linear: every nn.Linear / Conv1D but the output embeddings, or, where a model has none and the
    task is SEQ_CLS, its first classifier head found (score, then classifier)."""
    linear = [n for n, m in model.named_modules() if is_linear(m)]
    head = None
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    if output is None and task_type == "SEQ_CLS":
        output = next((getattr(model, n) for n in HEAD_NAMES if getattr(model, n, None) is not None),
                      None)
    if output is not None:
        head = next(n for n, m in model.named_modules() if m is output)
    return [n for n in linear if n != head]


def _peft_targets(saved: dict[str, Any], protected: list[str], name: str) -> bool:
    """Whether PEFT adapts module `name`: excluded (exclude_modules, then modules_to_save) or else targeted."""
    exclude = saved.get("exclude_modules")
    if exclude and excludes(name, exclude):
        return False
    if any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in protected):
        return False
    targets = saved["target_modules"]
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    if name in targets:
        return True
    if not any(name.endswith("." + t) for t in targets):
        return False
    return _in_layers(saved.get("layers_to_transform"), saved.get("layers_pattern"), name)


def _in_layers(layers: int | list[int] | None, pattern: str | list[str] | None, name: str) -> bool:
    """PEFT's layers_to_transform: the first number after a list name (`layers_pattern`, or any) is the layer."""
    if layers is None or (isinstance(layers, list) and not layers):
        return True
    match = None
    if not pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        for part in [pattern] if isinstance(pattern, str) else pattern:
            match = re.match(rf"(?:^|.*?\.){part}\.(?P<idx>\d+)\.", name)
            if match:
                break
    if match is None:
        return False
    index = int(match.group("idx"))
    return index == layers if isinstance(layers, int) else index in layers


__all__ = ["peft_paths"]
