"""The HF Trainer subclass of every single-task run, and its per-step logic, in one place.

`AdapterTrainer`: checkpoints hold the trainable parameters only (`trainable.safetensors`, unless the whole model
trains); everything else (optimizer, scheduler, RNG states, trainer state, rotation) stays the Trainer's own.
Under FSDP2 every process gathers the adapter's shards for a save (never the base) and a checkpoint holds the
adapter's optimizer state, not the sharded model (`engines.py`). A save that fails half-way (a full disk) removes
its incomplete checkpoint, so the previous one stays the one to resume. Each step holds its random draws (stochastic methods), computes the loss over the accumulated batch, and
stops the run at the first step whose training loss or gradient norm is NaN or inf: the HF Trainer would log a
running mean in its place and keep saving and evaluating NaN weights, so checkpoints/ and best/ keep the last good
step, nothing of the bad step is written, and a `TrainingDivergedError` names the step. Under fp16 a gradient
overflow that the loss scaler handles (it skips the step) is not a divergence. How the training batches are made
(length-grouped, packed) leaves the dev set's batches, and so its loss, as they are without it.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from accelerate.utils import save_fsdp_optimizer
from torch.utils.data import SequentialSampler
from transformers import Trainer
from transformers.trainer import SCHEDULER_NAME
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..core.objectives import training_objective, training_penalty
from ..core.stochastic import draw_context
from ..data.packing import is_packed
from ..errors import IncompatibleAdapterError, TrainingDivergedError
from .checkpointing import TRAINABLE_NAME, is_complete, load_trainable, save_trainable
from .engines import whole_trainable
from .head_loss import applies, labelled_positions_loss


def finite(value: torch.Tensor | float | None) -> bool:
    """Whether `value` (a loss or a gradient norm; None: not computed) is a finite number."""
    return value is None or bool(torch.isfinite(torch.as_tensor(value, dtype=torch.float64)).all())


def counted_items(inputs: dict, shifted: bool) -> int:
    """The label items of one micro-batch as the Trainer counts them for num_items_in_batch (labels other than
    -100; for a causal LM the next-token labels), over which a model's own loss takes its mean."""
    labels = inputs.get("shift_labels")
    if labels is None:
        labels = inputs.get("labels")
        if labels is None:
            return 0
        labels = labels[..., 1:] if shifted else labels
    return int(labels.ne(-100).sum())


@contextlib.contextmanager
def declared_adapted(model: nn.Module | None) -> Iterator[None]:
    """Inside the block, a quantized model that trains adapters says so as transformers expects.

    The Trainer refuses a quantized model unless PEFT adapters are attached, which it reads from the
    `_hf_peft_config_loaded` flag; adapterlab's adapters are its own modules, so the flag is set for the
    Trainer's construction only (it also steers save_pretrained, which must stay as it is).
    """
    adapted = (model is not None and getattr(model, "is_quantized", False)
               and not getattr(model, "_hf_peft_config_loaded", False)
               and any(p.requires_grad for p in model.parameters()))
    if adapted:
        model._hf_peft_config_loaded = True
    try:
        yield
    finally:
        if adapted:
            del model._hf_peft_config_loaded  # back to the class default


class AdapterTrainer(Trainer):
    """HF Trainer whose checkpoints hold the trainable parameters only (unless the whole model trains), and which
    stops at the first step whose loss or gradient norm is NaN or inf."""

    _step_loss: torch.Tensor | None = None  # sum of this step's micro-batch losses, kept on their device

    def __init__(self, *args, full_model: bool = False, **kwargs) -> None:
        with declared_adapted(kwargs.get("model", args[0] if args else None)):
            super().__init__(*args, **kwargs)
        self.full_model = full_model

    def training_step(self, model: nn.Module, inputs: dict, num_items_in_batch=None):
        """One step with the step's random draws held through forward and backward (stochastic methods such as
        MoSA; a no-op for the others): the same on every rank and micro-batch, and after --resume. Its loss is added
        to the step's sum, which `_maybe_log_save_evaluate` checks."""
        objective = training_objective(self.model)
        groups = objective.groups if objective is not None else 1
        with draw_context(self.model, step=self.state.global_step, groups=groups, seed=self.args.seed):
            loss = super().training_step(model, inputs, num_items_in_batch)
        total = loss.detach().float().sum()  # the step's loss, checked once the step is taken
        self._step_loss = total if self._step_loss is None else self._step_loss + total
        return loss

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
        """The task loss (`task_loss`) plus, in training, the active adapters' penalty terms (AdapterFusion's
        regularization) once per optimizer step: a share of it on every micro-batch, so that it counts once however
        the Trainer scales the micro-batches' losses for gradient accumulation."""
        result = self.task_loss(model, inputs, return_outputs, num_items_in_batch)
        penalty = training_penalty(self.model) if model.training else None
        if penalty is None:
            return result
        loss, outputs = result if return_outputs else (result, None)
        scaled = getattr(self, "loss_is_scaled_for_ga", None)  # the Trainer's own test (training_step)
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) \
                or self.compute_loss_func is not None
        share = 1 / self.current_gradient_accumulation_steps if scaled else 1.0  # else the Trainer divides it
        loss = loss + share * penalty.to(loss.device, loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def task_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
        """The model's loss, or the active method's training objective (e.g. MoSA's consistency loss) in training;
        either divided by the label items of the whole accumulated batch when the Trainer counts them.

        The Trainer hands the count to any model whose forward takes **kwargs and then skips its own division by
        the accumulation steps, but many heads drop it (BERT's, transformers' generic sequence-classification
        head; transformers#47688): their loss came out once per micro-batch, `accumulation` x too large. So the
        model gives its mean over this micro-batch's items, weighted here by their share of the count. A causal LM
        trained on its own next-token loss runs its LM head at the labelled positions only (`head_loss.py`).
        """
        objective = training_objective(self.model) if model.training else None
        scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None  # as the Trainer's own loss
        shifted = getattr(self, "_loss_shifts_labels", False)
        selected = labelled_positions_loss(model, inputs) if objective is None and applies(self, model, inputs) \
            else None
        if objective is not None:
            loss, outputs = objective.loss(model, inputs, int(num_items_in_batch) if scaled else None)
        elif selected is not None:  # the LM head at the labelled positions only: the model's mean, as below
            loss, outputs = selected
            if scaled and (items := counted_items(inputs, shifted)):
                loss = loss * (items / num_items_in_batch)
        elif scaled and (items := counted_items(inputs, shifted)):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
            loss = loss * (items / num_items_in_batch)
        else:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if scaled and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):
        """Length-grouped batches grouped by the global batch (micro-batch x accumulation x processes), so N processes
        draw the order one process draws (transformers groups by one process's share, so the order, and the
        training, would change with the number of processes)."""
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            sampler.batch_size = (self.args.train_batch_size * self.args.gradient_accumulation_steps
                                  * max(1, self.args.world_size))
        return sampler

    def _get_eval_sampler(self, eval_dataset):
        """The dev set in its own order: transformers 5 also length-groups the dev batches under group_by_length,
        which changes the dev loss (a mean of per-batch means) with the training option; here it does not."""
        if self.args.train_sampling_strategy == "group_by_length" and self.args.world_size <= 1:
            return SequentialSampler(eval_dataset)
        return super()._get_eval_sampler(eval_dataset)

    def _track_num_input_tokens(self, inputs):
        """Tokens seen: a packed row has no padding and no attention mask, so each of its tokens counts (the
        Trainer would count those that are not the pad token, which may also be EOS)."""
        if is_packed(inputs) and self.args.include_num_input_tokens_seen != "no":
            self.state.num_input_tokens_seen += int(self.accelerator.gather(
                torch.as_tensor(inputs["input_ids"].numel(), device=self.args.device)).sum())
            return None
        return super()._track_num_input_tokens(inputs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The trainable parameters only, gathered on every rank (FSDP2 shards, ZeRO-3 partitions; never the frozen
        base, which the Trainer's own FSDP/DeepSpeed save would gather whole) and written by the main process."""
        if self.full_model:
            return super().save_model(output_dir, _internal_call)
        with whole_trainable(self.model):
            if self.args.should_save:
                save_trainable(self.model, Path(output_dir or self.args.output_dir) / TRAINABLE_NAME)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Under FSDP an adapter checkpoint holds the optimizer state (the adapter's only) and the schedule, not the
        whole sharded model that the Trainer would write beside them."""
        if not self.is_fsdp_enabled or self.full_model:
            return super()._save_optimizer_and_scheduler(output_dir)
        save_fsdp_optimizer(self.accelerator.state.fsdp_plugin, self.accelerator, self.optimizer, self.model,
                            output_dir)
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), Path(output_dir) / SCHEDULER_NAME)

    def _save_checkpoint(self, model: nn.Module, trial) -> None:
        """The Trainer's checkpoint save; one that fails half-way (a full disk) is removed, not left half-written."""
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        try:
            super()._save_checkpoint(model, trial)
        except BaseException:
            if self.args.should_save and not is_complete(folder):
                shutil.rmtree(folder, ignore_errors=True)
            raise

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        path = Path(resume_from_checkpoint) / TRAINABLE_NAME
        if self.full_model:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        if not path.is_file():
            raise IncompatibleAdapterError(f"{resume_from_checkpoint} has no {TRAINABLE_NAME}; it is not a "
                                           "checkpoint of an adapter run.")
        model = model if model is not None else self.model
        with whole_trainable(model, write_back=True):
            load_trainable(model, path)

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


__all__ = ["AdapterTrainer", "counted_items", "declared_adapted", "finite"]
