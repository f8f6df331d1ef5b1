"""Task models on one shared backbone serving one mixed batch: one backbone forward in which every row runs its own
adapter (`row_routing.routed`), then each task's head on its rows' backbone output.

The task models share the backbone as one module object (`model.<base_model_prefix>`, e.g. `model.bert`), each
keeping its own head (pooler output -> dropout -> classifier for BERT sequence classification; mean pooling for
wav2vec2, the last real token for Llama, the choices reshaped for multiple choice). Rather than copy each family's
head code, the head runs through the task model's own forward with the backbone swapped for a stand-in:
  1. the stand-in, called by one task model's forward on the whole batch, keeps the arguments the forward hands its
     backbone (ids flattened for multiple choice, the flags it asks for) and stops the forward there;
  2. the real backbone runs once on them, every row with its adapter;
  3. each task's model runs on its rows with a stand-in that returns those rows of that one output.
A family whose forward does not call its backbone exactly once, on its rows, has no head that can be split off this
way and is refused by name. Each row equals its task model run alone with its adapter active, up to float rounding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..errors import AdapterError
from .row_routing import routed


class _Captured(Exception):
    """Raised by the stand-in to stop a forward once it has the backbone's arguments (step 1)."""


class _StandIn(nn.Module):
    """Takes the backbone's place inside a task model's forward: keeps its arguments (no `given` output) or returns
    the `given` output's rows `index`; attributes it lacks (config, embeddings, ...) are the real backbone's."""

    def __init__(self, real: nn.Module, given: Any = None, index: torch.Tensor | None = None) -> None:
        super().__init__()
        self.__dict__["_real"] = real  # not a submodule: the stand-in holds no parameters of its own
        self.given, self.index, self.calls = given, index, 0
        self.rows = _rows((given,), {}) if given is not None else None
        self.arguments: tuple[tuple, dict[str, Any]] | None = None
        self.rows_in: int | None = None

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_real"], name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.given is None:
            self.arguments = (args, kwargs)
            raise _Captured
        self.rows_in = _rows(args, kwargs)
        return _take(self.given, self.index, self.rows)


def _rows(args: tuple, kwargs: dict[str, Any]) -> int | None:
    """The leading size of the first tensor among the arguments (or inside a model output), None without one."""
    for value in [*args, *kwargs.values()]:
        if torch.is_tensor(value) and value.dim():
            return int(value.shape[0])
        if isinstance(value, (tuple, list, ModelOutput)):
            inner = _rows(tuple(value.values() if isinstance(value, ModelOutput) else value), {})
            if inner is not None:
                return inner
    return None


def _take(value: Any, index: torch.Tensor, rows: int | None) -> Any:
    """`value` (a backbone output: tensor, tuple or ModelOutput) cut to rows `index` of its `rows`; a key/value
    cache, which no classification head reads, is dropped rather than cut."""
    if torch.is_tensor(value):
        return value.index_select(0, index.to(value.device)) if value.dim() and value.shape[0] == rows else value
    if isinstance(value, ModelOutput):
        return type(value)(**{k: _take(v, index, rows) for k, v in value.items() if k != "past_key_values"})
    if isinstance(value, (tuple, list)):
        return type(value)(_take(v, index, rows) for v in value)
    return None if hasattr(value, "get_seq_length") else value


def _backbone(models: Mapping[str, nn.Module]) -> tuple[str, nn.Module]:
    """(attribute name, module) of the backbone all `models` hold, or an AdapterError saying why there is none."""
    found = {}
    for task, model in models.items():
        prefix = getattr(model, "base_model_prefix", "")
        inner = getattr(model, prefix, None) if prefix else None
        if not isinstance(inner, nn.Module) or inner is model:
            raise AdapterError(f"{type(model).__name__} (task {task!r}) has no backbone under its base_model_prefix "
                               f"{prefix!r}, so its head cannot be split off to serve a mixed batch; serve it alone.")
        found[task] = (prefix, inner)
    if len({id(inner) for _, inner in found.values()}) > 1:
        raise AdapterError("the task models hold different backbones; a mixed batch runs one shared backbone "
                           "(set each model's base_model_prefix attribute to the same module).")
    return next(iter(found.values()))


def _swapped(model: nn.Module, prefix: str, stand_in: _StandIn, inputs: dict[str, Any]) -> Any:
    real = getattr(model, prefix)
    setattr(model, prefix, stand_in)
    try:
        return model(**inputs)
    finally:
        setattr(model, prefix, real)


def mixed_heads(models: Mapping[str, nn.Module], batch: dict[str, Any], tasks: Sequence[str],
                adapter_names: Sequence[str]) -> dict[str, tuple[torch.Tensor, Any]]:
    """Row i of `batch` served by task model `models[tasks[i]]` with adapter `adapter_names[i]` ("__base__": none),
    all rows in one backbone forward: {task: (its row indices, its model's output on those rows)}. The models must
    share one backbone module holding the adapters, and be in eval mode."""
    size = _rows((), batch)
    if size is None or len(tasks) != size or len(adapter_names) != size:
        raise AdapterError(f"a mixed batch of {size} rows needs one task and one adapter name per row, got "
                           f"{len(tasks)} tasks and {len(adapter_names)} names.")
    unknown = sorted(set(tasks) - set(models))
    if unknown:
        raise AdapterError(f"tasks {unknown} have no model; known: {sorted(models)}.")
    prefix, backbone = _backbone(models)
    first = models[tasks[0]]
    probe = _StandIn(backbone)
    try:
        _swapped(first, prefix, probe, batch)
    except _Captured:
        pass
    if probe.arguments is None:
        raise AdapterError(f"{type(first).__name__}'s forward never calls its backbone {prefix!r}, so its head cannot "
                           "be split off to serve a mixed batch; serve one task per batch.")
    args, kwargs = probe.arguments
    with routed(backbone, list(adapter_names)):
        output = backbone(*args, **kwargs)
    rows = _rows((output,), {})
    if rows is None or rows % size:
        raise AdapterError(f"the backbone's output has {rows} rows for a batch of {size}; rows cannot be handed to "
                           "their tasks' heads.")
    per = rows // size  # backbone rows per example (multiple choice: one per choice, batch-major)
    served = {}
    for task in dict.fromkeys(tasks):
        index = torch.tensor([i for i, t in enumerate(tasks) if t == task])
        inner = (index[:, None] * per + torch.arange(per)).reshape(-1)
        mine = {k: v.index_select(0, index.to(v.device)) if torch.is_tensor(v) and v.dim() and v.shape[0] == size
                else v for k, v in batch.items()}
        stand_in = _StandIn(backbone, output, inner)
        result = _swapped(models[task], prefix, stand_in, mine)
        if stand_in.calls != 1 or stand_in.rows_in != len(inner):
            raise AdapterError(f"{type(models[task]).__name__}'s forward called its backbone {stand_in.calls} times "
                               f"(on {stand_in.rows_in} rows, expected once on {len(inner)}), so its head cannot be "
                               "split off to serve a mixed batch; serve one task per batch.")
        served[task] = (index, result)
    return served


__all__ = ["mixed_heads"]
