"""Saving and loading adapters: `adapter_config.json` + `adapter.safetensors`, PEFT format in and out.

Only adapter parameters are written, keyed by the host layer's path without the adapter name, so an
adapter can be loaded under any name. The config and the weights are replaced as one group (see
`files.replace_files`): an interrupted save leaves the old adapter or the new one, never new weights beside
an old config. Loading reads only the adapter's folder (or hub repository) and never unpickles anything.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __name__ as _pkg  # noqa: F401
from .adapter_fit import check_fit
from .engine import HOST_ATTR, attach, get_config, placed, planned_shapes, set_active
from ..errors import AdapterError, CorruptFileError, IncompatibleAdapterError
from ..files import group_file, read_json_object, read_safetensors, replace_files, write_atomic, write_json
from ..files import safetensors_shapes, write_safetensors
from ..interop.peft_files import PEFT_WEIGHTS_NAME, read_peft_weights
from .registry import config_from_dict
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


def _locate(path: str | os.PathLike, filename: str) -> Path:
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
    return read_json_object(_locate(path, CONFIG_NAME), RESAVE)


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
    """Attach the adapter saved in `path` (a folder or hub id) to `model` as `name`; frozen unless trainable."""
    saved = read_adapter_config(path)
    if "method" not in saved:
        if "peft_type" in saved:
            raise AdapterError(f"{path} holds a PEFT adapter; load it with adapterlab.load_peft(model, path).")
        raise AdapterError(f"{path}/{CONFIG_NAME} has no 'method'; it was not written by adapterlab.")
    _check_base(saved.get("base_model", {}), model, str(path))
    _refuse_outside_reads(saved, path)
    config = config_from_dict(saved, source=str(Path(path) / CONFIG_NAME))
    weights = _locate(path, WEIGHTS_NAME)
    # the header's shapes against what the config builds on the meta device, before any module is allocated
    check_fit(planned_shapes(model, config, attach_options.get("architecture")),
              safetensors_shapes(weights, RESAVE), str(path))
    state = read_safetensors(weights, RESAVE)
    attach(model, config, name=name, **attach_options)
    try:
        load_state(model, name, state, str(path))
    except Exception:
        from .engine import detach

        detach(model, name)
        raise
    set_active(model, name, trainable=trainable)
    return model


def export_peft(model: nn.Module, directory: str | os.PathLike, name: str = "default",
                dtype: torch.dtype | None = None) -> Path:
    """Write adapter `name` in PEFT's format, loadable by `peft.PeftModel.from_pretrained`; `dtype` casts its
    floating-point tensors (adapters train in float32 whatever the base model's dtype).

    LoRA and IA3 write their tensors; prompt tuning, P-tuning and prefix tuning write what PEFT saves for
    them, the virtual tokens or prefixes their encoders compute (`methods/peft_prompts.py`)."""
    config = get_config(model, name).saved_as()  # MoSA-LoRA exports its merged LoRA
    to_peft = getattr(config, "to_peft", None)
    if to_peft is None:
        raise AdapterError(f"{config.method} has no PEFT counterpart to export to; use save_adapter instead.")
    sites = [a._site for _, _, a in placed(model, name)]
    peft_config = to_peft(model, sites)
    peft_config.setdefault("base_model_name_or_path", base_model_info(model).get("name_or_path"))
    if hasattr(config, "peft_state"):
        state = config.peft_state(model, sites)
    else:
        state = {f"base_model.model.{k}": v.detach().cpu().contiguous()
                 for k, v in adapter_state_dict(model, name, collapsed=True).items()}
    if any(t.is_meta for t in state.values()):
        raise AdapterError("The adapter lives on the meta device and has no values to export; load real weights first.")
    prefix = getattr(config, "peft_prefix", "base_model.model.")
    for head in peft_config.get("modules_to_save") or []:  # e.g. the classifier PEFT keeps beside a SEQ_CLS adapter
        for key, tensor in model.get_submodule(head).state_dict().items():
            state[f"{prefix}{head}.{key}"] = tensor.detach().cpu().contiguous()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    directory = Path(directory)

    def build(stage: Path) -> None:
        write_safetensors(stage / PEFT_WEIGHTS_NAME, state)
        write_json(stage / CONFIG_NAME, peft_config)

    replace_files(directory, build)
    return directory


def load_peft(model: nn.Module, path: str | os.PathLike, name: str = "default", *, trainable: bool = False) -> nn.Module:
    """Attach a PEFT adapter folder (adapter_config.json + adapter_model.safetensors or .bin) to `model`.

    LoRA, IA3, prompt tuning, P-tuning and prefix tuning; and LLM-Adapters' fork of PEFT: its LORA,
    PREFIX_TUNING and BOTTLENECK adapters (`methods/bottleneck_peft.py`), from adapter_model.bin. PEFT saves the last three as the virtual tokens
    (prefixes) they compute, without their encoders, so a P-tuning adapter loads as a prompt adapter and a
    prefix saved with prefix_projection as a plain prefix, each with PEFT's outputs.

    Whole modules PEFT saved beside the adapter (`modules_to_save`, e.g. a classifier head) overwrite the
    model's own modules: they are part of the trained model, and `detach` does not restore them.
    """
    saved = read_adapter_config(path)
    peft_type = saved.get("peft_type")
    from .registry import METHODS, config_class

    importable = {getattr(config_class(m), "peft_type", None): config_class(m) for m in METHODS}
    importable = {t: cls for t, cls in importable.items() if t and hasattr(cls, "from_peft")}
    if peft_type not in importable:
        raise AdapterError(f"{path}: PEFT adapter type {peft_type!r} cannot be imported; adapterlab imports "
                           f"{', '.join(sorted(importable))}.")
    config = importable[peft_type].from_peft(_peft_patterns_to_paths(model, saved, str(path)))
    if hasattr(config, "check_peft_model"):  # e.g. prefix tuning of an encoder, which PEFT computes otherwise
        config.check_peft_model(model)
    raw = read_peft_weights(path, _locate)  # .safetensors, or a .bin read as weights only
    prefix = getattr(config, "peft_prefix", "base_model.model.")
    state = {}
    for key, tensor in raw.items():
        key = key.removeprefix(prefix)
        state[config.peft_key_to_ours(key) if hasattr(config, "peft_key_to_ours") else key] = tensor
    heads = _split_heads(model, state, saved.get("modules_to_save") or [], str(path))
    attach(model, config, name=name)
    try:
        load_state(model, name, state, str(path))
    except Exception:
        from .engine import detach

        detach(model, name)
        raise
    current = model.state_dict()  # tensors that share storage with the model's parameters and buffers
    with torch.no_grad():
        for key, tensor in heads.items():
            current[key].copy_(tensor.to(current[key].dtype))
    set_active(model, name, trainable=trainable)
    return model


def _peft_patterns_to_paths(model: nn.Module, saved: dict[str, Any], where: str) -> dict[str, Any]:
    """`saved` with each string target_modules / feedforward_modules (a regex PEFT full-matches against
    module names) replaced by the list of this model's modules it matches."""
    names = [n for n, _ in model.named_modules() if n and HOST_ATTR not in n.split(".")]
    out = dict(saved)
    for key in ("target_modules", "feedforward_modules"):
        pattern = saved.get(key)
        if isinstance(pattern, str):
            try:
                regex = re.compile(pattern)
            except re.error as exc:
                raise CorruptFileError(f"{Path(where) / CONFIG_NAME}: {key} {pattern!r} is not a valid regular "
                                       f"expression ({exc}); fix it in the file, or save the adapter again with peft.") from exc
            out[key] = [n for n in names if regex.fullmatch(n)]
            if key == "target_modules" and not out[key]:
                raise IncompatibleAdapterError(
                    f"The PEFT adapter in {where} targets modules matching {pattern!r}, and no module of this "
                    "model matches; load it into the base model it was trained on."
                )
    return out


def _split_heads(model: nn.Module, state: dict[str, torch.Tensor], modules: list[str], where: str) -> dict:
    """Take out of `state` the whole-module weights PEFT saved for `modules_to_save` (e.g. a SEQ_CLS
    classifier head trained beside the adapter); load_peft copies them into the model's own modules."""
    if not modules:
        return {}
    base = {k: v for k, v in model.state_dict().items() if HOST_ATTR not in k.split(".")}
    heads = {}
    for key in list(state):
        owner = key.rsplit(".", 1)[0]
        if any(owner == m or owner.endswith("." + m) for m in modules):
            tensor = state.pop(key)
            if key not in base or base[key].shape != tensor.shape:
                raise IncompatibleAdapterError(
                    f"The PEFT adapter in {where} saves module weight {key} (modules_to_save={modules}), which this "
                    "model lacks or has in another shape; load it into the model class it was trained with."
                )
            heads[key] = tensor
    return heads


__all__ = ["save_adapter", "load_adapter", "export_peft", "load_peft", "adapter_state_dict", "write_adapter_files",
           "write_atomic", "write_json", "HOST_ATTR"]
