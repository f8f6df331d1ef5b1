"""PEFT weight files, both kinds: `adapter_model.safetensors`, and the pickled `adapter_model.bin` that PEFT
before 0.3 and LLM-Adapters' fork of PEFT write.

A .bin is read with `torch.load(weights_only=True)` only: tensors and plain containers, never arbitrary
objects, so a checkpoint from elsewhere cannot run code when it loads; one that needs more is refused.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import AdapterError, CorruptFileError
from .files import group_file, read_safetensors

PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_BIN_NAME = "adapter_model.bin"
RESAVE_PEFT = "save the adapter again with peft (or restore the folder from a copy)"


def read_weights_only(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a pickled PEFT weight file, loaded with weights_only=True; anything else is refused."""
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = unpickler_reason(exc)
        if "Unsupported global" in reason:
            raise CorruptFileError(
                f"{path} needs more than tensors to load ({reason}); adapterlab reads .bin checkpoints with "
                "torch.load(weights_only=True) only and never unpickles other objects. Re-save its tensors alone "
                "(e.g. with safetensors.torch.save_file) and load that."
            ) from exc
        raise CorruptFileError(f"{path} is not a complete PyTorch weight file ({reason}); {RESAVE_PEFT}.") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CorruptFileError(f"{path} holds a {type(state).__name__}, not a dict of named tensors as PEFT saves; "
                               f"{RESAVE_PEFT}.")
    return state


def unpickler_reason(exc: BaseException) -> str:
    """The one line of a torch.load error that says what went wrong (its messages run over many lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].split(" was not an allowed", 1)[0].strip()
    first = lines[0] if lines else type(exc).__name__
    return first.split(". ", 1)[0][:160]


def read_peft_weights(path: str | os.PathLike, locate: Callable[[str | os.PathLike, str], Path]) -> dict:
    """The tensors of the PEFT adapter in `path` (a folder or hub id): adapter_model.safetensors, else
    adapter_model.bin. `locate(path, filename)` finds a file of the adapter or raises AdapterError."""
    local = Path(path)
    if local.is_dir():
        if not group_file(local, PEFT_WEIGHTS_NAME).is_file() and group_file(local, PEFT_BIN_NAME).is_file():
            return read_weights_only(group_file(local, PEFT_BIN_NAME))
        if not group_file(local, PEFT_WEIGHTS_NAME).is_file():
            raise AdapterError(f"{local} has neither {PEFT_WEIGHTS_NAME} nor {PEFT_BIN_NAME}; pass the folder "
                               "that PEFT's save_pretrained wrote.")
        return read_safetensors(group_file(local, PEFT_WEIGHTS_NAME), RESAVE_PEFT)
    try:
        return read_safetensors(locate(path, PEFT_WEIGHTS_NAME), RESAVE_PEFT)
    except AdapterError:  # a hub repository of an older PEFT holds the .bin only
        return read_weights_only(locate(path, PEFT_BIN_NAME))


def load_any_adapter(model: nn.Module, path: str | os.PathLike, name: str = "default") -> nn.Module:
    """Attach the adapter in `path`, saved by adapterlab (save_adapter) or by PEFT, LLM-Adapters' fork included
    (its adapter_config.json names a peft_type and no adapterlab method)."""
    from .checkpoint import load_adapter, load_peft, read_adapter_config

    saved = read_adapter_config(path)
    if "method" not in saved and "peft_type" in saved:
        return load_peft(model, path, name)
    return load_adapter(model, path, name)
