"""Rebuild a trained model from a run folder or an adapter folder for export: `RunFolder.open`, refusing a full
fine-tuning run (its folder already is a plain transformers model) and a base that cannot be loaded again."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from ..core.checkpoint import CONFIG_NAME
from ..errors import UsageError
from ..tasks.scratch import is_config_spec
from .run_folder import RunFolder


def restore_run(path: str | os.PathLike, *, model: str | None = None, task: str | None = None,
                dtype: str | None = None) -> tuple[nn.Module, Any, str]:
    """(model with the adapter and head of `path`, its tokenizer or processor, the task). `model` and `task`
    default to the run's own (from its train_config.yaml); an adapter folder without one needs `model`."""
    run = RunFolder(path)
    if run.path.is_dir() and run.full:
        raise UsageError(f"{run.path} is a full fine-tuning run: the folder already is a plain transformers model; "
                         "load it with from_pretrained.")
    spec = model or run.model
    if spec and is_config_spec(spec) and (run.path / CONFIG_NAME).is_file():
        raise UsageError(f"The run in {run.path} trained on {spec!r}, a model built from a config with random "
                         "weights that cannot be loaded again; pass --model with a saved base model.")
    trained, processor = run.open(model, task=task, dtype=dtype)
    return trained, processor, task or run.task
