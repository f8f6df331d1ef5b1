"""Mixed-adapter batches: row i of one call runs with adapter `names[i]` ("__base__": the bare base model), with one
base forward for the whole batch.

`model(**batch, adapter_names=[...])` (PEFT's spelling) or, for `generate()` (whose argument check refuses keywords
the model's signature lacks), `with routed(model, names): model.generate(...)`. The model's forward pre-hook
(`route_call`) turns the names into the call's row assignment (`RowCall`) and keeps it on the model
(`model.adapterlab_routing.call`) for that call only: it is set by every call and cleared by a forward hook after it,
so nothing stale reaches a later call. The site hooks (`site_hooks.py`) read it: in a routed call each named adapter
runs on its rows only and the others (active or not) not at all, as in PEFT, where adapter_names overrides the active
set for the call.

How an adapter runs on its rows (`row_sites.py`): alone on the rows that use it (index_select, then put back out of
place), or, where its method implements `Adapter.stack_rows`, stacked with the other named adapters of its method at
its site and run once for every row (LoRA's gathered low-rank weights, IA3's vectors, the virtual tokens of prompt,
P-tuning and prefix tuning padded per row). Which runs how is planned once per set of named adapters (`RowPlan`), the
hooks of named adapters that are not active are installed then, and both stay until another set is named.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import AdapterError

BASE = "__base__"
INPUT_KEYS = ("input_ids", "inputs_embeds", "pixel_values", "input_values", "input_features")


class RowPlan:
    """How the adapters of one group run in routed calls naming a given set: `stack` (from the method's
    `stack_rows`) run once by `lead` for all `members`' rows; without a stack, each member alone on its rows."""

    def __init__(self, members: list[nn.Module], stack: Any | None) -> None:
        self.members, self.stack, self.lead = members, stack, members[0]
        self.slot_of = {a._name: i for i, a in enumerate(members)}


class RowCall:
    """One call's rows: the distinct adapters it names (`order`), each row's slot in it (`slots`, -1: the base) and
    each adapter's rows; per-row indices into a stack's members, computed once per (call, stack)."""

    def __init__(self, names: tuple[str, ...], device: torch.device) -> None:
        self.names = names
        self.order = tuple(dict.fromkeys(n for n in names if n != BASE))
        slot = {n: i for i, n in enumerate(self.order)}
        self.slots = torch.tensor([slot.get(n, -1) for n in names], device=device)
        self.rows = {n: (self.slots == i).nonzero().squeeze(1) for n, i in slot.items()}
        self.whole = {n for n in self.order if len(self.rows[n]) == len(names)}
        self.indices: dict[int, torch.Tensor] = {}
        self.spread: dict[int, RowCall] = {}
        self.inside: nn.Module | None = None  # the adapter running on its rows alone now (row_sites._alone)

    def at(self, rows: int) -> RowCall:
        """This call for a site whose tensors have `rows` rows, k times the batch's: taken as batch-major (Swin's
        windows: row b's k windows are rows b*k .. b*k + k-1), so each name is repeated k times."""
        if rows == len(self.names):
            return self
        call = self.spread.get(rows)
        if call is None:
            if rows % len(self.names):
                raise AdapterError(f"A layer's tensors have {rows} rows where the batch has {len(self.names)}, so rows "
                                   "cannot be given their own adapters there; run one adapter per call (set_active).")
            k = rows // len(self.names)
            call = self.spread[rows] = RowCall(tuple(n for n in self.names for _ in range(k)), self.slots.device)
        return call

    def index(self, plan: RowPlan) -> torch.Tensor:
        """Each row's member index in `plan` (len(members) for a row no member runs)."""
        index = self.indices.get(id(plan))
        if index is None:
            none = len(plan.members)
            table = torch.tensor([plan.slot_of.get(n, none) for n in self.order] + [none], device=self.slots.device)
            index = self.indices[id(plan)] = table[self.slots]
        return index


class RowRouting:
    """A model's routing state: the running call's rows (`call`), the names of an enclosing `routed` block
    (`context`), the set of adapters named by the latest routed call (`names`: their plans and hooks are in place)."""

    def __init__(self) -> None:
        self.call: RowCall | None = None
        self.context: tuple[str, ...] | None = None
        self.names: frozenset[str] = frozenset()
        self.adapters: list[nn.Module] = []
        self._last: RowCall | None = None

    def __getstate__(self) -> dict[str, Any]:  # deepcopy and pickling: no call in flight, plans rebuilt
        return {**self.__dict__, "call": None, "_last": None, "names": frozenset(), "adapters": []}

    def clear(self, *_: Any) -> None:
        """Forward hook (always called, also after an exception): the call is over."""
        self.call = None

    def forget(self) -> None:
        """Drop the plans (an adapter was attached or detached): the next routed call makes them anew."""
        self.names, self.adapters, self._last = frozenset(), [], None


def routing_of(model: nn.Module) -> RowRouting:
    """The model's RowRouting, made on first use."""
    routing = model.__dict__.get("adapterlab_routing")
    if routing is None:
        routing = model.adapterlab_routing = RowRouting()
    return routing


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


def check_names(model: nn.Module, names: Any) -> tuple[str, ...]:
    """`names` as a tuple, or an AdapterError naming what is wrong with it."""
    if isinstance(names, str) or not isinstance(names, Sequence) or not names \
            or not all(isinstance(n, str) for n in names):
        raise AdapterError(f"adapter_names must be a non-empty list of adapter names, one per row ('{BASE}' for the "
                           f"base model), got {names!r:.80}.")
    known = list(getattr(model, "adapterlab_configs", {}))
    unknown = sorted({n for n in names if n != BASE and n not in known})
    if unknown:
        raise AdapterError(f"adapter_names holds unknown adapter(s) {unknown}; this model has {known or 'none'} "
                           f"(and '{BASE}' for the base model).")
    return tuple(names)


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
    if last is not None and last.names == names and last.slots.device == device and routing.names == set(last.order):
        call = last
    else:
        call = RowCall(names, device)
        if frozenset(call.order) != routing.names or not routing.adapters:
            plan_rows(model, routing, frozenset(call.order))
        routing._last = call
    merged = [a._name for a in routing.adapters if a.merged]
    if merged:
        raise AdapterError(f"adapter(s) {sorted(set(merged))} are merged into the base weights, so every row would run "
                           "them; call adapterlab.unmerge(model) before a mixed-adapter batch.")
    return call


def plan_rows(model: nn.Module, routing: RowRouting, names: frozenset[str]) -> None:
    """Give every placed adapter its RowPlan for calls naming `names` (None where not named) and install the hooks
    of the named ones that are not active."""
    from .row_sites import make_plans  # the site-level half
    from .site_hooks import placed, sync_site_hooks

    routing.adapters = [a for _, _, a in placed(model)]
    make_plans(routing.adapters, names, {n: c.method for n, c in model.adapterlab_configs.items()})
    routing.names = names
    sync_site_hooks(model, force=True)


@contextlib.contextmanager
def routed(model: nn.Module, names: Sequence[str]) -> Iterator[nn.Module]:
    """Run every call of `model` inside the block as a mixed-adapter batch: row i with adapter `names[i]` ("__base__":
    the base model). `generate()` takes mixed batches this way (it refuses an adapter_names keyword); a batch k times
    longer than `names` (beams, num_return_sequences) repeats each name k times, as generate repeats each input.
    Each row equals its adapter's run alone (set_active) in eval mode, up to float rounding; named adapters need not
    be active, and the active set is the same after the block."""
    routing = routing_of(model)
    if routing.context is not None:
        raise AdapterError("routed(...) blocks do not nest; leave the outer block first.")
    routing.context = check_names(model, names)
    try:
        yield model
    finally:
        routing.context = None


__all__ = ["BASE", "RowCall", "RowPlan", "RowRouting", "install_routing", "routed", "routing_of"]
