"""A trained classification run (`adapterlab train --task seq-cls | audio-cls | image-cls`) made ready to evaluate:
its settings and labels read from the run folder, its labelled test data read by the task's own readers, and its
model rebuilt as training built it, with the trained adapter and head loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ..errors import DataError, MissingPathError
from ..tasks import CLASSIFICATION, task_module
from ..tasks.base import TaskOptions
from ..tasks.labelled import natural_key
from ..train.run_folder import LABELS_FILE, RunFolder


@dataclass
class ClassificationRun:
    """A run folder of a classification task: the run, its task's options and the label names by class id."""

    run: RunFolder
    options: TaskOptions
    labels: list[str]

    @property
    def folder(self) -> Path:
        return self.run.path

    @property
    def task(self) -> str:
        return self.run.task

    @property
    def adapter(self) -> str:
        """The method, or "full" (the folder holds the whole fine-tuned model)."""
        return self.run.config.adapter

    @property
    def module(self) -> ModuleType:
        return task_module(self.task)


@dataclass
class LabelledSet:
    """One labelled test set, read as the run's task reads data: its examples, what a predictions row shows of
    each, their gold class ids and, once `encode`d with the model's processor, the examples as the model takes
    them (index-aligned)."""

    name: str
    source: str
    examples: list[Any]
    inputs: list[Any]
    gold: list[int]
    dataset: Any = None
    collator: Callable[[list[Any]], dict[str, Any]] | None = None


def read_classification_run(path: str | Path) -> ClassificationRun | None:
    """The classification run in folder `path`, or None when its train_config.yaml names another task (or there
    is none: an adapter saved by save_adapter, evaluated generatively)."""
    run = RunFolder(path)
    if not run.is_run or run.task not in CLASSIFICATION:
        return None
    options = run.task_options()  # the settings checked by name, as a --config file's
    labels = run.labels
    if labels is None:
        raise MissingPathError(f"{run.path / LABELS_FILE} is missing, so nothing says which class each output of the "
                               f"{run.task} run in {run.path} is; train the run again, or restore the file.")
    return ClassificationRun(run, options, labels)


def read_labelled_set(run: ClassificationRun, path: str, limit: int | None = None) -> LabelledSet:
    """The first `limit` (default all) examples of the labelled file or folder `path`, read by the run's task as it
    read its training data (its --text-column, --labels-csv, --label-pattern ...); labels the run never saw are
    refused, naming them. Needs no model, so a bad file costs no model load."""
    module = run.module
    examples, names = module.read_examples([path], run.options)
    unknown = sorted(set(names) - set(run.labels), key=natural_key)
    if unknown:
        raise DataError(f"{path} has labels {unknown} that the run in {run.folder} never saw (its labels: "
                        f"{run.labels}); remove those examples or evaluate a run trained with them.")
    if limit is not None:
        examples, names = examples[:limit], names[:limit]
    to_id = {name: i for i, name in enumerate(run.labels)}
    name = Path(path).stem if Path(path).is_file() else Path(path).resolve().name
    return LabelledSet(name, str(path), examples, [module.describe(e) for e in examples], [to_id[n] for n in names])


def encode(run: ClassificationRun, data: LabelledSet, processor: Any) -> LabelledSet:
    """`data` with its examples turned into model inputs by the run's processor (and --cutoff-len ...)."""
    dataset, collator = run.module.make_dataset(data.examples, data.gold, processor, run.options)
    return dataclasses.replace(data, dataset=dataset, collator=collator)


def load_classification_run(run: ClassificationRun, model: str | None = None) -> tuple[nn.Module, Any]:
    """(model with the run's adapter and trained head, its processor), in eval mode (`RunFolder.open`). `model`
    names where the base model is now, when it moved since training."""
    network, processor = run.run.open(model)
    return network.eval(), processor


def place(model: nn.Module, dtype: torch.dtype | str | None, device: str | None) -> nn.Module:
    """The model in `dtype` (a torch dtype; None or "auto" keep the run's) on `device` (None keeps the CPU)."""
    if isinstance(dtype, torch.dtype):
        model.to(dtype=dtype)
    if device is not None:
        model.to(device)
    return model
