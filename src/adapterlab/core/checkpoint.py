"""Saving and loading adapters: `adapter_config.json` + `adapter.safetensors` (PEFT's format: `interop/peft/`).

Only adapter parameters are written, keyed by the host layer's path without the adapter name, so an
adapter can be loaded under any name. The config and the weights are replaced as one group (see
`files.replace_files`): an interrupted save leaves the old adapter or the new one, never new weights beside
an old config. Loading reads only the adapter's folder (or hub repository) and never unpickles anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AdapterError, CorruptFileError, IncompatibleAdapterError
from ..files import group_file, read_json_object, read_safetensors, replace_files, write_atomic, write_json
from ..files import safetensors_shapes, write_safetensors
from .adapter_fit import check_fit
from .composition import is_composing, record_source
from .config import AdapterConfig
from .engine import HOST_ATTR, adapter_names, attach, detach, get_config, placed, planned_shapes, set_active
from .registry import config_from_dict
from .shared_params import shared_of, shared_state
from .sites import model_type_of

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"
FORMAT_VERSION = 1
RESAVE = "save the adapter again (or restore the folder from a copy)"


def base_model_info(model: nn.Module) -> dict[str, Any]:
    """What a saved adapter records about its base model, to refuse loading into another one."""
    config = getattr(model, "config", None)
    info = {"model_type": model_type_of(model), "name_or_path": getattr(config, "_name_or_path", None)}
    for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            info[key] = value
    return info


def adapter_state_dict(model: nn.Module, name: str = "default", collapsed: bool = False) -> dict[str, torch.Tensor]:
    """The parameters and buffers of adapter `name`, keyed '<host path>.<parameter>'. `collapsed`: as the plain
    adapter it saves as (layers with `collapsed_state`, such as MoSA's split layers, give their merged state)."""
    get_config(model, name)
    state = {}
    for path, _, adapter in placed(model, name):
        for key, tensor in (collapsed_state(adapter) if collapsed else adapter.state_dict()).items():
            state[f"{path}.{key}" if path else key] = tensor
    state.update(shared_state(shared_of(model, name)))  # the parameters all its sites share, once
    return state


def collapsed_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` with every submodule that can collapse replaced by its collapsed state."""
    collapsing = {prefix: m for prefix, m in module.named_modules() if prefix and hasattr(m, "collapsed_state")}
    state = {k: v for k, v in module.state_dict().items()
             if not any(k.startswith(prefix + ".") for prefix in collapsing)}
    for prefix, m in collapsing.items():
        state.update({f"{prefix}.{k}": v for k, v in m.collapsed_state().items()})
    return state


def write_adapter_files(model: nn.Module, folder: Path, name: str = "default") -> None:
    """Write adapter `name`'s weights and config into `folder` as they are (a staging folder: not atomic)."""
    config = get_config(model, name).saved_as()  # a method that collapses (MoSA) saves its plain adapter
    state = adapter_state_dict(model, name, collapsed=True)
    if any(t.is_meta for t in state.values()):
        raise AdapterError("The adapter lives on the meta device and has no values to save; load real weights first.")
    write_safetensors(folder / WEIGHTS_NAME, {k: v.detach().to("cpu").contiguous() for k, v in state.items()})
    data = {**config.to_dict(), "base_model": base_model_info(model), "adapterlab_format": FORMAT_VERSION}
    write_json(folder / CONFIG_NAME, data)


def save_adapter(model: nn.Module, directory: str | os.PathLike, name: str = "default") -> Path:
    """Write adapter `name` to `directory` (adapter_config.json + adapter.safetensors), both files as one."""
    directory = Path(directory)
    get_config(model, name)  # an unknown name fails before anything is created
    replace_files(directory, lambda stage: write_adapter_files(model, stage, name))
    return directory


def locate(path: str | os.PathLike, filename: str) -> Path:
    """A file of a saved adapter in a local folder or, failing that, a hub repository."""
    local = Path(path)
    if local.is_dir():
        file = group_file(local, filename)
        if not file.is_file():
            raise AdapterError(f"{local} has no {filename}; is it an adapter folder written by save_adapter?")
        return file
    if local.exists():
        raise AdapterError(f"{local} is a file; pass the folder that holds {CONFIG_NAME}.")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(str(path), filename))
    except Exception as exc:  # network errors, missing repos
        raise AdapterError(f"No adapter folder {str(path)!r} here, and fetching it from the hub failed: {exc}") from exc


def read_adapter_config(path: str | os.PathLike) -> dict[str, Any]:
    """The saved config of the adapter in `path` (a folder or hub id)."""
    return read_json_object(locate(path, CONFIG_NAME), RESAVE)


def _refuse_outside_reads(saved: dict[str, Any], path: str | os.PathLike) -> None:
    """Loading reads only the adapter's folder. A prompt adapter saved with init='text' keeps the token ids of
    its text; without them, rebuilding its config would load the tokenizer the file names (a download or a
    read anywhere on disk), so such a file is refused."""
    if saved.get("init") == "text" and saved.get("init_token_ids") is None:
        raise CorruptFileError(
            f"{Path(path) / CONFIG_NAME} has init='text' but no init_token_ids, so loading it would fetch the "
            f"tokenizer {saved.get('tokenizer')!r} it names; loading reads only the adapter folder. Save the "
            "adapter again with save_adapter (which records the ids), or set init to 'random' in the file."
        )


def _check_base(saved: dict[str, Any], model: nn.Module, where: str) -> None:
    ours = base_model_info(model)
    for key in ("model_type", "hidden_size", "num_hidden_layers"):
        if key in saved and key in ours and saved[key] != ours[key]:
            raise IncompatibleAdapterError(
                f"The adapter in {where} was made for a {saved.get('model_type')} model with {key}="
                f"{saved[key]}, but this model has {key}={ours[key]} (base model "
                f"{saved.get('name_or_path')!r}). Load it into the base model it was trained on."
            )


def load_state(model: nn.Module, name: str, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy saved tensors into adapter `name`, refusing missing, extra or mis-shaped entries."""
    expected = adapter_state_dict(model, name)
    check_fit({k: t.shape for k, t in expected.items()}, {k: t.shape for k, t in state.items()}, where)
    with torch.no_grad():
        for key, target in expected.items():
            if target.is_meta:
                raise AdapterError("Cannot load an adapter into a model on the meta device; load the base weights first.")
            target.copy_(state[key].to(target.dtype))


def load_adapter(
    model: nn.Module, path: str | os.PathLike, name: str = "default", *, trainable: bool = False, **attach_options: Any
) -> nn.Module:
    """Attach the adapter saved in `path` (a folder or hub id) to `model` as `name`; frozen unless trainable. A
    composing adapter (fusion) first gets the members it names that are not attached, from their recorded folders."""
    saved = read_adapter_config(path)
    if "method" not in saved:
        if "peft_type" in saved:
            raise AdapterError(f"{path} holds a PEFT adapter; load it with adapterlab.load_peft(model, path).")
        raise AdapterError(f"{path}/{CONFIG_NAME} has no 'method'; it was not written by adapterlab.")
    _check_base(saved.get("base_model", {}), model, str(path))
    _refuse_outside_reads(saved, path)
    config = config_from_dict(saved, source=str(Path(path) / CONFIG_NAME))
    loaded = load_members(model, config, str(path), **attach_options) if is_composing(config) else []
    try:
        _load_checked(model, path, name, config, trainable, attach_options)
    except Exception:  # a failed load leaves the model as it was: the members it loaded go too
        for member in reversed(loaded):
            detach(model, member)
        raise
    return model


def _load_checked(model: nn.Module, path: str | os.PathLike, name: str, config: AdapterConfig, trainable: bool,
                  attach_options: dict[str, Any]) -> None:
    """load_adapter's part after the config: the weights checked against what it builds, attached, activated."""
    weights = locate(path, WEIGHTS_NAME)
    # the header's shapes against what the config builds on the meta device, before any module is allocated
    check_fit(planned_shapes(model, config, attach_options.get("architecture")),
              safetensors_shapes(weights, RESAVE), str(path))
    state = read_safetensors(weights, RESAVE)
    attach_loaded(model, config, name, state, str(path), **attach_options)
    record_source(model, name, path)
    set_active(model, name, trainable=trainable)


def load_members(model: nn.Module, config: AdapterConfig, where: str, **attach_options: Any) -> list[str]:
    """Load (frozen) the members of composing `config` that are not attached yet, each from its recorded folder;
    refuse by name one that has none. Returns the names it loaded."""
    attached, loaded = set(adapter_names(model)), []
    try:
        for member, path in config.member_paths().items():
            if member in attached:
                continue
            if path is None:
                raise AdapterError(f"{where}: {config.method} composes adapter {member!r}, which is not attached and "
                                   f"has no saved folder; load it first: adapterlab.load_adapter(model, PATH, "
                                   f"{member!r}).")
            try:
                load_adapter(model, path, member, **attach_options)
            except AdapterError as exc:
                raise type(exc)(f"{where}: member adapter {member!r} ({path}): {exc}") from exc
            loaded.append(member)
    except Exception:
        for member in reversed(loaded):
            detach(model, member)
        raise
    return loaded


def attach_loaded(model: nn.Module, config: AdapterConfig, name: str, state: dict[str, torch.Tensor], where: str,
                  **attach_options: Any) -> None:
    """Attach `config` as `name` and copy the saved `state` into it; an adapter that does not fit is detached
    again, so that a failed load leaves the model as it was."""
    attach(model, config, name=name, **attach_options)
    try:
        load_state(model, name, state, where)
    except Exception:
        detach(model, name)
        raise


__all__ = ["save_adapter", "load_adapter", "load_members", "adapter_state_dict", "attach_loaded", "collapsed_state",
           "locate", "write_adapter_files", "write_atomic", "write_json", "HOST_ATTR"]
