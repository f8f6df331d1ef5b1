"""export_peft and load_peft: an adapter to PEFT's folder format and back, for every method that implements the
`PeftMethod` protocol (`protocol.py`); `load_any_adapter` takes either format."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ...core.checkpoint import CONFIG_NAME, attach_loaded, base_model_info, load_adapter, locate, read_adapter_config
from ...core.config import facts_of
from ...core.engine import HOST_ATTR, get_config, placed, set_active
from ...core.registry import METHODS, config_class
from ...errors import AdapterError, IncompatibleAdapterError
from ...files import replace_files, write_json, write_safetensors
from .files import PEFT_WEIGHTS_NAME, read_peft_weights
from .protocol import PeftMethod, exports_to_peft
from .targets import peft_paths


def export_peft(model: nn.Module, directory: str | os.PathLike, name: str = "default",
                dtype: torch.dtype | None = None) -> Path:
    """Write adapter `name` in PEFT's format, loadable by `peft.PeftModel.from_pretrained`; `dtype` casts its
    floating-point tensors (adapters train in float32 whatever the base model's dtype).

    LoRA and IA3 write their tensors; prompt tuning, P-tuning and prefix tuning write what PEFT saves for
    them, the virtual tokens or prefixes their encoders compute (`prompts.py`)."""
    config = get_config(model, name).saved_as()  # MoSA-LoRA exports its merged LoRA
    if not exports_to_peft(config):
        raise AdapterError(f"{config.method} has no PEFT counterpart to export to; use save_adapter instead.")
    sites = [a._site for _, _, a in placed(model, name)]
    peft_config = config.to_peft(model, sites)
    peft_config.setdefault("base_model_name_or_path", base_model_info(model).get("name_or_path"))
    state = config.peft_state(model, sites)
    if any(t.is_meta for t in state.values()):
        raise AdapterError("The adapter lives on the meta device and has no values to export; load real weights first.")
    prefix = config.peft_prefix
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
    PREFIX_TUNING and BOTTLENECK adapters (`interop/llm_adapters/fork.py`), from adapter_model.bin. PEFT saves the last three as the virtual tokens
    (prefixes) they compute, without their encoders, so a P-tuning adapter loads as a prompt adapter and a
    prefix saved with prefix_projection as a plain prefix, each with PEFT's outputs.

    Whole modules PEFT saved beside the adapter (`modules_to_save`, e.g. a classifier head) overwrite the
    model's own modules: they are part of the trained model, and `detach` does not restore them.
    """
    saved = read_adapter_config(path)
    peft_type = saved.get("peft_type")
    importable = {facts_of(config_class(m)).peft_type: config_class(m) for m in METHODS}
    importable = {t: cls for t, cls in importable.items() if t and issubclass(cls, PeftMethod)}
    if peft_type not in importable:
        raise AdapterError(f"{path}: PEFT adapter type {peft_type!r} cannot be imported; adapterlab imports "
                           f"{', '.join(sorted(importable))}.")
    config = importable[peft_type].from_peft(peft_paths(model, saved, str(path)))  # PEFT's own layers
    config.check_peft_model(model)  # e.g. prefix tuning of an encoder, which PEFT computes otherwise
    raw = read_peft_weights(path, locate)  # .safetensors, or a .bin read as weights only
    state = {config.peft_key_to_ours(key.removeprefix(config.peft_prefix)): tensor for key, tensor in raw.items()}
    heads = _split_heads(model, state, saved.get("modules_to_save") or [], str(path))
    attach_loaded(model, config, name, state, str(path))
    current = model.state_dict()  # tensors that share storage with the model's parameters and buffers
    with torch.no_grad():
        for key, tensor in heads.items():
            current[key].copy_(tensor.to(current[key].dtype))
    set_active(model, name, trainable=trainable)
    return model


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


def load_any_adapter(model: nn.Module, path: str | os.PathLike, name: str = "default") -> nn.Module:
    """Attach the adapter in `path`, saved by adapterlab (save_adapter) or by PEFT, LLM-Adapters' fork included
    (its adapter_config.json names a peft_type and no adapterlab method)."""
    saved = read_adapter_config(path)
    if "method" not in saved and "peft_type" in saved:
        return load_peft(model, path, name)
    return load_adapter(model, path, name)


__all__ = ["export_peft", "load_any_adapter", "load_peft"]
