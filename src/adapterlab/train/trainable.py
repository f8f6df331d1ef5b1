"""What a run trains, chosen once: an adapter method (base frozen) or every weight (`FULL`, full fine-tuning).

`trainable_for(adapter)` turns the `--adapter` value into a `Trainable` strategy; the recipe, the config checks,
the Trainer's checkpoints and the run folder's final weights ask it instead of comparing the method's name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..core.checkpoint import load_members, write_adapter_files
from ..core.composition import is_composing
from ..core.engine import attach
from ..core.registry import config_class, make_config, method_names
from ..errors import AdapterError, UsageError
from ..models.quantize import is_quantized, prepare_for_kbit_training
from .checkpointing import save_head

FULL = "full"  # the --adapter value (and measure/compare method name) of full fine-tuning


@dataclass(frozen=True)
class AdapterTraining:
    """Train an adapter method's parameters (plus the task head, unless the method trains it itself)."""

    method: str
    full = False

    def check_options(self, options: dict[str, Any], flag_of: Callable[[str, str], str]) -> None:
        """Refuse options the method lacks (naming the methods that have them), then bad option values."""
        accepted = config_class(self.method).accepted_options(options)
        for name in sorted(set(options) - accepted):
            having = [m for m in method_names() if name in config_class(m).option_names()]
            owners = f"an option of {', '.join(having)}" if having else "not an option of any method"
            given = " / ".join(dict.fromkeys(flag_of(name, m) for m in having or [self.method]))
            raise AdapterError(f"{given} is {owners}, not of --adapter {self.method} (its options: "
                               f"{', '.join(flag_of(o, self.method) for o in sorted(accepted))}); drop it or "
                               "change --adapter.")

    def check_values(self, options: dict[str, Any]) -> None:
        """The option values too (MoSA's --base prompt), before the model is loaded; a composing method's members
        each need a folder (a run attaches nothing else)."""
        config = make_config(self.method, **options)
        if is_composing(config):
            bare = [n for n, path in config.member_paths().items() if path is None]
            if bare:
                raise AdapterError(f"--fuse {bare[0]}: give each adapter's folder, NAME=PATH (e.g. --fuse "
                                   f"{bare[0]}=runs/{bare[0]}); a training run attaches no other adapters.")

    def check_quantized(self, flag_given: str) -> None:
        """Adapters train in float32 on top of a quantized base: nothing to refuse."""

    def prepare(self, model: nn.Module, options: dict[str, Any], head_modules: Sequence[str],
                frozen_modules: Sequence[str] = ()) -> None:
        """Attach the adapter (base frozen) and unfreeze the task head unless the method trains it itself. A
        composing method (fusion) first gets its members loaded, frozen, from the folders its options name."""
        config = make_config(self.method, **options)
        if is_composing(config):
            load_members(model, config, "--fuse")
        attach(model, config)
        if is_quantized(model):
            prepare_for_kbit_training(model)
        if config_class(self.method).trains_head:  # linear_probe: the head trains through the adapter's deltas
            return
        for name in head_modules:
            model.get_submodule(name).requires_grad_(True)

    def save(self, model: nn.Module, folder: Path, head_modules: Sequence[str]) -> None:
        """The adapter files and the trained head (head.safetensors) into `folder`."""
        write_adapter_files(model, folder)
        if head_modules:
            save_head(model, folder, list(head_modules))


@dataclass(frozen=True)
class FullTraining:
    """Train every base weight but `frozen_modules`; the run folder then is a plain transformers model."""

    method: str = FULL
    full = True

    def check_options(self, options: dict[str, Any], flag_of: Callable[[str, str], str]) -> None:
        """Full fine-tuning has no adapter options."""
        if options:
            given = ", ".join("--" + k.replace("_", "-") for k in sorted(options))
            raise AdapterError(f"--adapter full trains every weight and takes no adapter options; drop {given}.")

    def check_values(self, options: dict[str, Any]) -> None:
        """No adapter, no option values to check."""

    def check_quantized(self, flag_given: str) -> None:
        """A quantized base is stored frozen: refuse training it in full."""
        raise UsageError(f"--adapter full trains every base weight, which {flag_given} stores quantized and "
                         "frozen; pick an adapter method (e.g. --adapter lora) or drop the flag.")

    def prepare(self, model: nn.Module, options: dict[str, Any], head_modules: Sequence[str],
                frozen_modules: Sequence[str] = ()) -> None:
        """Unfreeze every weight but `frozen_modules` (wav2vec2's feature encoder)."""
        if options:
            raise AdapterError(f"--adapter full takes no adapter options, got {sorted(options)}.")
        model.requires_grad_(True)
        for name in frozen_modules:
            model.get_submodule(name).requires_grad_(False)

    def save(self, model: nn.Module, folder: Path, head_modules: Sequence[str]) -> None:
        """The whole model, as save_pretrained writes it."""
        model.save_pretrained(folder)


Trainable = AdapterTraining | FullTraining


def trainable_for(adapter: str) -> Trainable:
    """The strategy of an `--adapter` value: `FULL` fine-tunes every weight, any other names a method."""
    return FullTraining() if adapter == FULL else AdapterTraining(adapter)


def is_full(adapter: Any) -> bool:
    """Whether a saved or given `--adapter` value means full fine-tuning."""
    return adapter == FULL


__all__ = ["FULL", "AdapterTraining", "FullTraining", "Trainable", "is_full", "trainable_for"]
