"""The site half of mixed-adapter batches (`row_routing.py`): which named adapters run stacked and which alone
(`make_plans`), and running one adapter of a routed call at its site on its rows.

Alone: the adapter runs on the rows that use it, taken out with index_select, and its result is put back out of
place (index_copy), so the host layer still runs once for the whole batch and every other row is untouched. Stacked:
the named adapters of one method at one site (those whose class implements `Adapter.stack_rows`) become one
`RowStack` that the first of them (in attach order) runs for every row; the others' hooks then do nothing. An adapter
with a gate (AdapterDrop) runs alone, where its gate decides as in its own runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import AdapterError
from .adapter import Adapter
from .row_routing import RowCall, RowPlan


def _stack_function(adapter: Adapter) -> Any:
    return type(adapter).stack_rows.__func__


def make_plans(adapters: list[Adapter], names: frozenset[str], methods: dict[str, str]) -> None:
    """Set `_row_plan` on every adapter for routed calls naming `names`: None where not named; a shared plan per
    group of adapters stacked at one site; a plan of its own for an adapter that runs alone. Refuses a model-site
    adapter that cannot be stacked (it has no rows of its own to run on) and two kinds of model-site adapters in one
    set (their rewrites of the call would not compose)."""
    groups: dict[Any, list[Adapter]] = {}
    default = Adapter.stack_rows.__func__
    for adapter in sorted(adapters, key=lambda a: a._install_seq):
        adapter._row_plan = None
        if adapter._name not in names:
            continue
        function = _stack_function(adapter)
        site = adapter._site
        stackable = function is not default and adapter.gate is None
        key = (site.kind, site.path, site.entry, function) if stackable else id(adapter)
        groups.setdefault(key, []).append(adapter)
    model_site = [members for members in groups.values() if members[0]._site.kind == "model"]
    if len(model_site) > 1:
        kinds = sorted({methods[m[0]._name] for m in model_site})
        raise AdapterError(f"adapter_names names adapters of {' and '.join(kinds)}, which rewrite the model's call in "
                           "different ways; give rows of one of them per call (the others' rows in another call).")
    for members in groups.values():
        stack = type(members[0]).stack_rows(members) if _stack_function(members[0]) is not default else None
        if stack is None and members[0]._site.kind == "model":
            name = members[0]._name
            raise AdapterError(f"adapter {name!r} ({methods[name]}) cannot run in a mixed-adapter batch: it rewrites "
                               "the whole call; run its rows on their own with set_active.")
        plans = [RowPlan(members, stack)] if stack is not None else [RowPlan([a], None) for a in members]
        for plan in plans:
            for adapter in plan.members:
                adapter._row_plan = plan


def _rows(call: RowCall, adapter: Adapter) -> torch.Tensor | None:
    """The rows of `adapter` in this call (None: all of them)."""
    return None if adapter._name in call.whole else call.rows[adapter._name]


def _alone(call: RowCall, adapter: Adapter, run: Any) -> Any:
    """run() (the adapter on its rows), during which hooks reached again (a norm delta re-running its host) act as
    in the adapter's own run: its own as it would, the others not at all."""
    call.inside = adapter
    try:
        return run()
    finally:
        call.inside = None


def adapt_input(call: RowCall, adapter: Adapter, x: torch.Tensor) -> torch.Tensor:
    """The site's input with `adapter`'s change on its rows (the whole stack's, where it leads one)."""
    plan: RowPlan | None = adapter._row_plan
    if call.inside is not None:
        return adapter.adapt_input(x) if adapter is call.inside else x
    if plan is None:
        return x
    if plan.stack is not None:
        return plan.stack.adapt_input(x, call.at(x.shape[0]).index(plan)) if adapter is plan.lead else x
    if adapter._name not in call.rows:  # planned for a larger set of names; no row of this call
        return x
    rows = _rows(call.at(x.shape[0]), adapter)
    if rows is None:
        return _alone(call, adapter, lambda: adapter.adapt_input(x))
    part = _alone(call, adapter, lambda: adapter.adapt_input(x.index_select(0, rows)))
    return x.index_copy(0, rows, part.to(x.dtype))


def adapt_output(call: RowCall, adapter: Adapter, x: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor | None:
    """The site's output with `adapter`'s change on its rows; None where it leaves the output as it is."""
    plan: RowPlan | None = adapter._row_plan
    if call.inside is not None:
        return adapter.adapt_output(x, y) if adapter is call.inside else None
    if plan is None:
        return None
    if plan.stack is not None:
        return plan.stack.adapt_output(x, y, call.at(y.shape[0]).index(plan)) if adapter is plan.lead else None
    if adapter._name not in call.rows:  # planned for a larger set of names; no row of this call
        return None
    rows = _rows(call.at(y.shape[0]), adapter)
    if rows is None:
        return _alone(call, adapter, lambda: adapter.adapt_output(x, y))
    part = _alone(call, adapter, lambda: adapter.adapt_output(None if x is None else x.index_select(0, rows),
                                                              y.index_select(0, rows)))
    return y.index_copy(0, rows, part.to(y.dtype))


def before_model(call: RowCall, adapter: Adapter, model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
    """A model-site adapter's rewrite of a routed call (its stack's, run by the stack's lead)."""
    plan: RowPlan | None = adapter._row_plan
    if plan is None or adapter is not plan.lead:
        return None
    return plan.stack.before_model(model, args, kwargs, call.index(plan))


def after_model(call: RowCall, adapter: Adapter, model: nn.Module, args: tuple, kwargs: dict[str, Any],
                output: Any) -> Any:
    """A model-site adapter's change of a routed call's output (its stack's, run by the stack's lead)."""
    plan: RowPlan | None = adapter._row_plan
    if plan is None or adapter is not plan.lead:
        return None
    return plan.stack.after_model(model, args, kwargs, output, call.index(plan))


__all__ = ["adapt_input", "adapt_output", "after_model", "before_model", "make_plans"]
