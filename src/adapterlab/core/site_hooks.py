"""The forward hooks that run placed adapters, and the removal of the hooks of adapters whose gate keeps them out
of a mode (AdapterDrop's dropped blocks at inference).

Kept apart from `engine` (which places, switches and merges adapters) so that each file has one purpose.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn

from . import row_sites
from .adapter import Adapter
from .row_routing import RowRouting, routing_of
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
    The hooks exist only while the adapter is `hooked` (active, unmerged), so at a module or sublayer site they
    ask only its gate (if any) whether it runs in this forward; `install_hooks` picks the variant it needs. In a
    mixed-adapter batch (`routing.call` set, `row_routing.py`) they run the adapter on its rows only (`row_sites.py`);
    an adapter named by such calls but not active has `standby` hooks, which do nothing in other calls.
    """

    def __init__(self, adapter: Adapter, handover: bool, blind: bool = False, routing: RowRouting | None = None,
                 standby: bool = False) -> None:
        self.adapter = adapter
        self.handover = handover
        self.blind = blind  # a sublayer site whose adapter does not read the input
        self.routing = routing
        self.standby = standby
        self.seen: dict[str, Any] = {}
        self.exit: Any = None  # the exit variant a standby hook runs in a routed call

    def entry_pre(self, module: nn.Module, args: tuple) -> tuple | None:
        adapter, call = self.adapter, self.routing.call
        if adapter.gate is not None and not adapter.gate.runs():
            return None
        if call is not None:
            x = row_sites.adapt_input(call, adapter, args[0])
        elif self.standby:
            return None
        else:
            x = adapter.adapt_input(args[0])
        if self.handover:
            self.seen["x"] = x
        return (x, *args[1:]) if x is not args[0] else None

    def exit_post(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """A module site: the adapter sees the host's own input."""
        call = self.routing.call
        if call is not None:
            return row_sites.adapt_output(call, self.adapter, args[0], output)
        return self.adapter.adapt_output(args[0], output)

    def exit_post_shared(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """A module site whose adapter computes its down-projection with its neighbours' (`core/shared_input.py`)."""
        if self.routing.call is not None:  # rows of other adapters: no group matmul
            return self.exit_post(module, args, output)
        adapter, x = self.adapter, args[0]
        h = adapter._shared.down(adapter, x)
        return adapter.adapt_output(x, output) if h is None else adapter.adapt_output_after_down(x, output, h)

    def exit_post_handover(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """A sublayer site: the input seen by the entry layer's hook."""
        x, call = self.seen.pop("x"), self.routing.call
        if call is not None:
            return row_sites.adapt_output(call, self.adapter, x, output)
        return self.adapter.adapt_output(x, output)

    def exit_post_blind(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """A sublayer site whose adapter does not read the input (`reads_input`): it is handed None."""
        call = self.routing.call
        if call is not None:
            return row_sites.adapt_output(call, self.adapter, None, output)
        return self.adapter.adapt_output(None, output)

    def exit_post_gated(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """Any site of an adapter with a gate: the gate decides per forward (the handover is consumed either way)."""
        x = self.seen.pop("x", None) if self.handover else None
        if not self.adapter.gate.runs():
            return None
        if self.handover or self.blind:
            call = self.routing.call
            if call is not None:
                return row_sites.adapt_output(call, self.adapter, x, output)
            return self.adapter.adapt_output(x, output)
        return (self.exit_post_shared if self.adapter._shared is not None else self.exit_post)(module, args, output)

    def exit_post_standby(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """An adapter hooked only for mixed-adapter batches: it runs in routed calls alone."""
        if self.routing.call is None:
            if self.handover:
                self.seen.pop("x", None)
            return None
        return self.exit(module, args, output)

    def model_pre(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        call = self.routing.call
        if call is not None:
            return row_sites.before_model(call, self.adapter, module, args, kwargs)
        return self.adapter.before_model(module, args, kwargs) if self.adapter.applies else None

    def model_post(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        call = self.routing.call
        if call is not None:
            return row_sites.after_model(call, self.adapter, module, args, kwargs, output)
        return self.adapter.after_model(module, args, kwargs, output) if self.adapter.applies else None


def install_hooks(model: nn.Module, site: Site, adapter: Adapter) -> list:
    """Register the forward hooks that run `adapter` at `site`; returns their handles. Only the hooks the adapter
    needs: an entry pre-hook where it changes the input or a sublayer's exit reads the entry's input, an exit
    hook where it changes the output. An adapter that is not `hooked` gets standby hooks (mixed-adapter batches)."""
    routing = routing_of(model)
    if site.kind == "model":
        hooks = _SiteHooks(adapter, handover=False, routing=routing)
        return [model.register_forward_pre_hook(hooks.model_pre, with_kwargs=True),
                model.register_forward_hook(hooks.model_post, with_kwargs=True), *adapter.hook_submodules(model)]
    changes_output = adapter.changes_output()
    sublayer = site.kind == "sublayer"
    handover = sublayer and changes_output and adapter.reads_input()
    hooks = _SiteHooks(adapter, handover, blind=sublayer and not handover, routing=routing,
                       standby=not adapter.hooked)
    handles = []
    if adapter.changes_input() or hooks.handover:
        handles.append(model.get_submodule(site.entry).register_forward_pre_hook(hooks.entry_pre))
    if changes_output:
        exit_post = (hooks.exit_post_gated if adapter.gate is not None else hooks.exit_post_handover
                     if hooks.handover else hooks.exit_post_blind if hooks.blind else hooks.exit_post_shared
                     if adapter._shared is not None else hooks.exit_post)
        if hooks.standby:
            hooks.exit, exit_post = exit_post, hooks.exit_post_standby
        handles.append(model.get_submodule(site.path).register_forward_hook(exit_post))
    return handles


def sync_site_hooks(model: nn.Module, args: tuple = (), force: bool = False) -> None:
    """Give hooks only to the adapters that run now (`hooked`): active, unmerged, and present in the mode
    (AdapterDrop's dropped ones cost nothing at inference), re-installing every site hook in attach order so that
    adapters stacked on one layer keep their order. The engine calls it (force=True) after switching, merging
    or unmerging; while some adapter has a gate it is also a forward pre-hook that acts on a train/eval switch."""
    if not force and getattr(model, "adapterlab_hooks_mode", None) == model.training:
        return
    model.adapterlab_hooks_mode = model.training
    adapters = sorted((a for _, _, a in placed(model) if a._site.kind != "model"), key=lambda a: a._install_seq)
    named = routing_of(model).names  # adapters named by the latest mixed-adapter batch keep standby hooks
    wanted = [(a.hooked, not a.hooked and a._name in named and not a.merged
               and (a.gate is None or a.gate.present(model.training))) for a in adapters]
    if all((a._hooks_on, a._hooks_standby) == want for a, want in zip(adapters, wanted)):
        return
    for adapter in adapters:
        for handle in adapter._hook_handles:
            handle.remove()
        adapter._hook_handles, adapter._hooks_on, adapter._hooks_standby = [], False, False
    for adapter, (on, standby) in zip(adapters, wanted):
        if on or standby:
            adapter._hook_handles = install_hooks(model, adapter._site, adapter)
            adapter._hooks_on, adapter._hooks_standby = on, standby


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
