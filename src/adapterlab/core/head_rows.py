"""The output head at chosen positions only: a causal LM's B x T x V logits, mostly at prompt positions that carry
no loss, are never made (issue #21).

A forward pre-hook on the model's `get_output_embeddings()` replaces the B x T x H hidden states it is given by the
rows at the chosen positions (1 x N x H, row-major), so the head and everything after it (softcapping, a logit
scale) run on N rows; nothing of the model's forward code is copied or swapped. Where the head sees more positions
than were chosen, the extra ones are virtual tokens in front (prompt tuning, P-tuning: `methods/virtual_tokens.py`),
which carry no label. A model without output embeddings, or whose head never sees those hidden states, gives its
full logits and the rows are selected from them; one whose head output cannot be followed runs again in full.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..errors import AdapterError

IGNORE = -100  # the label of a position that carries no loss (transformers' ignore_index)


def unwrapped(model: nn.Module) -> nn.Module:
    """The model behind the Trainer's wrappers: torch.compile's (`--compile`), then DDP's."""
    inner = getattr(model, "_orig_mod", model)
    return getattr(inner, "module", inner)


def output_head(model: nn.Module) -> nn.Module | None:
    """The model's output embeddings (its LM head), behind a DDP or torch.compile wrapper; None where it has none."""
    inner = unwrapped(model)
    getter = getattr(inner, "get_output_embeddings", None)
    try:
        head = getter() if callable(getter) else None
    except NotImplementedError:
        return None
    return head if isinstance(head, nn.Module) else None


def shifts_labels(model: nn.Module) -> bool:
    """Whether the model is one of transformers' causal LMs and its loss is the plain next-token ForCausalLMLoss
    (no custom loss function set, no MoE router loss added to it, not an encoder-decoder)."""
    inner = unwrapped(model)
    config = getattr(inner, "config", None)
    return (type(inner).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
            and LOSS_MAPPING.get(getattr(inner, "loss_type", None) or "ForCausalLM") is ForCausalLMLoss
            and "_loss_function" not in vars(inner) and not getattr(config, "is_encoder_decoder", False)
            and not getattr(config, "output_router_logits", False))


def next_token_positions(labels: torch.Tensor, shift_labels: torch.Tensor | None = None) -> torch.Tensor:
    """B x T bool: the positions whose next-token label counts (position t predicts labels[:, t + 1], or
    shift_labels[:, t] where the batch gives them already shifted)."""
    if shift_labels is not None:
        return shift_labels.ne(IGNORE)
    return F.pad(labels[:, 1:].ne(IGNORE), (0, 1), value=False)


def next_token_targets(labels: torch.Tensor, shift_labels: torch.Tensor | None = None) -> torch.Tensor:
    """The N target token ids at `next_token_positions`, in the same row-major order as the head's rows."""
    shifted = shift_labels if shift_labels is not None else F.pad(labels[:, 1:], (0, 1), value=IGNORE)
    return shifted[shifted.ne(IGNORE)]


@dataclass
class HeadRows:
    """The positions (B x T bool) the head runs at inside `head_at`, and how often the hook gathered them."""

    positions: torch.Tensor
    gathered: int = 0

    def hook(self, module: nn.Module, args: tuple) -> tuple | None:
        """Forward pre-hook: the head's B x T' x H input becomes its 1 x N x H rows at the chosen positions."""
        batch, length = self.positions.shape
        hidden = args[0] if args else None
        if not torch.is_tensor(hidden) or hidden.dim() != 3 or hidden.shape[0] != batch or hidden.shape[1] < length:
            return None  # not the sequence the positions index: left alone, `rows` selects from the full logits
        keep = F.pad(self.positions, (hidden.shape[1] - length, 0), value=False)  # virtual tokens in front
        self.gathered += 1
        return (hidden[keep.to(hidden.device)].unsqueeze(0), *args[1:])

    def rows(self, logits: torch.Tensor) -> torch.Tensor | None:
        """The N x V logits at the chosen positions; None when the head ran on them but its output is not N rows."""
        batch, length = self.positions.shape
        if self.gathered == 1 and tuple(logits.shape[:-1]) == (1, int(self.positions.sum())):
            return logits[0]
        if self.gathered == 0 and logits.dim() == 3 and logits.shape[0] == batch and logits.shape[1] >= length:
            return logits[:, logits.shape[1] - length:][self.positions.to(logits.device)]
        return None


@contextlib.contextmanager
def head_at(model: nn.Module, positions: torch.Tensor) -> Iterator[HeadRows]:
    """Inside the block, the model's output head runs at the True `positions` (B x T) only."""
    rows = HeadRows(positions)
    head = output_head(model)
    handle = head.register_forward_pre_hook(rows.hook) if head is not None else None
    try:
        yield rows
    finally:
        if handle is not None:
            handle.remove()


def logits_at(model: nn.Module, inputs: dict[str, Any], positions: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """(N x V logits at the True `positions`, in row-major order; the model's outputs) of one forward with the head
    at those positions only; a model whose head output cannot be followed runs again with the full head."""
    with head_at(model, positions) as head:
        outputs = model(**inputs)
    found = head.rows(outputs.logits)
    if found is None:
        outputs = model(**inputs)
        found = HeadRows(positions).rows(outputs.logits)
    if found is None:
        raise AdapterError(f"The model's logits have shape {tuple(outputs.logits.shape)}, which does not fit the "
                           f"{tuple(positions.shape)} token positions of its inputs.")
    return found, outputs


__all__ = ["IGNORE", "HeadRows", "head_at", "logits_at", "next_token_positions", "next_token_targets",
           "output_head", "shifts_labels", "unwrapped"]
