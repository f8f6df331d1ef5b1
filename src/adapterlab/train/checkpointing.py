"""Checkpoints that hold only what is trained (adapter + head parameters) plus the optimizer state.

`AdapterTrainer` swaps the HF Trainer's full-model save/load for `trainable.safetensors`; everything else
(optimizer, scheduler, RNG states, trainer state, rotation) stays the Trainer's own. A checkpoint counts as
complete once trainer_state.json, which the Trainer writes last, holds a whole JSON object; a save that
fails (a full disk) removes its incomplete checkpoint, so the previous one stays the one to resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..errors import IncompatibleAdapterError
from ..files import (check_safetensors, check_torch_archive, group_file, read_safetensors, write_atomic,
                     write_safetensors)
from ..core.objectives import training_objective
from ..core.stochastic import draw_context
from .divergence import DivergenceGuard

TRAINABLE_NAME = "trainable.safetensors"
HEAD_NAME = "head.safetensors"
STATE_NAME = "trainer_state.json"
# Files of a checkpoint the Trainer reads on resume with torch.load (zip archives written by torch.save).
TORCH_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth")


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies (on CPU) of the parameters that require grad, keyed by their path in the model."""
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_trainable(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the trained parameters to `path` atomically."""
    state = trainable_state(model)
    write_atomic(Path(path), lambda tmp: write_safetensors(Path(tmp), state))


def drop_checkpoint_fix(checkpoint: Path) -> str:
    return (f"delete the folder {checkpoint} so that --resume starts from the checkpoint before it, or start "
            "over with --overwrite")


def load_trainable(model: nn.Module, path: str | os.PathLike, fix: str | None = None) -> None:
    """Copy saved trained parameters into `model`, refusing a file made for other trainable parameters."""
    path = Path(path)
    state = read_safetensors(path, fix or drop_checkpoint_fix(path.parent))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    shapes = [n for n in set(params) & set(state) if params[n].shape != state[n].shape]
    if missing or extra or shapes:
        raise IncompatibleAdapterError(
            f"The checkpoint {path} does not match this run's trainable parameters: {len(missing)} missing "
            f"(e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]}), {len(shapes)} of another shape "
            f"(e.g. {shapes[:2]}). It was written with another model, adapter or options."
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name].to(param.device, param.dtype))


def is_complete(checkpoint: Path) -> bool:
    """Whether the Trainer finished `checkpoint`: its trainer_state.json (written last) is a whole JSON object."""
    try:
        return isinstance(json.loads((checkpoint / STATE_NAME).read_text()), dict)
    except (OSError, ValueError):
        return False


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete `checkpoint-N` folder; one an interrupt cut short is skipped, with a warning
    when its trainer_state.json is there but torn (a kill or a full disk while the Trainer wrote it)."""
    if not checkpoints.is_dir():
        return None
    numbered = sorted((p for p in checkpoints.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.name[11:].isdigit()),
                      key=lambda p: int(p.name[11:]), reverse=True)
    for checkpoint in numbered:
        if is_complete(checkpoint):
            return checkpoint
        if (checkpoint / STATE_NAME).is_file():
            warnings.warn(f"{checkpoint / STATE_NAME} is torn (not a whole JSON object); skipping that checkpoint "
                          "and resuming from the one before it.", stacklevel=2)
    return None


def check_checkpoint(checkpoint: Path, full_model: bool) -> None:
    """Before resuming: the files the Trainer will load are whole (a one-line error naming a damaged one)."""
    fix = drop_checkpoint_fix(checkpoint)
    if not full_model:
        trainable = checkpoint / TRAINABLE_NAME
        if not trainable.is_file():
            raise IncompatibleAdapterError(f"{checkpoint} has no {TRAINABLE_NAME}; it is not a checkpoint of an "
                                           "adapter run.")
        check_safetensors(trainable, fix)
    for file in sorted(checkpoint.glob("*.safetensors")):
        check_safetensors(file, fix)
    for pattern in TORCH_FILES:
        for file in sorted(checkpoint.glob(pattern)):
            check_torch_archive(file, fix)


def save_head(model: nn.Module, directory: Path, modules: list[str]) -> None:
    """Write the task-head modules trained beside an adapter (full paths as keys) to head.safetensors."""
    state = {f"{m}.{k}": v.detach().cpu().contiguous() for m in modules
             for k, v in model.get_submodule(m).state_dict().items()}
    write_atomic(directory / HEAD_NAME, lambda tmp: write_safetensors(Path(tmp), state))


def load_head(model: nn.Module, directory: str | os.PathLike) -> bool:
    """Load head.safetensors of a run folder into `model` if there is one; returns whether it did."""
    path = group_file(Path(directory), HEAD_NAME)
    if not path.is_file():
        return False
    state = read_safetensors(path, "train the run again, or restore the run folder from a copy")
    own = model.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise IncompatibleAdapterError(
            f"{path} does not fit this model's head ({bad[:2]} missing or of another shape); load the model "
            "with the run's number of labels (see config id2label in the run folder)."
        )
    model.load_state_dict(state, strict=False)
    return True


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


class AdapterTrainer(DivergenceGuard):
    """HF Trainer whose checkpoints hold the trainable parameters only (unless the whole model trains), and which
    stops at the first step whose loss or gradient norm is NaN or inf (`DivergenceGuard`)."""

    def __init__(self, *args, full_model: bool = False, **kwargs) -> None:
        with declared_adapted(kwargs.get("model", args[0] if args else None)):
            super().__init__(*args, **kwargs)
        self.full_model = full_model

    def training_step(self, model: nn.Module, inputs: dict, num_items_in_batch=None):
        """One step with the step's random draws held through forward and backward (stochastic methods such as
        MoSA; a no-op for the others): the same on every rank and micro-batch, and after --resume."""
        objective = training_objective(self.model)
        groups = objective.groups if objective is not None else 1
        with draw_context(self.model, step=self.state.global_step, groups=groups, seed=self.args.seed):
            return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
        """The model's loss, or the active method's training objective (e.g. MoSA's consistency loss) in training;
        either divided by the label items of the whole accumulated batch when the Trainer counts them.

        The Trainer hands the count to any model whose forward takes **kwargs and then skips its own division by
        the accumulation steps, but many heads drop it (BERT's, transformers' generic sequence-classification
        head; transformers#47688): their loss came out once per micro-batch, `accumulation` x too large. So the
        model gives its mean over this micro-batch's items, weighted here by their share of the count.
        """
        objective = training_objective(self.model) if model.training else None
        scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None  # as the Trainer's own loss
        if objective is not None:
            loss, outputs = objective.loss(model, inputs, int(num_items_in_batch) if scaled else None)
        elif scaled and (items := counted_items(inputs, getattr(self, "_loss_shifts_labels", False))):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
            loss = loss * (items / num_items_in_batch)
        else:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if scaled and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.full_model:
            return super()._save(output_dir, state_dict)
        if self.args.should_save:
            save_trainable(self.model, Path(output_dir or self.args.output_dir) / TRAINABLE_NAME)

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
        load_trainable(model if model is not None else self.model, path)


__all__ = ["AdapterTrainer", "check_checkpoint", "last_checkpoint", "load_head", "load_trainable", "save_head",
           "save_trainable"]
