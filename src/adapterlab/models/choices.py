"""Multiple-choice scoring on any text model: (batch, choices, tokens) in, one score per choice out.

Families with a multiple-choice head (BERT, RoBERTa, ...) are loaded as transformers' AutoModelForMultipleChoice;
the others (decoders: LLaMA, Mistral, ...) as a sequence classifier with one output, which scores each
(question, choice) pair on its own. Two forward hooks on the model make both behave alike, without another
model class: before the forward, 3-D inputs are flattened to one row per pair where the model needs it; after
it, the logits are reshaped to (batch, choices). A choice whose attention mask is all zero is padding (questions
with fewer choices than others in the batch): it attends one token so the forward stays finite, and its score is
set to the dtype's minimum, so it takes no share of the softmax and never wins the argmax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# Inputs with a (batch, choices, ...) layout that a one-output-per-pair model wants as (batch * choices, ...).
PER_CHOICE_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


class ChoiceScoring:
    """The pair of hooks; `flatten` for models that take one row per pair (sequence classifiers)."""

    def __init__(self, flatten: bool) -> None:
        self.flatten = flatten
        self.shape: tuple[int, int, torch.Tensor] | None = None  # (batch, choices, padding) of the call under way

    def before(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        ids = kwargs.get("input_ids")
        if args or ids is None or ids.dim() != 3:
            self.shape = None  # an ordinary call (one row per sequence) passes through
            return None
        batch, choices = ids.shape[:2]
        attention = kwargs.get("attention_mask")
        if attention is None:
            attention = torch.ones_like(ids)
        padding = attention.sum(-1) == 0
        attention = attention.clone()
        attention[..., 0] = attention[..., 0].masked_fill(padding, 1)
        kwargs = {**kwargs, "attention_mask": attention}
        if self.flatten:
            kwargs.update({k: kwargs[k].flatten(0, 1) for k in PER_CHOICE_INPUTS
                           if isinstance(kwargs.get(k), torch.Tensor) and kwargs[k].dim() >= 3})
        self.shape = (batch, choices, padding)
        return args, kwargs

    def after(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        if self.shape is None or not hasattr(output, "logits"):
            return None
        batch, choices, padding = self.shape
        self.shape = None
        logits = output.logits.reshape(batch, choices)
        output.logits = logits.masked_fill(padding.to(logits.device), torch.finfo(logits.dtype).min)
        return output


def add_choice_scoring(model: nn.Module, flatten: bool) -> nn.Module:
    """Let `model` take (batch, choices, tokens) inputs and return (batch, choices) logits (see the module doc)."""
    scoring = ChoiceScoring(flatten)
    model.register_forward_pre_hook(scoring.before, with_kwargs=True)
    model.register_forward_hook(scoring.after, with_kwargs=True)
    return model


def choice_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """Cross entropy of the (batch, choices) logits against the gold indices: a sum over the accumulated batch's
    questions divided by their count when the Trainer gives it, else the mean over this batch."""
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    losses = nn.functional.cross_entropy(logits.float(), labels.to(logits.device), reduction="none")
    if num_items_in_batch is None:
        return losses.mean()
    return losses.sum() / num_items_in_batch


def note_replaced_head(loading_info: dict[str, Any], log: Callable[[str], None]) -> None:
    """Say (one line) that the checkpoint's own head, e.g. a 2-way classifier, had another shape than a choice
    head and was replaced by a fresh one. Replacing rather than refusing: a multiple-choice head is always trained
    anew beside the adapter, and the checkpoint's head was trained for another task (transformers'
    ignore_mismatched_sizes); the rest of the checkpoint is kept."""
    mismatched = sorted(loading_info.get("mismatched_keys") or [], key=lambda entry: (not str(entry[0]).endswith("weight"), str(entry[0])))
    if mismatched:
        key, saved, new = mismatched[0][:3]
        modules = sorted({str(entry[0]).rsplit(".", 1)[0] for entry in mismatched})
        log(f"The checkpoint's head ({', '.join(modules)}: {key} {tuple(saved)}, a choice head needs {tuple(new)}) "
            "is replaced by a fresh multiple-choice head, trained beside the adapter.")
