"""Where a combined adapter goes: at exactly the layers its adapters adapt (PEFT's union of their targets), with
their own targets where they share them (so a saved config reads as theirs), else with the layers' paths."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..core.config import AdapterConfig
from ..core.engine import attach, detach
from ..core.site_hooks import placed
from ..errors import AdapterError


def union_paths(model: nn.Module, names: list[str]) -> list[str]:
    """The host paths of the layers any of `names` adapts, in the model's module order."""
    wanted = set(names)
    return list(dict.fromkeys(path for path, _, a in placed(model) if a._name in wanted))


def attach_union(model: nn.Module, name: str, configs: list[AdapterConfig], paths: list[str],
                 make: Callable[[list[str] | None, list[int] | None], AdapterConfig]) -> None:
    """Attach `make(targets, layers)` as `name` at exactly the layers `paths`: with the adapters' own targets and
    layers where they all share them and these place it there, else with the paths themselves as targets.

    A first try that is undone puts torch's generators back as they were, so that the adapter's own init draws
    (Kaiming on LoRA's A, as PEFT's) happen once and a seeded DARE merge draws its masks from where PEFT's does."""
    shared = {(tuple(c.targets) if c.targets is not None else None, tuple(c.layers) if c.layers is not None else None)
              for c in configs}
    if len(shared) == 1:
        targets, layers = shared.pop()
        state = generator_states()
        try:
            attach(model, make(list(targets) if targets else None, list(layers) if layers else None), name)
        except AdapterError:
            pass
        else:
            if [p for p, _, _ in placed(model, name)] == paths:
                return
            detach(model, name)
        restore_generators(state)
    attach(model, make(list(paths), None), name)


def generator_states() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """torch's CPU generator state and, where CUDA is in use, every CUDA device's."""
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None


def restore_generators(state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


__all__ = ["attach_union", "union_paths"]
