"""A trained run as one object: `RunFolder(path)` reads its settings, labels and prompt template, tells a full
fine-tuning from an adapter run, `open()`s it as a model and processor, and applies the one resume / overwrite
policy. Every path that reopens a run (train's resume, restore, export, classification eval, eval's template)
goes through it, so they cannot disagree about what a run folder holds.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..core.checkpoint import CONFIG_NAME, load_adapter, read_adapter_config
from ..interop.peft import load_peft
from ..errors import AdapterError, MissingPathError, RunFolderError, UsageError
from ..files import read_json_object
from ..models import load_model
from ..tasks import CLASSIFICATION, TASKS, task_module
from ..tasks.base import TaskOptions
from ..tasks.scratch import is_config_spec
from .checkpointing import HEAD_NAME, load_head
from .config import TrainConfig
from .run_dir import CONFIG_FILE, check_new_run, check_run_dir, read_run_config
from .trainable import is_full

LABELS_FILE = "labels.json"


class RunFolder:
    """The folder `adapterlab train` wrote (or an adapter folder saved by save_adapter or PEFT, which has no
    settings): what it was trained with, and the trained model it holds."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @classmethod
    def around(cls, folder: str | os.PathLike) -> RunFolder | None:
        """The run whose train_config.yaml is in `folder` or the folder above it (an adapter saved inside a run)."""
        for place in (Path(folder), Path(folder).parent):
            if (place / CONFIG_FILE).is_file():
                return cls(place)
        return None

    @functools.cached_property
    def settings(self) -> dict[str, Any] | None:
        """The saved settings (train_config.yaml, flat keys as every version wrote them), or None without a run."""
        return read_run_config(self.path) if self.path.is_dir() else None

    @property
    def is_run(self) -> bool:
        """Whether the folder holds a training run's settings (else at most an adapter folder)."""
        return isinstance(self.settings, dict)

    @property
    def config(self) -> TrainConfig:
        """The run's settings as a TrainConfig (coerced and checked by name, as a --config file is)."""
        if not self.is_run:
            raise MissingPathError(f"{self.path} holds no run ({CONFIG_FILE} missing); pass a training run folder.")
        return TrainConfig.from_dict(self.settings, source=str(self.path / CONFIG_FILE))

    @property
    def model(self) -> str | None:
        """The base model spec the run trained on."""
        return (self.settings or {}).get("model")

    @property
    def task(self) -> str:
        """The task the run trained (a run's config always holds it; an adapter folder's is causal-lm)."""
        return (self.settings or {}).get("task", "causal-lm")

    @property
    def full(self) -> bool:
        """Whether the run fine-tuned every weight (the folder then is a plain transformers model)."""
        return is_full((self.settings or {}).get("adapter"))

    @property
    def template(self) -> str | None:
        """The prompt template the run trained with; None when the folder holds no readable settings."""
        try:
            template = (self.settings or {}).get("template")
        except AdapterError:  # a damaged train_config.yaml names no template
            return None
        return template if isinstance(template, str) else None

    @property
    def labels(self) -> list[str] | None:
        """The class names by class id (labels.json), or None when the run wrote none (not a classification)."""
        file = self.path / LABELS_FILE
        if not file.is_file():
            return None
        labels = read_json_object(file, "train the run again, or restore the file").get("labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise RunFolderError(f"{file} holds no list of label names under 'labels'; restore the file.")
        return labels

    def task_options(self, model: str | None = None) -> TaskOptions:
        """What the run's task received in training (the base `model` where it moved since)."""
        options = self.config.task_options()
        return dataclasses.replace(options, model=model or options.model)

    def check(self, config: TrainConfig) -> Path | None:
        """The resume / overwrite policy for training `config` into this folder; returns the checkpoint to resume
        from. Every refusal is a RunClashError (see run_dir.check_run_dir)."""
        return check_run_dir(self.path, config)

    def check_new(self, overwrite: bool) -> None:
        """The same policy for a run that keeps no checkpoints (multi-task): earlier outputs need --overwrite."""
        check_new_run(self.path, overwrite)

    def open(self, model: str | None = None, *, task: str | None = None,
             dtype: str | None = None) -> tuple[nn.Module, Any]:
        """(the trained model, its tokenizer or processor): a full fine-tuning's saved model, or the base model
        built as training built it with the adapter (adapterlab's or PEFT's) and the trained head. `model` names
        the base where it moved since training (needed for an adapter folder without settings); `task` must be
        the run's own."""
        if not self.path.is_dir():
            raise MissingPathError(f"--adapter-path {self.path}: no such folder; pass a training run folder or an "
                                   "adapter folder.")
        if self.full:
            return self._open_full(model)
        if not (self.path / CONFIG_NAME).is_file():
            if self.is_run:
                raise MissingPathError(f"{self.path / CONFIG_NAME} is missing: the {self.task} run in {self.path} "
                                       "did not finish; evaluate it once training has finished, or resume it "
                                       "(--resume).")
            raise MissingPathError(f"--adapter-path {self.path} holds no {CONFIG_NAME}; pass the folder `adapterlab "
                                   "train` wrote, or one written by save_adapter or PEFT.")
        spec = model or self.model
        if not spec:
            raise UsageError(f"--adapter-path {self.path} is an adapter folder without a run's {CONFIG_FILE}; pass "
                             "--model, the base model it was trained on.")
        if task and self.is_run and task != self.task:
            raise UsageError(f"--task {task}: the run in {self.path} trained a {self.task} model; its adapter and "
                             f"head fit that task only. Drop --task, or pass --task {self.task}.")
        task = task or self.task
        network, processor = self._base(spec, task, dtype)
        if "peft_type" in read_adapter_config(self.path):
            load_peft(network, self.path)
            head = load_head(network, self.path)
        else:
            load_adapter(network, self.path)  # IncompatibleAdapterError names both base models
            head = load_head(network, self.path)
        if not head and self.is_run and task in CLASSIFICATION:
            raise MissingPathError(f"{self.path / HEAD_NAME} is missing, so the trained classification head is "
                                   "too; restore it from a copy of the run, or train the run again.")
        return network, processor

    def _base(self, spec: str, task: str, dtype: str | None) -> tuple[nn.Module, Any]:
        """The base model with the run's head, built as training built it: a classification run's through its
        task's build_model (a `config:` spec from the run's seed), else loaded and fitted to the saved settings."""
        labels = self.labels
        if self.is_run and task in CLASSIFICATION:
            network, processor = task_module(task).build_model(self.task_options(spec), labels)
            if dtype not in (None, "auto"):
                from ..models.loading import parse_dtype

                network.to(dtype=parse_dtype(dtype))
            return network, processor
        if is_config_spec(spec):
            raise UsageError(f"The run in {self.path} trained on {spec!r}, a model built from a config with random "
                             "weights that cannot be loaded again; pass --model with a saved base model.")
        network, processor = load_model(spec, task=task, label_names=labels, dtype=dtype)
        fit = getattr(task_module(task), "fit", None) if task in TASKS else None
        if fit is not None:  # as the task's build_model did in training (AST's --max-length, --pooling)
            fit(network, processor, self.settings or {}, spec)
        return network, processor

    def _open_full(self, model: str | None) -> tuple[nn.Module, Any]:
        """A full fine-tuning's folder is the whole model; what it does not hold (--pooling) comes from the settings."""
        if model is not None:
            raise UsageError(f"--model {model}: the run in {self.path} fine-tuned every weight and holds the whole "
                             "model; drop --model.")
        network, processor = load_model(str(self.path), task=self.task)
        fit = getattr(task_module(self.task), "fit", None)
        if fit is not None:
            fit(network, processor, self.task_options().options, str(self.path))
        return network, processor


__all__ = ["LABELS_FILE", "RunFolder"]
