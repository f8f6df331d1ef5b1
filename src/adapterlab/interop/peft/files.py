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

from ...errors import AdapterError, CorruptFileError
from ...files import group_file, read_safetensors

PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_BIN_NAME = "adapter_model.bin"
RESAVE_PEFT = "save the adapter again with peft (or restore the folder from a copy)"
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"  # pickle protocol 2 and later open with PROTO; torch.save's legacy format uses 2


def read_weights_only(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a pickled PEFT weight file, loaded with weights_only=True; anything else is refused.

    The refusals go by exception type, not by torch's wording (which changes between versions): the weights-only
    unpickler raises `pickle.UnpicklingError` for any object it will not build, and any other failure of a file
    that looks like a torch.save file means it is damaged."""
    check_torch_format(path)
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CorruptFileError(
            f"{path} holds objects other than tensors, and adapterlab never unpickles them (it reads .bin files with "
            "torch.load(weights_only=True) only); re-save the tensors alone (e.g. with safetensors.torch.save_file) "
            "and load that."
        ) from exc
    except Exception as exc:  # noqa: BLE001 (torch's loaders fail on damaged bytes with any type: EOF, Key, Index...)
        raise CorruptFileError(f"{path} is not a complete PyTorch weight file ({type(exc).__name__}"
                               f"{': ' + first_line(exc) if first_line(exc) else ''}); {RESAVE_PEFT}.") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CorruptFileError(f"{path} holds a {type(state).__name__}, not a dict of named tensors as PEFT saves; "
                               f"{RESAVE_PEFT}.")
    return state


def check_torch_format(path: Path) -> None:
    """Refuse a file that is neither of torch.save's formats: a zip archive (torch >= 1.6) or a pickle that opens
    with a PROTO opcode (the legacy format); e.g. a text file, which torch's unpickler fails on with stray errors."""
    with open(path, "rb") as file:
        head = file.read(4)
    if not head:
        raise CorruptFileError(f"{path} is empty, not a PyTorch weight file; {RESAVE_PEFT}.")
    if head != ZIP_MAGIC and head[:1] != PICKLE_PROTO:
        raise CorruptFileError(f"{path} is not a PyTorch weight file (it is neither a torch.save zip archive nor a "
                               f"pickle; it starts with {head!r}); {RESAVE_PEFT}.")


def first_line(exc: BaseException) -> str:
    """The first line of an error's message, cut short (torch's messages run over many lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:160] if lines else ""


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
