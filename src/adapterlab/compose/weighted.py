"""Weighted merging / task arithmetic: `add_weighted_adapter` makes a new adapter from adapters attached to one
model, as PEFT's `add_weighted_adapter` does (its argument names, its combination types for LoRA, its IA3 sum).

    add_weighted_adapter(model, ["sst2", "boolq"], [1.0, 1.0], "both", combination_type="ties", density=0.5)

How each method combines (a method not listed is refused by name):

* lora: PEFT's combination types (`lora_combine.py`).
* ia3: PEFT's weighted sum of the vectors, sum_i w_i l_i, at every layer any of them scales (a layer only some
  scale sums those; PEFT's union of targets). A layer that one scales on its input and another on its output
  is refused.
* the bottleneck adapters, prompt, prefix and ptuning: the weighted sum of each parameter, sum_i w_i p_i, for
  adapters with the same options (so the same shapes and places); weights summing to 1 give a weighted average.
  Only combination_type="linear" is defined for them.

The new adapter is attached under `adapter_name` (frozen, and the only active adapter, as `load_adapter` leaves
one), is an ordinary adapter of its method (save_adapter / load_adapter / merge / export_peft work on it), and
is built only after every check passed; a failure detaches it and restores the active adapters.

Where this differs from PEFT, on purpose: combination_type defaults to "linear" (PEFT: "svd"); an existing
`adapter_name` is an error (PEFT returns silently); options the type does not use (density with linear, ...) are
refused (PEFT ignores them); density must be in (0, 1] (PEFT divides by zero at 0 for DARE); a weight per adapter
is required (PEFT's zip drops the extra ones). As in PEFT, a single adapter is always combined as "linear".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..core.config import AdapterConfig
from ..core.engine import active_adapters, adapter_names, detach, get_config, set_active
from ..core.site_hooks import HOST_ATTR, placed
from ..errors import AdapterError
from ..methods.lora import LoraConfig
from . import lora_combine
from .averaged import AVERAGED, add_average, add_ia3
from .options import CombineOptions, check_options, check_weights
from .placing import attach_union, union_paths


def add_weighted_adapter(model: nn.Module, adapters: Sequence[str], weights: Sequence[float], adapter_name: str,
                         combination_type: str = "linear", *, svd_rank: int | None = None,
                         svd_clamp: float | None = None, svd_full_matrices: bool | None = None,
                         svd_driver: str | None = None, density: float | None = None,
                         majority_sign_method: str | None = None) -> nn.Module:
    """Attach `adapter_name`, the combination of the named adapters with `weights` (see the module docstring).

    density: the fraction of entries kept by the ties / dare / magnitude_prune types (required by them).
    majority_sign_method: "total" (default) or "frequency", for the types that elect a sign (ties, dare_ties).
    svd_rank (default: the largest rank), svd_clamp (a quantile), svd_full_matrices (default True), svd_driver
    (CUDA only): for the "_svd" types. Returns `model`."""
    names = _check_names(model, adapters, adapter_name)
    weights = check_weights(weights, len(names))
    options = check_options(combination_type, density=density, majority_sign_method=majority_sign_method,
                            svd_rank=svd_rank, svd_clamp=svd_clamp, svd_full_matrices=svd_full_matrices,
                            svd_driver=svd_driver)
    if len(names) == 1:  # PEFT: one adapter is combined as "linear" whatever the type asked for
        options = CombineOptions("linear")
    configs = [get_config(model, n) for n in names]
    method = _one_method(configs, names)
    if method != "lora" and options.kind != "linear":
        raise AdapterError(f"combination_type={options.kind!r} is defined for LoRA (PEFT's types); {method} adapters "
                           "combine as the weighted sum of their parameters: use combination_type='linear'.")
    if options.driver is not None and _device_type(model, names[0]) != "cuda":
        raise AdapterError("svd_driver picks a cuSOLVER routine and works on CUDA only; these adapters are not on a "
                           "CUDA device, so leave svd_driver unset.")
    previous = active_adapters(model)
    was_trainable = all(a.trainable for n in previous for _, _, a in placed(model, n))
    try:
        if method == "lora":
            _add_lora(model, names, weights, adapter_name, configs, options)
        elif method == "ia3":
            add_ia3(model, names, weights, adapter_name, configs)
        else:
            add_average(model, names, weights, adapter_name, configs)
    except BaseException:
        if adapter_name in adapter_names(model):
            detach(model, adapter_name)
        if previous:
            set_active(model, previous, trainable=was_trainable)
        raise
    set_active(model, adapter_name, trainable=False)
    return model


def _check_names(model: nn.Module, adapters: Any, adapter_name: Any) -> list[str]:
    if isinstance(adapters, str) or not isinstance(adapters, Sequence) or not adapters:
        raise AdapterError(f"adapters must be a non-empty list of adapter names, got {adapters!r}.")
    names = list(adapters)
    for name in names:
        get_config(model, name)  # an unknown name: the error lists the model's adapters
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise AdapterError(f"Adapter(s) {twice} named more than once; name each once and add up its weights.")
    if not isinstance(adapter_name, str) or not adapter_name.isidentifier():
        raise AdapterError(f"adapter_name {adapter_name!r} must be a Python identifier, e.g. 'merged'.")
    if adapter_name in adapter_names(model):
        raise AdapterError(f"An adapter named {adapter_name!r} is already attached; pick another adapter_name or "
                           "detach it first.")
    return names


def _one_method(configs: list[AdapterConfig], names: list[str]) -> str:
    methods = {c.method for c in configs}
    if len(methods) > 1:
        pairs = ", ".join(f"{n} ({c.method})" for n, c in zip(names, configs))
        raise AdapterError(f"Adapters of different methods cannot be combined: {pairs}. Combine adapters of one "
                           "method.")
    method = methods.pop()
    if method not in ("lora", "ia3", *AVERAGED):
        raise AdapterError(f"{method} adapters cannot be combined by add_weighted_adapter: {REFUSED.get(method, '')}"
                           f"Combinable methods: lora, ia3, {', '.join(AVERAGED)}.")
    return method


REFUSED = {  # why a method is not combined, for its refusal
    "mosa": "a MoSA adapter is split into sparse modules while attached; save it (it saves as its plain base "
            "method), load that back, and combine the loaded adapters. ",
    "linear_probe": "it trains the model's head and final norm, which adapters of different tasks do not share. ",
    "bitfit": "it replaces the layers' biases; a weighted sum of biases is not defined here yet. ",
    "conformer": "its convolution module is not combined by a parameter sum here yet. ",
}


def _device_type(model: nn.Module, name: str) -> str:
    return next(p.device.type for _, _, a in placed(model, name) for p in a.parameters())


def _add_lora(model: nn.Module, names: list[str], weights: list[float], name: str, configs: list[AdapterConfig],
              options: CombineOptions) -> None:
    """PEFT's LoRA combination: the new rank, the adapter at the union of the layers, then each layer's A and B."""
    rank = lora_combine.new_rank(options.kind, [c.r for c in configs], options.svd_rank)
    paths = union_paths(model, names)
    first: LoraConfig = configs[0]
    attach_union(model, name, configs, paths,
                 lambda targets, layers: lora_combine.new_config(first, rank, targets, layers))
    for path, host, new in list(placed(model, name)):
        members = lora_combine.members_at(host, HOST_ATTR, names, weights)
        lora_combine.combine_site(options.kind, members, new, path, density=options.density,
                                  sign_method=options.sign_method, svd_clamp=options.svd_clamp,
                                  full_matrices=options.full_matrices, driver=options.driver)


__all__ = ["add_weighted_adapter"]
