"""Serving latency of a method on real dev inputs: batches of 1 and 32 (by default), unmerged and merged.

Weights do not change the time of a forward, so this times the method freshly attached to the task's model
with its head (no training needed); the unmerged and merged models run interleaved, batch by batch, so machine
load hits both alike. Medians over the batches, in milliseconds per batch.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch

from ..engine import merge
from ..errors import NotMergeableError
from ..train.recipe import make_trainable, prepare_task

BATCHES_PER_SIZE = 12  # timed batches per batch size (after one untimed warm-up batch)


def _batches(dataset: list[dict[str, Any]], collator: Any, size: int) -> list[dict[str, torch.Tensor]]:
    count = min(BATCHES_PER_SIZE + 1, max(1, len(dataset) // size))
    return [collator([dict(x) for x in dataset[i * size:(i + 1) * size]]) for i in range(count)]


def _forward_ms(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    start = time.perf_counter()
    model(**inputs)
    return (time.perf_counter() - start) * 1000


def serving_latency(config: Any, batch_sizes: tuple[int, ...] = (1, 32)) -> dict[str, Any]:
    """{"b1": {"unmerged_ms", "merged_ms"}, "b32": {...}}; merged is None where the method cannot merge."""
    setup = prepare_task(config)
    model = setup.model
    make_trainable(model, config, setup.trainable_modules, setup.frozen_modules)
    model.eval()
    merged: torch.nn.Module | None = None
    if config.adapter != "full":
        merged = copy.deepcopy(model)
        try:
            merge(merged)
        except NotMergeableError:
            merged = None
    dev = list(setup.eval_dataset or setup.train_dataset)
    result: dict[str, Any] = {}
    with torch.inference_mode():
        for size in batch_sizes:
            batches = _batches(dev, setup.data_collator, size)
            times: dict[str, list[float]] = {"unmerged": [], "merged": []}
            for i, batch in enumerate(batches):
                for name, m in (("unmerged", model), ("merged", merged)):
                    if m is not None:
                        elapsed = _forward_ms(m, batch)
                        if i or len(batches) == 1:  # the first batch warms up
                            times[name].append(elapsed)
            result[f"b{size}"] = {
                "unmerged_ms": round(statistics.median(times["unmerged"]), 3),
                "merged_ms": round(statistics.median(times["merged"]), 3) if times["merged"] else None,
                "batches": len(times["unmerged"]), "batch_size": int(batches[0]["input_ids"].shape[0])
                if "input_ids" in batches[0] else size,
            }
    return result
