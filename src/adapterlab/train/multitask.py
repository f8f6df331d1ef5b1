"""Multi-task full fine-tuning's pieces: one shared encoder with one head per task, batches of one task each.

As Mundra et al. (2023) train it (their MultitaskModel / MultitaskDataloader): every task's model is built from
the same base, then the first one's backbone module (`model.<base_model_prefix>`, e.g. `bert`) is assigned into
the others, so one set of encoder weights serves every head; each batch holds examples of one task, and the
tasks come in a random order in which each appears as often as it has batches (size-proportional sampling).
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn
from torch.utils.data import Dataset, Sampler

from ..errors import ModelError


def backbone_of(model: nn.Module) -> nn.Module:
    """The encoder a transformers task model wraps (`model.base_model_prefix`), the part tasks share."""
    prefix = getattr(model, "base_model_prefix", "")
    backbone = getattr(model, prefix, None) if prefix else None
    if not isinstance(backbone, nn.Module):
        raise ModelError(f"{type(model).__name__} has no backbone module named by its base_model_prefix "
                         f"({prefix!r}); multi-task training shares that module between the tasks' heads, so "
                         "use a transformers model with a task head.")
    return backbone


class MultiTaskModel(nn.Module):
    """Task models that share one backbone; forward(task=NAME, **batch) runs that task's model.

    The task models stay what their tasks built (backbone + head), so losses, outputs and metrics are theirs;
    `named_parameters()` lists the shared encoder once.
    """

    accepts_loss_kwargs = False  # the Trainer passes num_items_in_batch only to models that take it

    def __init__(self, models: dict[str, nn.Module]) -> None:
        super().__init__()
        if not models:
            raise ModelError("A multi-task model needs at least one task model.")
        self.tasks = nn.ModuleDict()
        first = next(iter(models.values()))
        self.prefix = first.base_model_prefix
        self.main_input_name = getattr(first, "main_input_name", "input_ids")
        for name, model in models.items():
            self.add_task(name, model)

    @property
    def encoder(self) -> nn.Module:
        return backbone_of(next(iter(self.tasks.values())))

    def add_task(self, name: str, model: nn.Module) -> None:
        """Add a task model, its backbone replaced by the shared one (its own encoder weights are dropped)."""
        backbone = backbone_of(model)
        if name in self.tasks:
            raise ModelError(f"The multi-task model already has a task named {name!r}.")
        if len(self.tasks):
            shared = self.encoder
            shapes = [(n, tuple(p.shape)) for n, p in backbone.named_parameters()]
            if type(backbone) is not type(shared) or shapes != [(n, tuple(p.shape)) for n, p in shared.named_parameters()]:
                raise ModelError(f"Task {name!r} was built on another encoder ({type(backbone).__name__}) than the "
                                 f"shared one ({type(shared).__name__}); build every task from the same --model.")
            setattr(model, model.base_model_prefix, shared)
        self.tasks[name] = model

    def head_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """The parameters of task `name` outside the shared encoder (its head), keyed by their path in its model."""
        shared = {id(p) for p in self.encoder.parameters()}
        return {n: p for n, p in self.tasks[name].named_parameters() if id(p) not in shared}

    def forward(self, task: str, **batch: Any) -> Any:
        return self.tasks[task](**batch)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """Activation checkpointing in the shared encoder (the Trainer calls this for --gradient-checkpointing)."""
        for model in self.tasks.values():
            model.gradient_checkpointing_enable(**kwargs)


class TaskExamples(Dataset):
    """The examples of several tasks end to end; item i is (task name, example)."""

    def __init__(self, datasets: dict[str, Any]) -> None:
        self.names = list(datasets)
        self.datasets = [datasets[n] for n in self.names]
        self.sizes = [len(d) for d in self.datasets]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]

    def __len__(self) -> int:
        return sum(self.sizes)

    def __getitem__(self, index: int) -> tuple[str, Any]:
        task = bisect.bisect_right(self.offsets, index) - 1
        return self.names[task], self.datasets[task][index - self.offsets[task]]


class TaskCollator:
    """Collate a batch of one task with that task's own collator and tag it with the task name."""

    def __init__(self, collators: dict[str, Callable | None]) -> None:
        self.collators = collators

    def __call__(self, items: list[tuple[str, Any]]) -> dict[str, Any]:
        names = {name for name, _ in items}
        if len(names) != 1:
            raise ValueError(f"A multi-task batch must hold one task's examples, got {sorted(names)}.")
        (name,) = names
        collate = self.collators[name]
        if collate is None:
            from torch.utils.data import default_collate as collate
        batch = dict(collate([example for _, example in items]))
        batch["task"] = name  # a string: the Trainer moves only tensors to the device
        return batch


class ProportionalTaskBatches(Sampler[list[int]]):
    """Batches (lists of indices into TaskExamples) of one task each; per epoch every task's examples are
    shuffled into batches, and the order of tasks is a seeded shuffle in which each task appears once per
    batch it has, so tasks are drawn in proportion to their size (Mundra et al.'s MultitaskDataloader)."""

    def __init__(self, sizes: list[int], batch_size: int, seed: int) -> None:
        super().__init__()
        if batch_size < 1 or not sizes or min(sizes) < 1:
            raise ValueError(f"Every task needs examples and the batch size must be positive ({sizes}, {batch_size}).")
        self.sizes, self.batch_size, self.seed, self.epoch = list(sizes), batch_size, seed, 0
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]

    def batches_per_task(self) -> list[int]:
        return [math.ceil(n / self.batch_size) for n in self.sizes]

    def __len__(self) -> int:
        return sum(self.batches_per_task())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1  # a loader that never calls set_epoch still gets a new order per epoch
        queues = []
        for size, start in zip(self.sizes, self.offsets):
            order = [start + i for i in rng.sample(range(size), size)]
            queues.append(iter([order[i:i + self.batch_size] for i in range(0, size, self.batch_size)]))
        tasks = [t for t, count in enumerate(self.batches_per_task()) for _ in range(count)]
        rng.shuffle(tasks)
        for task in tasks:
            yield next(queues[task])
