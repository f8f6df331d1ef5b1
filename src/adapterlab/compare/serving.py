"""Serving every task of a comparison at once, three ways, on the tasks' real dev inputs: T adapters on one shared
base switched per batch (a stream of per-task batches, the task's adapter made active before each), the same
adapters in mixed batches (every task's requests in one stream, batched regardless of task: one base forward per
batch with each row's own adapter, then each task's head on its rows; `core/task_heads.py`), and T fully fine-tuned
models (the per-task stream, each batch to its task's model). Both adapter ways serve the same examples.

The adapters go on the shared encoder (the backbone every task's model, with its own head, points at), so one
copy of the base weights serves all tasks. Methods whose adapters hook the model call itself (prompt, prefix,
P-tuning) cannot be switched under a head this way and are reported as such. Tasks whose inputs cannot share one
tensor (sequence classification beside multiple choice, different numbers of choices) are mixed within each group
that batches alike; an adapter that refuses per-row routing gets its switching figure and the refusal's reason
under "mixed". Weights do not change forward time, so freshly attached
adapters are timed.
"""

from __future__ import annotations

import itertools
import random
import re
import time
from collections.abc import Callable
from typing import Any

import torch

from ..core.checkpoint import read_adapter_config
from ..core.composition import is_composing
from ..core.engine import adapter_names, attach, set_active
from ..core.registry import config_from_dict, make_config
from ..core.task_heads import mixed_heads
from ..errors import AdapterError
from ..train.recipe import prepare_task
from ..train.trainable import FULL

BATCHES_PER_TASK = 6


def adapter_name(task: str) -> str:
    """The task's adapter name: its name made a Python identifier (arc-e -> arc_e)."""
    name = re.sub(r"\W", "_", task)
    return name if name.isidentifier() else f"task_{name}"


def _task_examples(setup: Any, batch_size: int) -> list[dict[str, Any]]:
    """The task's served dev examples: up to BATCHES_PER_TASK batches' worth, whole batches only."""
    dev = list(setup.eval_dataset or setup.train_dataset)
    count = min(BATCHES_PER_TASK, max(1, len(dev) // batch_size))
    return [dict(x) for x in dev[:count * batch_size]]


def _collated(collator: Callable, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in collator(examples).items() if k != "labels"}


def _stream(batches: dict[str, list[dict[str, torch.Tensor]]], seed: int = 0) -> list[tuple[str, dict]]:
    """Every task's batches in one seeded random order: a mixed stream of requests, one task per batch."""
    stream = [(task, batch) for task, items in batches.items() for batch in items]
    random.Random(seed).shuffle(stream)
    return stream


def _mixed_stream(examples: dict[str, list[dict[str, Any]]], collator: Callable, batch_size: int,
                  seed: int = 0) -> list[tuple[list[str], dict]]:
    """The same examples in one seeded random order, cut into batches regardless of task: (each row's task, batch)."""
    rows = [(task, x) for task, items in examples.items() for x in items]
    random.Random(seed).shuffle(rows)
    chunks = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    return [([t for t, _ in chunk], _collated(collator, [x for _, x in chunk])) for chunk in chunks]


def _examples(batch: dict[str, torch.Tensor]) -> int:
    return int(next(iter(batch.values())).shape[0])


def _parameter_mb(modules: list[torch.nn.Module]) -> float:
    seen = {id(p): p for m in modules for p in m.parameters()}
    return sum(p.numel() * p.element_size() for p in seen.values()) / 2**20


def _timed(serve: Callable[[Any, dict], Any], stream: list[tuple[Any, dict]], warm_up: int) -> float:
    """Seconds serving the whole stream, after `warm_up` batches of it served untimed."""
    with torch.inference_mode():
        for key, batch in stream[:warm_up]:
            serve(key, batch)
        start = time.perf_counter()
        for key, batch in stream:
            serve(key, batch)
        return time.perf_counter() - start


def serving_throughput(configs: dict[str, Any], method: str, batch_size: int = 32) -> dict[str, Any]:
    """Examples per second, and parameter megabytes held, for `method` serving every task of `configs` (task name ->
    its TrainConfig): one shared base with T adapters switched per batch (and, under "mixed", the same in mixed
    batches), or T full models."""
    setups = {task: prepare_task(config) for task, config in configs.items()}
    models = {task: setup.model.eval() for task, setup in setups.items()}
    if method != FULL:
        first = next(iter(models.values()))
        prefix = first.base_model_prefix
        backbone = getattr(first, prefix)
        for task, model in models.items():
            setattr(model, prefix, backbone)  # one base for every task; each keeps its own head
            options = with_members(backbone, method, configs[task].adapter_options)
            attach(backbone, method, adapter_name(task), **options)
        if any(a._site.kind == "model" for a in _adapters(backbone)):
            return {"method": method, "refused": "its adapters hook the model call, so they cannot be switched "
                                                 "or mixed under per-task heads on one base"}
    examples = {task: _task_examples(setup, batch_size) for task, setup in setups.items()}
    batches = {task: [_collated(setups[task].data_collator, items[i:i + batch_size])
                      for i in range(0, len(items), batch_size)] for task, items in examples.items()}
    stream = _stream(batches)
    elapsed = _timed(lambda task, batch: _serve(models, method, task, batch), stream, len(batches))
    served = sum(_examples(b) for _, b in stream)
    switches = sum(1 for a, b in itertools.pairwise(stream) if a[0] != b[0])
    row = {"method": method, "tasks": len(models), "examples": served, "batches": len(stream),
           "switches": switches, "examples_per_s": round(served / elapsed, 2),
           "parameter_mb": round(_parameter_mb(list(models.values())), 1)}
    if method != FULL:
        row["mixed"] = _mixed(models, setups, examples, batch_size)
    return row


def with_members(backbone: torch.nn.Module, method: str, options: dict[str, Any]) -> dict[str, Any]:
    """A composing method's options (fusion) with its members attached to `backbone` first, freshly from their saved
    configs (weights do not change forward time), once for all the tasks that share them, and named."""
    config = make_config(method, **options)
    if not is_composing(config):
        return options
    for member, path in config.member_paths().items():
        if member not in adapter_names(backbone):
            attach(backbone, config_from_dict(read_adapter_config(path), source=str(path)), member)
    return {**options, "adapters": config.member_names()}


def _serve(models: dict[str, torch.nn.Module], method: str, task: str, batch: dict[str, torch.Tensor]) -> None:
    model = models[task]
    if method != FULL:
        set_active(getattr(model, model.base_model_prefix), adapter_name(task), trainable=False)
    model(**batch)


def _batching(setup: Any) -> tuple[str, ...]:
    """What decides how a task's examples batch: its model class, its collator and (multiple choice) its choices."""
    collator = setup.data_collator
    return (type(setup.model).__name__, getattr(collator, "__name__", type(collator).__name__),
            str(getattr(collator, "num_choices", "")))


def _mixed(models: dict[str, torch.nn.Module], setups: dict[str, Any], examples: dict[str, list[dict[str, Any]]],
           batch_size: int) -> dict[str, Any]:
    """The mixed-batch figures ({"refused": why} where the adapters cannot run per row). Tasks whose inputs batch
    alike (`_batching`) share batches; tasks that batch differently (sequence classification beside multiple
    choice) cannot share a tensor, so each such group is batched on its own and the groups' batches interleave."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for task, setup in setups.items():
        groups.setdefault(_batching(setup), []).append(task)
    stream = []
    for seed, tasks in enumerate(groups.values()):
        stream += _mixed_stream({t: examples[t] for t in tasks}, setups[tasks[0]].data_collator, batch_size, seed)
    random.Random(len(groups)).shuffle(stream)

    def serve(tasks: list[str], batch: dict[str, torch.Tensor]) -> None:
        mixed_heads(models, batch, tasks, [adapter_name(t) for t in tasks])

    try:
        elapsed = _timed(serve, stream, len(models))
    except AdapterError as error:
        return {"refused": str(error).rstrip(".")}
    served = sum(_examples(b) for _, b in stream)
    return {"examples": served, "batches": len(stream), "examples_per_s": round(served / elapsed, 2),
            "tasks_per_batch": round(sum(len(set(t)) for t, _ in stream) / len(stream), 2),
            "input_kinds": len(groups)}


def _adapters(module: torch.nn.Module) -> list[Any]:
    from ..core.engine import placed

    return [adapter for _, _, adapter in placed(module)]
