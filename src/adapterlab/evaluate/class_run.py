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

from ..core.checkpoint import CONFIG_NAME, load_adapter
from ..errors import DataError, MissingPathError, RunFolderError, UsageError
from ..files import read_json_object
from ..tasks import CLASSIFICATION, task_module
from ..tasks.base import TaskOptions
from ..tasks.labelled import natural_key

RUN_CONFIG = "train_config.yaml"
LABELS_FILE = "labels.json"


@dataclass
class ClassificationRun:
    """A run folder of a classification task: its settings, the task module and the label names by class id."""

    folder: Path
    task: str
    adapter: str  # the method, or "full" (the folder holds the whole fine-tuned model)
    options: TaskOptions
    labels: list[str]

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
    from ..train import TrainConfig
    from ..train.recipe import task_options
    from ..train.run_dir import read_run_config

    folder = Path(path)
    saved = read_run_config(folder) if folder.is_dir() else None
    if not isinstance(saved, dict) or saved.get("task") not in CLASSIFICATION:
        return None
    config = TrainConfig.from_dict(saved, source=str(folder / RUN_CONFIG))
    labels_file = folder / LABELS_FILE
    if not labels_file.is_file():
        raise MissingPathError(f"{labels_file} is missing, so nothing says which class each output of the "
                               f"{config.task} run in {folder} is; train the run again, or restore the file.")
    labels = read_json_object(labels_file, "train the run again, or restore the file").get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise RunFolderError(f"{labels_file} holds no list of label names under 'labels'; restore the file.")
    return ClassificationRun(folder, config.task, config.adapter, task_options(config), labels)


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
    """(model with the run's adapter and trained head, its processor), in eval mode. The base model is built as
    training built it (a `config:` spec from the run's seed); `model` names where the base model is now, when
    it moved since training."""
    if run.adapter == "full":
        if model is not None:
            raise UsageError(f"--model {model}: the run in {run.folder} fine-tuned every weight and holds the whole "
                             "model; drop --model.")
        from ..models import load_model

        network, processor = load_model(str(run.folder), task=run.task)
        fit = getattr(run.module, "fit", None)
        if fit is not None:  # what the saved transformers model does not hold (audio-cls --pooling)
            fit(network, processor, run.options.options, str(run.folder))
        return network, processor
    if not (run.folder / CONFIG_NAME).is_file():
        raise MissingPathError(f"{run.folder / CONFIG_NAME} is missing: the {run.task} run in {run.folder} did not "
                               "finish; evaluate it once training has finished, or resume it (--resume).")
    options = dataclasses.replace(run.options, model=model or run.options.model)
    network, processor = run.module.build_model(options, run.labels)
    load_adapter(network, run.folder)  # IncompatibleAdapterError names both base models
    from ..train.checkpointing import HEAD_NAME, load_head

    if not load_head(network, run.folder):
        raise MissingPathError(f"{run.folder / HEAD_NAME} is missing, so the trained classification head is "
                               "too; restore it from a copy of the run, or train the run again.")
    return network.eval(), processor


def place(model: nn.Module, dtype: torch.dtype | str | None, device: str | None) -> nn.Module:
    """The model in `dtype` (a torch dtype; None or "auto" keep the run's) on `device` (None keeps the CPU)."""
    if isinstance(dtype, torch.dtype):
        model.to(dtype=dtype)
    if device is not None:
        model.to(device)
    return model
