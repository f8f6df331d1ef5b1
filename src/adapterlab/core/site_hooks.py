"""The forward hooks that run placed adapters, and the removal of the hooks of adapters whose gate keeps them out
of a mode (AdapterDrop's dropped blocks at inference).

Kept apart from `engine` (which places, switches and merges adapters) so that each file has one purpose.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn

from .adapter import Adapter
from .sites import ADAPTER_SLOT, Site

HOST_ATTR = ADAPTER_SLOT


def placed(model: nn.Module, name: str | None = None) -> Iterator[tuple[str, nn.Module, Adapter]]:
    """(host path, host module, adapter) for every placed adapter module (of `name`, if given)."""
    for path, host in model.named_modules():
        slot = host._modules.get(HOST_ATTR) if hasattr(host, "_modules") else None
        if isinstance(slot, nn.ModuleDict):
            for adapter_name, adapter in slot.items():
                if name is None or adapter_name == name:
                    yield path, host, adapter


def placed_at(model: nn.Module, site: Site) -> Adapter:
    """The adapter module placed at `site` (one of the placed adapters' `_site`)."""
    return next(a for a in model.get_submodule(site.path)._modules[HOST_ATTR].values() if a._site is site)


class _SiteHooks:
    """The forward hooks that run one adapter at its site.

    An object rather than closures so that `copy.deepcopy(model)` (and pickling) gives the copy hooks
    that call the copy's adapter, not the original's. For a sublayer site, the input seen at the entry
    layer is handed to the exit layer through `seen` (gradient-checkpointing recomputation re-runs both).
    """

    def __init__(self, adapter: Adapter, handover: bool) -> None:
        self.adapter = adapter
        self.handover = handover
        self.seen: dict[str, Any] = {}

    def entry_pre(self, module: nn.Module, args: tuple) -> tuple | None:
        if not self.adapter.applies:
            return None
        x = self.adapter.adapt_input(args[0])
        if self.handover:
            self.seen["x"] = x
        return (x, *args[1:]) if x is not args[0] else None

    def exit_post(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not self.adapter.applies:
            return None
        x = self.seen.pop("x") if self.handover else args[0]
        return self.adapter.adapt_output(x, output)

    def model_pre(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        return self.adapter.before_model(module, args, kwargs) if self.adapter.applies else None

    def model_post(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        return self.adapter.after_model(module, args, kwargs, output) if self.adapter.applies else None


def install_hooks(model: nn.Module, site: Site, adapter: Adapter) -> list:
    """Register the forward hooks that run `adapter` at `site`; returns their handles."""
    hooks = _SiteHooks(adapter, handover=site.kind == "sublayer")
    if site.kind == "model":
        return [model.register_forward_pre_hook(hooks.model_pre, with_kwargs=True),
                model.register_forward_hook(hooks.model_post, with_kwargs=True), *adapter.hook_submodules(model)]
    host = model.get_submodule(site.path)
    entry = model.get_submodule(site.entry)
    return [entry.register_forward_pre_hook(hooks.entry_pre), host.register_forward_hook(hooks.exit_post)]


def sync_site_hooks(model: nn.Module, args: tuple = (), force: bool = False) -> None:
    """Forward pre-hook while some adapter has a gate: on a train/eval switch, give hooks only to the adapters
    that may run in that mode (AdapterDrop's dropped ones cost nothing at inference), re-installing every site hook in attach
    order so that adapters stacked on one layer keep their order."""
    if not force and getattr(model, "adapterlab_hooks_mode", None) == model.training:
        return
    model.adapterlab_hooks_mode = model.training
    adapters = sorted((a for _, _, a in placed(model) if a._site.kind != "model"), key=lambda a: a._install_seq)
    wanted = [a.hooked for a in adapters]
    if all(bool(a._hook_handles) == want for a, want in zip(adapters, wanted)):
        return
    for adapter in adapters:
        for handle in adapter._hook_handles:
            handle.remove()
        adapter._hook_handles = []
    for adapter, want in zip(adapters, wanted):
        if want:
            adapter._hook_handles = install_hooks(model, adapter._site, adapter)


def track_gates(model: nn.Module) -> None:
    """Install `sync_site_hooks` while some adapter has a gate (AdapterDrop), remove it when none does."""
    wanted = any(adapter.gate is not None for _, _, adapter in placed(model))
    handle = getattr(model, "adapterlab_drops", None)
    if wanted and handle is None:
        model.adapterlab_drops = model.register_forward_pre_hook(sync_site_hooks, prepend=True)
    elif not wanted and handle is not None:
        handle.remove()
        del model.adapterlab_drops
    if wanted:
        sync_site_hooks(model, force=True)


__all__ = ["HOST_ATTR", "install_hooks", "placed", "placed_at", "sync_site_hooks", "track_gates"]
