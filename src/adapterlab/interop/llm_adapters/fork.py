"""LLM-Adapters' BOTTLENECK checkpoints (their fork of PEFT) as adapterlab's series / pfeiffer / parallel adapters.

Their tuner replaces each target linear layer by one of three kinds, chosen by the layer's name
(TRANSFORMERS_MODELS_TO_ADAPTER_TYPE_MAPPING, one table per family; a name has the same kind in every family):
"mh_adapter" runs the layer on x + s * up(act(down(x))) (adapterlab: `input_targets`), "output_adapter" adds
s * up(act(down(y))) to its output y (series), and with use_parallel_adapter every target gets y + s * f(x)
(parallel). use_adapterp names their AdapterP setting; their tuner places it by the same table, so it loads as
`pfeiffer` with the file's targets. Their projections have no biases, dropout sits on the adapter's input, and
"learned" scaling is a one-element parameter: `adapter_down`, `adapter_up`, `adapter_scaling` in the file are
adapterlab's `down`, `up`, `scaling`.
"""

from __future__ import annotations

from typing import Any

from ...errors import AdapterError

# Their per-family table, by layer name (llama, bloom, chatglm, gptj, gpt_neo, opt).
ADAPTER_TYPES = {
    "gate_proj": "mh_adapter", "up_proj": "mh_adapter", "down_proj": "output_adapter",
    "dense_h_to_4h": "mh_adapter", "dense_4h_to_h": "output_adapter",
    "fc_in": "mh_adapter", "fc_out": "output_adapter",
    "c_fc": "mh_adapter", "c_proj": "output_adapter",
    "fc1": "mh_adapter", "fc2": "output_adapter",
}
KEYS = {"adapter_down": "down", "adapter_up": "up", "adapter_scaling": "scaling"}


def fork_method(data: dict[str, Any]) -> str:
    """The adapterlab method their BottleneckConfig `data` loads as: parallel, pfeiffer or series."""
    if data.get("use_parallel_adapter"):  # their tuner checks it first: use_adapterp then plays no part
        return "parallel"
    return "pfeiffer" if data.get("use_adapterp") else "series"


def fork_options(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(method, options) of the adapterlab config that computes what their BottleneckConfig `data` built
    (target_modules already turned into this model's module names where it was a regex)."""
    if data.get("bias", "none") != "none":
        raise AdapterError(f"This LLM-Adapters bottleneck adapter trains the base model's biases (bias="
                           f"{data['bias']!r}), which adapterlab does not import; only bias='none' adapters.")
    targets = data.get("target_modules")
    if not targets:
        raise AdapterError("This LLM-Adapters bottleneck adapter_config.json has no target_modules; save the "
                           "adapter again with their finetune.py.")
    targets = [targets] if isinstance(targets, str) else list(targets)
    options = {"targets": targets, "size": data.get("bottleneck_size", 256),
               "activation": data.get("non_linearity", "tanh"), "dropout": data.get("adapter_dropout") or 0.0,
               "scaling": data.get("scaling", 1.0), "bias": False}
    method = fork_method(data)
    if method == "parallel":
        return method, options
    kinds = {t: ADAPTER_TYPES.get(t.rsplit(".", 1)[-1]) for t in targets}
    unknown = [t for t, kind in kinds.items() if kind is None]
    if unknown:
        raise AdapterError(f"LLM-Adapters' bottleneck places a series adapter only on {', '.join(ADAPTER_TYPES)}; "
                           f"this adapter_config.json targets {unknown[0]!r}, which their code cannot build. "
                           "Check the file's target_modules.")
    inputs = [t for t, kind in kinds.items() if kind == "mh_adapter"]
    return method, {**options, "input_targets": inputs or None}


def fork_key_to_ours(key: str) -> str:
    """adapterlab's state key for a key of their file (after load_peft strips `base_model.model.`)."""
    return ".".join(KEYS.get(part, part) for part in key.split("."))
