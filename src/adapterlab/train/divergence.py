"""Stop training at the first optimizer step whose training loss or gradient norm is NaN or inf.

The HF Trainer would go on: its `logging_nan_inf_filter` logs the running mean in place of such a loss, and it
saves, evaluates and keeps the NaN weights as if they were good. `DivergenceGuard` checks every step before the
Trainer logs, saves or evaluates it, so checkpoints/ and best/ keep the last good step, nothing of the bad step is
written, and the run ends with a `TrainingDivergedError` naming the step. Under fp16 a gradient overflow that the
loss scaler handles (it skips the step and lowers the scale) is not a divergence.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from ..errors import TrainingDivergedError


def finite(value: torch.Tensor | float | None) -> bool:
    """Whether `value` (a loss or a gradient norm; None: not computed) is a finite number."""
    return value is None or bool(torch.isfinite(torch.as_tensor(value, dtype=torch.float64)).all())


class DivergenceGuard(Trainer):
    """A Trainer that raises `TrainingDivergedError` at the first step whose loss or gradient norm is not finite."""

    _step_loss: torch.Tensor | None = None  # sum of this step's micro-batch losses, kept on their device

    def training_step(self, model: nn.Module, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
        """The Trainer's step (forward and backward of one micro-batch), its loss added to the step's sum."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        total = loss.detach().float().sum()
        self._step_loss = total if self._step_loss is None else self._step_loss + total
        return loss

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, *args, **kwargs):
        """Check the step just taken, then let the Trainer log, save and evaluate it (not when it diverged)."""
        loss, self._step_loss = self._step_loss, None
        if loss is not None and self.args.world_size > 1:  # a NaN on any rank stops every rank
            loss = self.accelerator.reduce(loss, reduction="sum")
        skipped = getattr(self.accelerator, "optimizer_step_was_skipped", False)  # fp16 loss scaling's overflow
        problem = None
        if not finite(loss):
            problem = f"the training loss is {float(loss)}"
        elif not skipped and not finite(grad_norm):
            problem = f"the gradient norm is {float(torch.as_tensor(grad_norm))}"
        if problem is not None:
            raise TrainingDivergedError(self._diverged(problem))
        return super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

    def _diverged(self, problem: str) -> str:
        """The one-line message: the step, what was not finite, the checkpoint kept, and the fix."""
        step = self.state.global_step
        folder = Path(self.args.output_dir)
        last = get_last_checkpoint(str(folder)) if folder.is_dir() else None
        kept = f"{last} is the last good checkpoint" if last else "no checkpoint was saved before it"
        return (f"Training diverged at step {step}: {problem}. {kept}, and nothing of step {step} was written "
                "(no checkpoint, best/ or adapter); lower --lr (or check the data for NaN/inf values) and start over "
                "with --overwrite.")
