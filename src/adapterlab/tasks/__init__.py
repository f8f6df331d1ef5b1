"""Training tasks: each turns a model spec and data options into what the training recipe needs.

A task module exposes `prepare(options: TaskOptions) -> TaskSetup` and `TRAIN_FIELDS`, the per-task
`TrainConfig` fields it reads (the others are refused when set, see `TrainConfig.validate`); it may give
`NOT_APPLICABLE`, field -> why it refuses that field. `TASKS` maps the task name used by
`adapterlab train --task` to its module; one line per task.

A classification task module (CLASSIFICATION) also exposes the steps its `prepare` is made of, which
`adapterlab eval` reuses on a trained run: `read_examples(paths, options) -> (examples, label names)`,
`build_model(options, labels) -> (model, processor)`, `make_dataset(examples, label ids, processor, options)
-> (dataset, collator)` and `describe(example)`, what a predictions row shows of an example. It may expose
`fit(model, processor, settings, spec)`: make a model loaded from saved weights (a full fine-tuning run, or
the base model `adapterlab export` loads) compute as `build_model` made it, from the run's saved settings.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import UsageError

TASKS: dict[str, str] = {
    "causal-lm": "adapterlab.tasks.causal_lm",
    "seq-cls": "adapterlab.tasks.classification",
    "audio-cls": "adapterlab.tasks.audio",
    "image-cls": "adapterlab.tasks.image",
    "multiple-choice": "adapterlab.tasks.multiple_choice",
}
CLASSIFICATION = ("seq-cls", "audio-cls", "image-cls")


def task_module(name: str) -> ModuleType:
    """The module of task `name`; an unknown name is refused with the known ones."""
    if name not in TASKS:
        raise UsageError(f"Unknown --task {name!r}; known tasks: {', '.join(TASKS)}.")
    return importlib.import_module(TASKS[name])


def tasks_reading(field: str) -> list[str]:
    """The tasks whose module lists `field` (a TrainConfig field name) in its TRAIN_FIELDS."""
    return [name for name in TASKS if field in task_module(name).TRAIN_FIELDS]
