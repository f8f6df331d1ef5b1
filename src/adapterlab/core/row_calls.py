"""The model-level hooks of mixed-adapter batches: turn a call's `adapter_names=` (or an enclosing `routed` block)
into its row assignment (`RowCall`, `row_routing.py`) before the call and clear it after; plan the named adapters'
rows and hooks when the set of names changes. Above `site_hooks.py` and `row_sites.py`, whose planning it calls.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import AdapterError
from .row_routing import INPUT_KEYS, RowCall, RowRouting, check_names, routing_of
from .row_sites import make_plans
from .site_hooks import placed, sync_site_hooks


def install_routing(model: nn.Module, handles: list | None = None) -> list:
    """The model-level hooks of routing: the pre-hook before every other, the clearing hook after every other (moved
    behind the hooks of adapters attached since, given the `handles` it returned before); their handles."""
    routing = routing_of(model)
    if handles is None:
        handles = [model.register_forward_pre_hook(route_call, with_kwargs=True, prepend=True), None]
    else:
        handles[1].remove()
    return [handles[0], model.register_forward_hook(routing.clear, always_call=True)]


def route_call(model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
    """Forward pre-hook: set this call's row assignment (or none) from `adapter_names=` or an enclosing `routed`."""
    routing = routing_of(model)
    given = "adapter_names" in kwargs
    names = kwargs.pop("adapter_names") if given else None
    if names is not None and routing.context is not None and tuple(names) != routing.context:
        raise AdapterError(f"adapter_names={list(names)} was given inside routed(model, {list(routing.context)}); "
                           "name the rows' adapters once, in the call or in the routed block.")
    names = routing.context if names is None else names
    routing.call = None if names is None else prepare_call(model, routing, names, batch_size(args, kwargs))
    return (args, kwargs) if given else None


def batch_size(args: tuple, kwargs: dict[str, Any]) -> tuple[int, torch.device]:
    """(rows, device) of the call's main input."""
    tensors = [kwargs.get(k) for k in INPUT_KEYS] + list(args) + list(kwargs.values())
    first = next((t for t in tensors if isinstance(t, torch.Tensor)), None)
    if first is None:
        raise AdapterError("adapter_names needs a batched tensor input (input_ids, inputs_embeds, pixel_values, ...) "
                           "to assign the names to rows; pass the inputs as tensors.")
    return first.shape[0], first.device


def prepare_call(model: nn.Module, routing: RowRouting, names: Any, rows: tuple[int, torch.device]) -> RowCall:
    """The RowCall of `names` for a batch of `rows` (repeated k times each where the batch is k times longer:
    beams, num_return_sequences); plans and hooks made anew when the set of named adapters changed."""
    names = check_names(model, names)
    batch, device = rows
    if batch % len(names):
        raise AdapterError(f"adapter_names has {len(names)} names for a batch of {batch} rows; give one name per row "
                           "(or per input of generate(), whose beams and returned sequences repeat each name).")
    if model.training:
        raise AdapterError("Mixed-adapter batches (adapter_names) run in eval mode only, where each row is exactly "
                           "its adapter's run alone; call model.eval(), or train one adapter per batch (set_active).")
    if batch != len(names):
        names = tuple(n for n in names for _ in range(batch // len(names)))
    last = routing._last
    if last is not None and last.names == names and last.slots.device == device and set(last.order) <= routing.names:
        call = last
    else:
        call = RowCall(names, device)
        order = frozenset(call.order)
        if not _plans_serve(routing, order):
            # layer adapters only: plan for every name seen since the plans were last made, so that a batcher whose
            # rows come and go plans at most once per adapter instead of at every change of the set
            grow = routing.adapters and not routing.rewrites_call and not order & routing.model_site
            plan_rows(model, routing, order | routing.names if grow else order)
        routing._last = call
    merged = [a._name for a in routing.adapters if a.merged]
    if merged:
        raise AdapterError(f"adapter(s) {sorted(set(merged))} are merged into the base weights, so every row would run "
                           "them; call adapterlab.unmerge(model) before a mixed-adapter batch.")
    return call


def _plans_serve(routing: RowRouting, order: frozenset[str]) -> bool:
    """Whether the plans in place serve a call naming `order`: made for exactly that set, or for a larger one whose
    plans do not depend on the set (no model-site stack, whose layout, e.g. virtual-token pads, does). A batcher's
    one-row prefill then reuses the running batch's stacks instead of planning (and stacking) twice per newcomer."""
    if not routing.adapters or not order <= routing.names:
        return False
    return order == routing.names or not routing.rewrites_call


def plan_rows(model: nn.Module, routing: RowRouting, names: frozenset[str]) -> None:
    """Give every placed adapter its RowPlan for calls naming `names` (None where not named) and install the hooks
    of the named ones that are not active."""
    routing.adapters = [a for _, _, a in placed(model)]
    make_plans(routing.adapters, names, {n: c.method for n, c in model.adapterlab_configs.items()})
    routing.names = names
    routing.rewrites_call = any(a._row_plan is not None and a._site.kind == "model" for a in routing.adapters)
    routing.model_site = frozenset(a._name for a in routing.adapters if a._site.kind == "model")
    sync_site_hooks(model, force=True)


def call_kind(model: nn.Module, name: str) -> str:
    """How adapter `name` rewrites a mixed-adapter call: "" where it only acts at layers (any such rows mix), else the
    name of its method's model-site stacking (prompt and P-tuning share one, prefix tuning has another); rows of two
    different non-empty kinds cannot share a call (`row_sites.make_plans` refuses them), so a batcher keeps them apart."""
    for _, _, adapter in placed(model, name):
        if adapter._site.kind == "model":
            return type(adapter).stack_rows.__func__.__qualname__
    return ""


__all__ = ["call_kind", "install_routing", "plan_rows", "prepare_call", "route_call"]
