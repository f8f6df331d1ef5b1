"""Rebuild a trained model from a run folder or an adapter folder: the base model (the run's
train_config.yaml names it, or the caller does), the adapter, and for classification the trained head and
label names. PEFT adapter folders load too (through load_peft)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ..core.checkpoint import CONFIG_NAME, read_adapter_config
from ..interop.peft import load_peft
from ..errors import MissingPathError, UsageError
from ..files import read_json_object
from ..models import load_model
from ..tasks import TASKS, task_module
from ..tasks.scratch import is_config_spec
from . import load_run
from .checkpointing import load_head
from .run_dir import CONFIG_FILE, read_run_config


def restore_run(path: str | os.PathLike, *, model: str | None = None, task: str | None = None,
                dtype: str | None = None) -> tuple[nn.Module, Any, str]:
    """(model with the adapter and head of `path`, its tokenizer or processor, the task). `model` and `task`
    default to the run's own (from its train_config.yaml); an adapter folder without one needs `model`."""
    folder = Path(path)
    if not folder.is_dir():
        raise MissingPathError(f"--adapter-path {folder}: no such folder; pass a training run folder or an "
                               "adapter folder.")
    saved = read_run_config(folder) or {}
    if saved.get("adapter") == "full":
        raise UsageError(f"{folder} is a full fine-tuning run: the folder already is a plain transformers model; "
                         "load it with from_pretrained.")
    if not (folder / CONFIG_NAME).is_file():
        raise MissingPathError(f"--adapter-path {folder} holds no {CONFIG_NAME}; pass the folder `adapterlab "
                               "train` wrote, or one written by save_adapter or PEFT.")
    spec = model or saved.get("model")
    if not spec:
        raise UsageError(f"--adapter-path {folder} is an adapter folder without a run's {CONFIG_FILE}; pass "
                         "--model, the base model it was trained on.")
    if is_config_spec(spec):
        raise UsageError(f"The run in {folder} trained on {spec!r}, a model built from a config with random "
                         "weights that cannot be loaded again; pass --model with a saved base model.")
    trained_task = saved.get("task", "causal-lm") if saved else None  # a run's config always holds its task
    if task and trained_task and task != trained_task:
        raise UsageError(f"--task {task}: the run in {folder} trained a {trained_task} model; its adapter and head "
                         f"fit that task only. Drop --task, or pass --task {trained_task}.")
    task = task or trained_task or "causal-lm"
    labels = None
    if (folder / "labels.json").is_file():
        labels = read_json_object(folder / "labels.json", "train the run again").get("labels")
    trained, processor = load_model(spec, task=task, label_names=labels, dtype=dtype)
    fit = getattr(task_module(task), "fit", None) if task in TASKS else None
    if fit is not None:  # as the task's build_model did in training (AST's --max-length, --pooling)
        fit(trained, processor, saved, spec)
    if "peft_type" in read_adapter_config(folder):
        load_peft(trained, folder)
        load_head(trained, folder)
    else:
        load_run(trained, folder)
    return trained, processor, task
