"""The contract between a task (data + model head) and the training recipe in `adapterlab.train`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .options import Quantized


@dataclass
class TaskOptions:
    """What every task receives: the model spec, data paths and the task-specific options from the CLI."""

    model: str
    data: list[str]
    eval_data: list[str] | None = None
    val_size: int | float = 0
    seed: int = 42
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskSetup:
    """What a task hands the recipe: a model with the right head, datasets, collator and metric.

    `metric_name` is the dev metric used for best-checkpoint selection and early stopping (e.g.
    "eval_loss" or "eval_accuracy"); `processor` (tokenizer / feature extractor) is saved with the run.
    """

    model: nn.Module
    train_dataset: Any
    eval_dataset: Any | None
    data_collator: Callable | None
    processor: Any = None
    compute_metrics: Callable | None = None
    metric_name: str = "eval_loss"
    greater_is_better: bool = False
    num_tokens: int | None = None  # total training tokens per epoch, for tokens/s in the summary
    info: dict[str, Any] = field(default_factory=dict)  # reported in the run summary (e.g. decontamination)
    # Modules trained in full beside the adapter and saved with it (a new classification head: "classifier",
    # "score"), like PEFT's modules_to_save; paths as in model.named_modules().
    trainable_modules: list[str] = field(default_factory=list)
    # Base modules that stay frozen in full fine-tuning too (wav2vec2's convolutional feature encoder, as
    # transformers' and the seed papers' recipes keep it); adapter methods freeze every base module anyway.
    frozen_modules: list[str] = field(default_factory=list)
    # The training loss when the model's own does not fit the task (multiple choice: cross entropy over the
    # choices), given to the HF Trainer as `compute_loss_func(outputs, labels, num_items_in_batch)`: it returns
    # the sum over the accumulated batch divided by num_items_in_batch when that is given, else the batch mean.
    compute_loss: Callable | None = None
    # A test set scored once after training, with the final (best dev) weights, by the same metric (a dataset
    # protocol's test fold or list); None: the run has none.
    test_dataset: Any | None = None
    # Training batches drawn by the Trainer's length-grouped sampler (records of similar length together, so a
    # padded batch carries little padding); only the order of the records changes, not their loss.
    group_by_length: bool = False


def quantization(options: dict[str, Any]) -> str | None:
    """The quantization the task's options ask the base to be loaded with (--load-8bit / --load-4bit), or None."""
    chosen = Quantized.of(options)
    return "8bit" if chosen.load_8bit else "4bit" if chosen.load_4bit else None
