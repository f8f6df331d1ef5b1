"""What produced a set of predictions: the model's files, the adapter's weights, dtype and device, recorded in
eval_config.json so that a resumed run never appends one model's answers to another's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import try_to_load_from_cache
from torch import nn

from ..core.checkpoint import adapter_state_dict
from ..core.engine import active_adapters, get_config
from ..models.quantize import quantization_of

SMALL_FILE = 1 << 20  # files up to 1 MiB (configs, tokenizer files, weight indexes) are hashed whole
# What each key stands for, to say what changed when a resume is refused.
MEANINGS = {
    "model_files": "the model's files (folder, weights or tokenizer)",
    "adapter_weights": "the adapter's weights or settings",
    "dtype": "the model's dtype (--dtype)",
    "device": "the device (--device)",
    "quantization": "the base model's quantization (--load-8bit / --load-4bit)",
    "head_weights": "the run's trained classification head",
    "labels": "the run's labels",
    "run": "the run folder (--adapter-path)",
    "model": "the base model (--model)",
}


def files_identity(location: str | Path) -> str | None:
    """A digest of the files of a local model folder or file: small files by content, large ones (weights) by
    size and modification time; None when `location` is not on this machine."""
    path = Path(location).expanduser()
    if not path.exists():
        return None
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files:
        stat = file.stat()
        if stat.st_size <= SMALL_FILE:
            content = hashlib.sha256(file.read_bytes()).hexdigest()
        else:
            content = f"{stat.st_size}:{stat.st_mtime_ns}"
        digest.update(f"{file.name}\0{content}\n".encode())
    return f"sha256:{digest.hexdigest()[:16]}"


def hub_revision(repo_id: str) -> str | None:
    """The commit of the hub model `repo_id` in the local Hugging Face cache (what from_pretrained loaded)."""
    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return f"revision:{Path(cached).parent.name}" if isinstance(cached, str) else None


def model_files(location: str | Path | None) -> str | None:
    """The identity of the model at `location` (a local folder or file, or a hub id cached on this machine)."""
    if not location:
        return None
    return files_identity(location) or hub_revision(str(location))


def adapter_weights(model: nn.Module) -> str | None:
    """A digest of the active adapters' settings and values as evaluated; None when no adapter is active."""
    names = active_adapters(model)
    if not names:
        return None
    digest = hashlib.sha256()
    for name in names:
        digest.update(json.dumps(get_config(model, name).to_dict(), sort_keys=True, default=str).encode())
        for key, tensor in sorted(adapter_state_dict(model, name).items()):
            digest.update(key.encode())
            digest.update(tensor.detach().to("cpu").reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()[:16]}"


def module_weights(model: nn.Module, paths: list[str]) -> str | None:
    """A digest of the values of the modules at `paths` (e.g. a classification head trained beside an adapter)."""
    if not paths:
        return None
    digest = hashlib.sha256()
    for path in paths:
        for key, tensor in sorted(model.get_submodule(path).state_dict().items()):
            digest.update(f"{path}.{key}".encode())
            digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()[:16]}"


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """The identity of what generates: the files named by the model's name_or_path, the active adapters' weights,
    the dtype, the device type and the quantization (None for a dense model)."""
    parameter = next(model.parameters())
    return {
        "model_files": model_files(getattr(getattr(model, "config", None), "_name_or_path", None)),
        "adapter_weights": adapter_weights(model),
        "dtype": str(getattr(model, "dtype", parameter.dtype)).removeprefix("torch."),
        "device": parameter.device.type,
        "quantization": quantization_of(model),
    }
