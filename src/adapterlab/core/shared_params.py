"""Parameters one attached adapter shares across all its sites (Compacter's hypercomplex rules; VeRA-style shared
random matrices could live here too).

A method that needs them returns a module from `AdapterConfig.build_shared`; attach builds it once, before the
per-site modules, and hands it to every `build` as `placement.shared`. It lives once in the model tree, at
`adapterlab_shared.adapterlab.<adapter name>`, so that `state_dict`, `.to()`, optimizers and `count_parameters` see
each shared tensor exactly once (the "adapterlab" path component marks it as adapter state, as a layer's slot does).
The per-site modules keep a plain, unregistered reference to it (`hold`), so it is never a child of theirs and
never saved or counted twice. It is saved under `adapterlab_shared.<key>` beside the per-site entries.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .sites import ADAPTER_SLOT

SHARED_ATTR = "adapterlab_shared"  # the model's child holding every adapter's shared module
SAVED_PREFIX = SHARED_ATTR  # what the saved keys of shared tensors start with (the adapter name left out)


class SharedStore(nn.Module):
    """The holder at `model.adapterlab_shared`; its child `adapterlab` keeps one module per adapter name. A plain
    module (not a ModuleDict), so that the engine's walk over per-site adapter slots (`placed`) never meets it."""

    def __init__(self) -> None:
        super().__init__()
        self.add_module(ADAPTER_SLOT, nn.Module())


def _slot(model: nn.Module) -> nn.Module | None:
    store = model._modules.get(SHARED_ATTR)
    return store._modules[ADAPTER_SLOT] if isinstance(store, SharedStore) else None


def shared_of(model: nn.Module, name: str) -> nn.Module | None:
    """The shared module of adapter `name`, or None where its method shares nothing."""
    slot = _slot(model)
    return None if slot is None else slot._modules.get(name)


def store_shared(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put adapter `name`'s shared module into the model tree (the holder made on first use)."""
    if _slot(model) is None:
        model.add_module(SHARED_ATTR, SharedStore())
    _slot(model).add_module(name, module)


def drop_shared(model: nn.Module, name: str) -> None:
    """Remove adapter `name`'s shared module; the holder goes with the last one, leaving the model's keys as before."""
    slot = _slot(model)
    if slot is None or name not in slot._modules:
        return
    del slot._modules[name]
    if not slot._modules:
        del model._modules[SHARED_ATTR]


def shared_state(module: nn.Module | None) -> Iterator[tuple[str, torch.Tensor]]:
    """(saved key, tensor) for every parameter and buffer of a shared module (none for None)."""
    if module is not None:
        for key, tensor in module.state_dict().items():
            yield f"{SAVED_PREFIX}.{key}", tensor


def hold(owner: nn.Module, attribute: str, shared: nn.Module) -> None:
    """Give `owner` a reference to `shared` that is not a child: its parameters stay the model's single copy (a
    deepcopy of the whole model keeps the reference pointing at the copy's shared module)."""
    owner.__dict__[attribute] = shared


__all__ = ["SHARED_ATTR", "SharedStore", "drop_shared", "hold", "shared_of", "shared_state", "store_shared"]
