"""merge_and_unload: fold adapters into the base weights and leave a plain transformers model behind.

`merge_and_unload(model)` merges the active adapters (refusing methods that cannot merge, with the reason),
then removes every adapter module, hook and `adapterlab_*` attribute, as PEFT's merge_and_unload does: the
model's state dict then has the base model's keys only, and `save_pretrained` writes an ordinary checkpoint.
`save_merged` writes such a model and its tokenizer (or processor) as one new folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from .engine import active_adapters, adapter_names, detach, merge
from ..errors import AdapterError, UsageError
from ..files import PENDING, replace_files, write_new_folder
from .site_hooks import HOST_ATTR, placed

# attributes the engine keeps on a model that carries adapters (engine.py, site_hooks.py, stochastic.py)
ENGINE_ATTRIBUTES = ("adapterlab_configs", "adapterlab_active", "adapterlab_installs", "adapterlab_hooks_mode")


def merge_and_unload(model: nn.Module, names: str | list[str] | None = None) -> nn.Module:
    """Merge the active (or named) adapters into the base weights, then remove all adapters; returns `model`.

    Adapters that are attached but not merged (inactive ones) are removed without affecting the weights,
    as in PEFT. Raises NotMergeableError (nothing changed) for a method that cannot merge."""
    if not adapter_names(model):
        raise AdapterError("merge_and_unload: this model carries no adapter; attach or load one first.")
    names = active_adapters(model) if names is None else names
    merge(model, names)  # all or nothing; refuses non-mergeable methods by name
    for name in adapter_names(model):
        for _, _, adapter in placed(model, name):
            adapter.forget_fold()  # keep the merged weights: detach must not subtract the adapter again
        detach(model, name)
    for attribute in ENGINE_ATTRIBUTES:
        model.__dict__.pop(attribute, None)
    left = [key for key in model.state_dict() if HOST_ATTR in key.split(".")]
    if left:  # detach removes every adapter module; this guards the promise the saved folder makes
        raise AdapterError(f"merge_and_unload left adapter entries {left[:2]} in the model; please report this.")
    return model


def save_merged(model: nn.Module, directory: str | os.PathLike, processor: Any = None) -> Path:
    """Write a merged model (no adapters left, see merge_and_unload) and its tokenizer/processor to the new
    folder `directory` with save_pretrained, all at once: a failure leaves no folder behind."""
    directory = Path(directory)
    check_new_folder(directory, "save_merged")
    write_new_folder(directory, _merged_files(model, processor))
    return directory


def save_merged_into(model: nn.Module, directory: Path, processor: Any = None,
                     record: Callable[[list[str]], None] | None = None) -> Path:
    """save_merged into an existing folder that the caller holds (an export's locked --merged folder), the files
    replaced as one group; record(names) is called with their names before any is moved into place."""

    def build(stage: Path) -> None:
        _merged_files(model, processor)(stage)
        if record is not None:
            record([p.name for p in stage.iterdir()] + [PENDING])

    replace_files(directory, build)
    return directory


def _merged_files(model: nn.Module, processor: Any) -> Callable[[Path], None]:
    """The function that writes the merged model and its processor into a staging folder."""
    if adapter_names(model) or any(HOST_ATTR in n.split(".") for n, _ in model.named_modules()):
        raise AdapterError("save_merged: the model still carries adapters; call merge_and_unload(model) first.")

    def build(stage: Path) -> None:
        model.save_pretrained(stage)
        if processor is not None:
            processor.save_pretrained(stage)

    return build


def check_new_folder(directory: Path, who: str) -> None:
    """Refuse an output path that is a file or a folder with files in it (a merged model is a whole folder)."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UsageError(f"{who}: {directory} already exists and is not an empty folder; choose a new folder "
                         "or remove it first (a merged model is written as a whole folder).")
