"""Serving latency of a method on real dev inputs: batches of 1 and 32 (by default), against full fine-tuning's
model, unmerged and merged, timed interleaved with repeats so that a ratio carries its own noise.

Weights do not change the time of a forward, so this times the method freshly attached to the task's model
with its head (no training needed), beside a copy of that model without the method: exactly what full
fine-tuning serves. The models run interleaved batch by batch (A B C, then B C A, ...), after an untimed warm-up
forward each, so order, warm-up and machine load hit them alike; each repeat gives every model its mean
milliseconds per batch over the same batches, and results.json keeps every repeat (ratios are formed per repeat).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ..core.engine import merge
from ..errors import NotMergeableError
from ..train.recipe import make_trainable, prepare_task
from ..train.trainable import FULL

REPEATS = 7  # interleaved repeats per batch size: the spread of the per-repeat ratios is the noise a verdict clears
BATCHES_PER_REPEAT = 3  # distinct dev batches each model runs in every repeat (after one untimed warm-up batch)


def _batches(dataset: list[dict[str, Any]], collator: Any, size: int) -> list[dict[str, torch.Tensor]]:
    count = min(BATCHES_PER_REPEAT + 1, max(1, len(dataset) // size))
    batches = [collator([dict(x) for x in dataset[i * size:(i + 1) * size]]) for i in range(count)]
    return [{k: v for k, v in b.items() if k != "labels"} for b in batches]


def _forward_ms(model: Callable[..., Any], batch: dict[str, torch.Tensor]) -> float:
    start = time.perf_counter()
    model(**batch)
    return (time.perf_counter() - start) * 1000


def time_interleaved(models: dict[str, Callable[..., Any]], batches: list[dict[str, torch.Tensor]],
                     repeats: int = REPEATS) -> dict[str, list[float]]:
    """Per model, its mean ms per batch in each repeat: the first batch warms every model up untimed, then each
    repeat runs every remaining batch on every model back to back, the order rotating from one batch to the next."""
    names = list(models)
    for name in names:
        _forward_ms(models[name], batches[0])
    timed = batches[1:] or batches
    per_repeat: dict[str, list[float]] = {name: [] for name in names}
    turn = 0
    for _ in range(repeats):
        total = dict.fromkeys(names, 0.0)
        for batch in timed:
            for name in names[turn % len(names):] + names[:turn % len(names)]:
                total[name] += _forward_ms(models[name], batch)
            turn += 1
        for name in names:
            per_repeat[name].append(round(total[name] / len(timed), 4))
    return per_repeat


def size_result(per_repeat: dict[str, list[float]], batches: int, batch_size: int) -> dict[str, Any]:
    """What a record keeps for one batch size: median ms of the method unmerged and merged (None: cannot merge),
    and every repeat's ms per model ("full" is full fine-tuning's model timed beside it)."""
    return {"unmerged_ms": round(statistics.median(per_repeat["unmerged"]), 3),
            "merged_ms": round(statistics.median(per_repeat["merged"]), 3) if "merged" in per_repeat else None,
            "repeats": per_repeat, "batches": batches, "batch_size": batch_size}


def serving_latency(config: Any, batch_sizes: tuple[int, ...] = (1, 32), repeats: int = REPEATS) -> dict[str, Any]:
    """{"b1": size_result(...), "b32": ...} for the method of `config`; for full fine-tuning only its own model."""
    setup = prepare_task(config)
    model = setup.model
    models: dict[str, torch.nn.Module] = {}
    if config.adapter != FULL:
        models[FULL] = copy.deepcopy(model).eval()  # the same model with its head, without the method
    make_trainable(model, config, setup.trainable_modules, setup.frozen_modules)
    models["unmerged"] = model.eval()
    if config.adapter != FULL:
        merged = copy.deepcopy(model)
        try:
            merge(merged)
            models["merged"] = merged
        except NotMergeableError:
            pass
    dev = list(setup.eval_dataset or setup.train_dataset)
    result: dict[str, Any] = {}
    with torch.inference_mode():
        for size in batch_sizes:
            batches = _batches(dev, setup.data_collator, size)
            per_repeat = time_interleaved(models, batches, repeats)
            result[f"b{size}"] = size_result(per_repeat, len(batches[1:] or batches),
                                             int(next(iter(batches[0].values())).shape[0]))
    return result
