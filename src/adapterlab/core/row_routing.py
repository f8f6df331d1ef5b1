"""Mixed-adapter batches: row i of one call runs with adapter `names[i]` ("__base__": the bare base model), with one
base forward for the whole batch.

`model(**batch, adapter_names=[...])` (PEFT's spelling) or, for `generate()` (whose argument check refuses keywords
the model's signature lacks), `with routed(model, names): model.generate(...)`. The model's forward pre-hook
(`route_call`, `row_calls.py`) turns the names into the call's row assignment (`RowCall`) and keeps it on the model
(`model.adapterlab_routing.call`, installed by `row_calls.py`) for that call only: it is set by every call and cleared by a forward hook after it,
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
        self.rewrites_call = False  # whether the plans hold a model-site stack (virtual tokens): they fit one set only
        self.model_site: frozenset[str] = frozenset()  # the adapters placed at the model site (seen at planning)
        self._last: RowCall | None = None

    def __getstate__(self) -> dict[str, Any]:  # deepcopy and pickling: no call in flight, plans rebuilt
        return {**self.__dict__, "call": None, "_last": None, "names": frozenset(), "adapters": []}

    def clear(self, *_: Any) -> None:
        """Forward hook (always called, also after an exception): the call is over."""
        self.call = None

    def forget(self) -> None:
        """Drop the plans (an adapter was attached or detached): the next routed call makes them anew."""
        self.names, self.adapters, self._last, self.rewrites_call = frozenset(), [], None, False
        self.model_site = frozenset()


def routing_of(model: nn.Module) -> RowRouting:
    """The model's RowRouting, made on first use."""
    routing = model.__dict__.get("adapterlab_routing")
    if routing is None:
        routing = model.adapterlab_routing = RowRouting()
    return routing


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


__all__ = ["BASE", "RowCall", "RowPlan", "RowRouting", "check_names", "routed", "routing_of"]
