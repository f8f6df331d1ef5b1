"""Weighted sums of whole adapters' parameters: IA3 as PEFT's `IA3Model.add_weighted_adapter` does it, and the
parameter-by-parameter sum for methods whose adapters of equal options share every shape (bottlenecks, prompts)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..core.checkpoint import adapter_state_dict
from ..core.config import AdapterConfig
from ..core.engine import attach
from ..core.site_hooks import HOST_ATTR, placed
from ..errors import AdapterError
from ..methods.ia3 import IA3Config
from .placing import attach_union, union_paths

# methods combined as sum_i w_i p_i, parameter by parameter, when their options are equal
AVERAGED = ("series", "houlsby", "pfeiffer", "parallel", "scaled_parallel", "adaptformer", "prompt", "prefix",
            "ptuning")


@torch.no_grad()
def add_ia3(model: nn.Module, names: list[str], weights: list[float], name: str,
            configs: list[AdapterConfig]) -> None:
    """PEFT's IA3 combination: at each layer any adapter scales, the new vector is sum_i w_i l_i over those there
    (a layer only some scale gets only their terms, not the ones-vector of the others)."""
    paths = union_paths(model, names)
    feedforward = {}
    for path, _, adapter in placed(model):
        if adapter._name in names:
            if feedforward.setdefault(path, adapter.feedforward) != adapter.feedforward:
                raise AdapterError(f"ia3: at {path!r} some of {names} scale the layer's input (feed-forward) and "
                                   "others its output; such vectors have different shapes and do not add. Combine "
                                   "adapters that agree on `feedforward`.")
    scaled_in = [p for p in paths if feedforward[p]]
    shared_ff = {tuple(c.feedforward) if c.feedforward is not None else None for c in configs}

    def make(targets: list[str] | None, layers: list[int] | None) -> IA3Config:
        exact = targets == paths and layers is None
        return IA3Config(targets=targets, layers=layers,
                         feedforward=scaled_in if exact or len(shared_ff) > 1 else configs[0].feedforward)

    attach_union(model, name, configs, paths, make)
    for path, host, new in placed(model, name):
        if new.feedforward != feedforward[path]:  # the shared options placed it otherwise: a bug, not a user error
            raise AssertionError(f"ia3 combination placed {path!r} with feedforward={new.feedforward}")
        there = host._modules[HOST_ATTR]
        new.ia3_l.zero_()
        for member, weight in zip(names, weights):
            if member in there:
                new.ia3_l += there[member].ia3_l * weight


@torch.no_grad()
def add_average(model: nn.Module, names: list[str], weights: list[float], name: str,
                configs: list[AdapterConfig]) -> None:
    """sum_i w_i p_i for every parameter, for adapters whose options (so places and shapes) are all equal."""
    first = configs[0].to_dict()
    for other, config in zip(names[1:], configs[1:]):
        differ = sorted(k for k in set(first) | set(config.to_dict()) if first.get(k) != config.to_dict().get(k))
        if differ:
            raise AdapterError(f"{config.method} adapters combine parameter by parameter, so their options must be "
                               f"equal; {names[0]!r} and {other!r} differ in {', '.join(differ)}. Combine adapters "
                               "trained with the same options.")
    states = [adapter_state_dict(model, n) for n in names]
    attach(model, copy.deepcopy(configs[0]), name)
    target = adapter_state_dict(model, name)
    if any(set(s) != set(target) or any(s[k].shape != target[k].shape for k in target) for s in states):
        raise AdapterError(f"The {configs[0].method} adapters {names} do not share their layers and shapes (one was "
                           "attached with another architecture or dtype?); combine adapters placed alike.")
    for key, tensor in target.items():
        total = sum(s[key].to(torch.float32) * w for s, w in zip(states, weights))
        tensor.copy_(total.to(tensor.dtype))


__all__ = ["AVERAGED", "add_average", "add_ia3"]
