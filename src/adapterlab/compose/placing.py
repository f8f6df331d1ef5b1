"""Where a combined adapter goes: at exactly the layers its adapters adapt (PEFT's union of their targets), with
their own targets where they share them (so a saved config reads as theirs), else with the layers' paths."""

from __future__ import annotations

from collections.abc import Callable

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
    layers where they all share them and these place it there, else with the paths themselves as targets."""
    shared = {(tuple(c.targets) if c.targets is not None else None, tuple(c.layers) if c.layers is not None else None)
              for c in configs}
    if len(shared) == 1:
        targets, layers = shared.pop()
        try:
            attach(model, make(list(targets) if targets else None, list(layers) if layers else None), name)
        except AdapterError:
            pass
        else:
            if [p for p, _, _ in placed(model, name)] == paths:
                return
            detach(model, name)
    attach(model, make(list(paths), None), name)


__all__ = ["attach_union", "union_paths"]
