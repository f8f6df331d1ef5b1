"""Serving every task of a comparison at once: T adapters on one shared base, switched per batch, against T fully
fine-tuned models, on the tasks' real dev inputs in one mixed stream of per-task batches.

The adapters go on the shared encoder (the backbone every task's model, with its own head, points at), so one
copy of the base weights serves all tasks; before each batch the task's adapter is made active. Methods whose
adapters hook the model call itself (prompt, prefix, P-tuning) cannot be switched under a head this way and are
reported as such. Weights do not change forward time, so freshly attached adapters are timed.
"""

from __future__ import annotations

import itertools
import random
import re
import time
from typing import Any

import torch

from ..core.engine import attach, set_active
from ..train.recipe import prepare_task
from ..train.trainable import FULL

BATCHES_PER_TASK = 6


def adapter_name(task: str) -> str:
    """The task's adapter name: its name made a Python identifier (arc-e -> arc_e)."""
    name = re.sub(r"\W", "_", task)
    return name if name.isidentifier() else f"task_{name}"


def _task_batches(setup: Any, batch_size: int) -> list[dict[str, torch.Tensor]]:
    dev = list(setup.eval_dataset or setup.train_dataset)
    count = min(BATCHES_PER_TASK, max(1, len(dev) // batch_size))
    batches = [setup.data_collator([dict(x) for x in dev[i * batch_size:(i + 1) * batch_size]]) for i in range(count)]
    return [{k: v for k, v in b.items() if k != "labels"} for b in batches]


def _stream(batches: dict[str, list[dict[str, torch.Tensor]]], seed: int = 0) -> list[tuple[str, dict]]:
    """Every task's batches in one seeded random order: a mixed stream of requests, one task per batch."""
    stream = [(task, batch) for task, items in batches.items() for batch in items]
    random.Random(seed).shuffle(stream)
    return stream


def _examples(batch: dict[str, torch.Tensor]) -> int:
    return int(next(iter(batch.values())).shape[0])


def _parameter_mb(modules: list[torch.nn.Module]) -> float:
    seen = {id(p): p for m in modules for p in m.parameters()}
    return sum(p.numel() * p.element_size() for p in seen.values()) / 2**20


def serving_throughput(configs: dict[str, Any], method: str, batch_size: int = 32) -> dict[str, Any]:
    """Examples per second over the mixed stream, and parameter megabytes held, for `method` serving every task
    of `configs` (task name -> its TrainConfig): one shared base with T adapters, or T full models."""
    setups = {task: prepare_task(config) for task, config in configs.items()}
    models = {task: setup.model.eval() for task, setup in setups.items()}
    if method != FULL:
        first = next(iter(models.values()))
        prefix = first.base_model_prefix
        backbone = getattr(first, prefix)
        for task, model in models.items():
            setattr(model, prefix, backbone)  # one base for every task; each keeps its own head
            attach(backbone, method, adapter_name(task), **configs[task].adapter_options)
        if any(a._site.kind == "model" for a in _adapters(backbone)):
            return {"method": method, "refused": "its adapters hook the model call, so they cannot be switched "
                                                 "under per-task heads on one base"}
    batches = {task: _task_batches(setup, batch_size) for task, setup in setups.items()}
    stream = _stream(batches)
    with torch.inference_mode():
        for task, batch in stream[:len(batches)]:  # warm-up: one batch of each task
            _serve(models, method, task, batch)
        start = time.perf_counter()
        for task, batch in stream:
            _serve(models, method, task, batch)
        elapsed = time.perf_counter() - start
    examples = sum(_examples(b) for _, b in stream)
    switches = sum(1 for a, b in itertools.pairwise(stream) if a[0] != b[0])
    return {"method": method, "tasks": len(models), "examples": examples, "batches": len(stream),
            "switches": switches, "examples_per_s": round(examples / elapsed, 2),
            "parameter_mb": round(_parameter_mb(list(models.values())), 1)}


def _serve(models: dict[str, torch.nn.Module], method: str, task: str, batch: dict[str, torch.Tensor]) -> None:
    model = models[task]
    if method != FULL:
        set_active(getattr(model, model.base_model_prefix), adapter_name(task), trainable=False)
    model(**batch)


def _adapters(module: torch.nn.Module) -> list[Any]:
    from ..core.engine import placed

    return [adapter for _, _, adapter in placed(module)]
