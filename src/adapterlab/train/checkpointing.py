"""The files of checkpoints that hold only what is trained (adapter + head parameters) plus the optimizer state.

`trainable.safetensors` (written and read here; the Trainer in trainer.py saves and loads through these) and
head.safetensors; a checkpoint counts as complete once trainer_state.json, which the Trainer writes last,
holds a whole JSON object.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..errors import IncompatibleAdapterError
from ..files import (check_safetensors, check_torch_archive, group_file, read_safetensors, write_atomic,
                     write_safetensors)

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


__all__ = ["check_checkpoint", "last_checkpoint", "load_head", "load_trainable", "save_head",
           "save_trainable"]
