"""The causal-LM training loss with the LM head at the labelled positions only (issue #21): with the prompt masked
most positions carry no loss, so the head and the cross-entropy run on the N next-token rows that do.

The loss is the model's own (transformers' ForCausalLMLoss without num_items_in_batch: float logits, mean over the
labels other than -100), so the Trainer scales it as before; the adapter's gradients are those of the full head.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.head_rows import logits_at, next_token_positions, next_token_targets, output_head, shifts_labels


def applies(trainer: Any, model: nn.Module, inputs: dict[str, Any]) -> bool:
    """Whether the training loss of this batch can be computed at the labelled positions only: a causal LM whose
    loss is transformers' own (no compute_loss_func or label smoothing), with an output head and 2-D labels."""
    labels = inputs.get("labels")
    return (model.training and trainer.compute_loss_func is None and trainer.label_smoother is None
            and shifts_labels(model)
            and output_head(model) is not None and torch.is_tensor(labels) and labels.dim() == 2)


def labelled_positions_loss(model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, Any] | None:
    """(mean next-token cross-entropy over the labelled positions, the outputs), the head run at those positions
    only; None where that saves nothing or is not defined (every position labelled, none labelled)."""
    labels, shifted = inputs["labels"], inputs.get("shift_labels")
    positions = next_token_positions(labels, shifted)
    count = int(positions.sum())
    if count == 0 or count == labels.shape[0] * (labels.shape[1] - (shifted is None)):
        return None
    forward = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels")}
    logits, outputs = logits_at(model, forward, positions)
    targets = next_token_targets(labels, shifted).to(logits.device)
    loss = F.cross_entropy(logits.float(), targets)  # as ForCausalLMLoss: float logits, mean over the items
    outputs.logits = logits
    return loss, outputs


__all__ = ["applies", "labelled_positions_loss"]
