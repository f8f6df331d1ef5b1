"""Padding-free causal-LM batches: a micro-batch's records end to end in one row, with per-record position ids.

transformers' attention masks (SDPA, eager, flex) read a packed row from `position_ids` that restart at 0 and keep
its records apart, but only when the forward has no attention mask and no cache: so a packed batch has no
attention_mask and says `use_cache=False` (a training forward of transformers 5 builds a cache by default, and with
it the records would attend to each other). The first label of each record is -100, so no record's last position
predicts the next record's first token; the labelled next-token positions, and so the loss, are the padded batch's.
Whether a model (and the adapter on it) keeps packed records apart is checked by running it, not assumed:
`check_packing` refuses, naming the model, one that mixes them (ALiBi or position-from-mask models such as BLOOM
and OPT, prefix tuning's cache) or cannot take position ids.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import DataCollatorWithFlattening

from ..errors import UsageError

IGNORE = -100  # transformers' ignore_index: the label of a position that carries no loss


class PackedCollator:
    """Collate causal-LM records (input_ids, labels) into one padding-free row of 1 x (sum of lengths) tokens."""

    def __init__(self) -> None:
        self.flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [{k: list(f[k]) for k in ("input_ids", "labels") if k in f} for f in features]
        batch = dict(self.flatten(rows, return_tensors="pt"))
        batch["use_cache"] = False  # a cache turns off the packed-sequence mask
        return batch


def is_packed(inputs: dict[str, Any]) -> bool:
    """Whether a batch is a packed row (position ids, no attention mask)."""
    return "position_ids" in inputs and "attention_mask" not in inputs


def record_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """1 x T: the index of the record each position of a packed row belongs to (0, 0, 0, 1, 1, 2, ...)."""
    return (position_ids == 0).long().cumsum(-1) - 1


def check_packing(model: nn.Module, name: str = "the model") -> None:
    """Refuse (UsageError) packing where `model`, as it is now (adapters attached), lets packed records see each
    other: the logits of two short records packed into one row must be those of each record alone."""
    inner = getattr(model, "module", model)
    vocab = int(getattr(getattr(inner, "config", None), "vocab_size", 0) or 0)
    device = next(inner.parameters()).device
    generator = torch.Generator().manual_seed(0)
    first, second = (torch.randint(min(3, vocab - 1), max(vocab, 4), (1, n), generator=generator).to(device)
                     for n in (7, 5))
    positions = torch.cat([torch.arange(7), torch.arange(5)])[None].to(device)
    fix = "train without --packing (--group-by-length keeps most of its saving)"
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            alone = [inner(input_ids=ids, use_cache=False).logits.float() for ids in (first, second)]
            packed = inner(input_ids=torch.cat([first, second], 1), position_ids=positions, use_cache=False)
            packed = packed.logits.float()
    except Exception as error:  # a model or adapter that cannot take packed rows at all
        raise UsageError(f"--packing: {name} cannot run packed rows ({type(error).__name__}: "
                         f"{str(error).splitlines()[0][:160] if str(error) else 'no message'}); {fix}.") from error
    finally:
        inner.train(was_training)
    expected = torch.cat(alone, 1)
    if packed.shape != expected.shape:
        raise UsageError(f"--packing: {name} gives {packed.shape[1]} positions for a packed row of 12 tokens and "
                         f"{expected.shape[1]} for its two records alone (virtual tokens in front of each row, as "
                         f"prompt tuning places, cannot be packed); {fix}.")
    scale = float(expected.abs().max()) or 1.0
    error = float((packed - expected).abs().max()) / scale
    tolerance = 1e-4 if getattr(inner, "dtype", torch.float32) == torch.float32 else 2e-2
    if error > tolerance:
        attention = getattr(getattr(inner, "config", None), "_attn_implementation", None)
        raise UsageError(f"--packing: {name} ({type(inner).__name__}, attention {attention}) lets packed records "
                         f"attend to each other (relative logit difference {error:.1e} against each record alone): "
                         f"its attention, or the adapter's cache (prefix tuning), does not keep them apart; {fix}.")


__all__ = ["PackedCollator", "check_packing", "is_packed", "record_ids"]
