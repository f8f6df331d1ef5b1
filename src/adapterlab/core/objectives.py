"""Training-loss terms a method can add to the task loss (MoSA's consistency; any later regularised method's).

A method's config returns an `Objective` from `objective()`; the training recipe then computes the loss with
it instead of the model's own. `ConsistencyObjective` runs the batch twice in one pass (two copies of the
inputs, each with its own random draws, see `stochastic.py`) and returns

    CE(out1) + additional * CE(out2) + consistency * symmetric KL(out1, out2),

with each KL term's target detached, as MoSA's official code (`symmetric_KL_loss`). For causal LMs the cross
entropy and the KL run over the response tokens only (labels != -100), one row per token, and the LM head runs at
those positions only (`head_rows.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdapterError
from .site_hooks import placed
from .head_rows import logits_at, next_token_positions, next_token_targets, shifts_labels


@dataclass(frozen=True)
class ConsistencyObjective:
    """Two forwards with independent draws: task loss on the first (and `additional` x on the second) plus
    `consistency` x their symmetric KL divergence."""

    additional: float = 0.0
    consistency: float = 1.0
    groups: int = 2  # copies of the batch in one forward pass

    def loss(self, model: nn.Module, inputs: dict[str, Any], total: int | None = None) -> tuple[torch.Tensor, Any]:
        """The loss of one (micro-)batch and the first copy's outputs. `total`: divide sums by this count of
        label tokens (the HF Trainer's num_items_in_batch under gradient accumulation) instead of averaging."""
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if labels is None:
            raise AdapterError("The consistency loss needs labels in the batch (the task's training targets).")
        doubled = {k: torch.cat([v] * self.groups) if torch.is_tensor(v) and v.dim() > 0 else v
                   for k, v in inputs.items()}
        if shifts_labels(model) and labels.dim() == 2:  # causal LM: the head at the labelled next-token rows only
            positions = next_token_positions(torch.cat([labels] * self.groups))
            rows, outputs = logits_at(model, doubled, positions)
            first, second = rows.float().chunk(self.groups)[:2]  # row-major: the first copy's rows come first
            labels = next_token_targets(labels).to(first.device)
            count = total if total is not None else max(len(labels), 1)
            outputs.logits = rows.chunk(self.groups)[0]
            return self._combine(first, second, labels, count), outputs
        outputs = model(**doubled)
        first, second = outputs.logits.float().chunk(self.groups)[:2]
        if first.dim() == 3:  # causal LM: next-token rows where the label counts
            first, second, labels = first[:, :-1], second[:, :-1], labels[:, 1:]
            keep = labels != -100
            first, second, labels = first[keep], second[keep], labels[keep]
            count = total if total is not None else max(int(keep.sum()), 1)
        elif labels.dtype.is_floating_point:
            raise AdapterError("The consistency loss compares class distributions; a regression head has none.")
        else:
            count = total if total is not None else labels.numel()
        outputs.logits = outputs.logits.chunk(self.groups)[0]
        return self._combine(first, second, labels, count), outputs

    def _combine(self, first: torch.Tensor, second: torch.Tensor, labels: torch.Tensor, count: int
                 ) -> torch.Tensor:
        """The loss from the two copies' rows of logits (one row per label) and the count to divide sums by."""
        loss = F.cross_entropy(first, labels, reduction="sum") / count
        if self.additional:
            loss = loss + self.additional * F.cross_entropy(second, labels, reduction="sum") / count
        if self.consistency:
            loss = loss + self.consistency * symmetric_kl(first, second) / count
        return loss


def symmetric_kl(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """0.5 (KL(q || p) + KL(p || q)) summed over rows, each term's target distribution detached."""
    log_p, log_q = F.log_softmax(first, dim=-1), F.log_softmax(second, dim=-1)
    return 0.5 * (F.kl_div(log_p, log_q.detach(), reduction="sum", log_target=True)
                  + F.kl_div(log_q, log_p.detach(), reduction="sum", log_target=True))


def training_objective(model: nn.Module) -> ConsistencyObjective | None:
    """The objective of the active adapters, if one of them has one (two different ones are refused)."""
    active = getattr(model, "adapterlab_active", None)
    configs = getattr(model, "adapterlab_configs", {})
    names = active if active is not None else list(configs)
    found = {configs[n].objective() for n in names if n in configs} - {None}
    if len(found) > 1:
        raise AdapterError(f"The active adapters ask for different training losses {sorted(map(str, found))}; "
                           "train one of them at a time (set_active).")
    return found.pop() if found else None


def training_penalty(model: nn.Module) -> torch.Tensor | None:
    """The sum of the `penalty()` terms of the active adapters' modules (AdapterFusion's regularization), or None."""
    active = set(getattr(model, "adapterlab_active", []))
    terms = [t for _, _, a in placed(model) if a._name in active and (t := a.penalty()) is not None]
    return torch.stack([t.float() for t in terms]).sum() if terms else None


__all__ = ["ConsistencyObjective", "symmetric_kl", "training_objective", "training_penalty"]
