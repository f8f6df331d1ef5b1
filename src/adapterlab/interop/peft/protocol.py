"""The one protocol a method implements to be exported to and imported from PEFT, and the helpers it uses.

`export_peft` and `load_peft` (`transfer.py`) know no method by name: they read a method's PEFT type from its facts
and call the `PeftMethod` hooks of its config. Adding PEFT interop for a method means subclassing `PeftMethod` in
its method file and implementing `from_peft` (import) and `to_peft` (export).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from ...core.checkpoint import collapsed_state
from ...core.site_hooks import placed_at
from ...core.sites import Site
from ...errors import AdapterError

PEFT_MODEL_PREFIX = "base_model.model."  # PEFT keys a tuner's tensors by base_model.model.<module path>


class PeftMethod(ABC):
    """PEFT interop of one adapter method, mixed into its config class (`class LoraConfig(PeftMethod,
    AdapterConfig)`); `peft_type` is also one of the method's facts (`core.config.facts_of`)."""

    peft_type: ClassVar[str]  # PEFT's name of the method: adapter_config.json's peft_type ("LORA", "IA3", ...)
    peft_prefix: ClassVar[str] = PEFT_MODEL_PREFIX  # what PEFT puts before the keys of its weight file

    @classmethod
    @abstractmethod
    def from_peft(cls, data: dict[str, Any]) -> Any:
        """The adapterlab config computing what PEFT's adapter_config.json `data` describes (string targets
        already turned into this model's module names); refuse by name what adapterlab cannot compute."""

    def to_peft(self, model: nn.Module, sites: list[Site]) -> dict[str, Any]:
        """PEFT's adapter_config.json for this adapter placed at `sites` of `model`; import-only methods (their
        fork's BOTTLENECK) keep this refusal."""
        raise AdapterError(f"{getattr(self, 'method', type(self).__name__)} has no PEFT counterpart to export to; "
                           "use save_adapter instead.")

    def peft_state(self, model: nn.Module, sites: list[Site]) -> dict[str, torch.Tensor]:
        """The tensors of PEFT's weight file, keys with `peft_prefix`: by default the placed modules' own (collapsed,
        as `save_adapter` writes them), under their host layer's path."""
        state = {}
        for site in sites:
            for key, tensor in collapsed_state(placed_at(model, site)).items():
                name = f"{site.path}.{key}" if site.path else key
                state[f"{PEFT_MODEL_PREFIX}{name}"] = tensor.detach().cpu().contiguous()
        return state

    @staticmethod
    def peft_key_to_ours(key: str) -> str:
        """adapterlab's state key for a key of PEFT's weight file (after `peft_prefix` is stripped)."""
        return key

    def check_peft_model(self, model: nn.Module) -> None:
        """Refuse a model PEFT runs this adapter on differently from adapterlab (prefix tuning of an encoder);
        most methods run the same everywhere, so the default accepts every model."""
        return None


def exports_to_peft(config: Any) -> bool:
    """Whether a config (or config class) can be written in PEFT's format: it implements `PeftMethod.to_peft`
    (their fork's BOTTLENECK only imports)."""
    cls = config if isinstance(config, type) else type(config)
    return issubclass(cls, PeftMethod) and cls.to_peft is not PeftMethod.to_peft


def refuse_peft_options(kind: str, data: dict, names: tuple[str, ...]) -> None:
    """Raise AdapterError naming every option in `names` that a PEFT config sets (non-empty, non-false)."""
    used = [name for name in names if data.get(name)]
    if used:
        raise AdapterError(
            f"This PEFT {kind} adapter uses {', '.join(used)}, which adapterlab does not import (the result "
            f"would compute something else). Load it with peft itself, or retrain it without those options."
        )


def regex_of_paths(paths: Iterable[str]) -> str:
    """A PEFT target_modules regex (PEFT full-matches it) naming exactly these module paths."""
    return "(" + "|".join(re.escape(p) for p in paths) + ")"


def peft_targets(value: str | list[str]) -> list[str]:
    """adapterlab targets from PEFT's target_modules: a list of name suffixes, or a regex of the plain
    alternation form `(a\\.b|c\\.d)` that `regex_of_paths` writes. Other regexes are refused by name."""
    if not isinstance(value, str):
        return list(value)
    body = value.strip()
    body = body[1:] if body.startswith("^") else body
    body = body[:-1] if body.endswith("$") else body
    if body.startswith("(") and body.endswith(")"):
        body = body[1:-1]
    if not body:
        return []
    names = [re.sub(r"\\(.)", r"\1", part) for part in body.split("|")]
    if not all(re.fullmatch(r"[\w.\-]+", name) for name in names):
        raise AdapterError(
            f"PEFT target_modules {value!r} is a general regular expression; adapterlab imports a list of "
            "module names or an alternation of exact module paths. Rewrite it as a list of names."
        )
    return names


def peft_heads(model: nn.Module) -> list[str] | None:
    """The classifier head PEFT saves beside a SEQ_CLS adapter (its modules_to_save), or None.

    PEFT always restores a sequence classifier's head from the adapter file, so the export carries the
    head this model computes with (trained or not)."""
    if peft_task_type(model) != "SEQ_CLS":
        return None
    heads = [name for name in ("classifier", "score") if isinstance(getattr(model, name, None), nn.Module)]
    return heads or None


def peft_task_type(model: nn.Module) -> str | None:
    """PEFT's task_type for a transformers model class, or None for a bare model."""
    name = type(model).__name__
    for suffix, task in (("ForCausalLM", "CAUSAL_LM"), ("ForSequenceClassification", "SEQ_CLS")):
        if name.endswith(suffix):
            return task
    return None


__all__ = ["PEFT_MODEL_PREFIX", "PeftMethod", "exports_to_peft", "peft_heads", "peft_targets", "peft_task_type", "refuse_peft_options",
           "regex_of_paths"]
