"""Checkpoints that hold only what is trained (adapter + head parameters) plus the optimizer state.

`AdapterTrainer` swaps the HF Trainer's full-model save/load for `trainable.safetensors`; everything else
(optimizer, scheduler, RNG states, trainer state, rotation) stays the Trainer's own. A checkpoint counts as
complete once trainer_state.json, which the Trainer writes last, is there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer

from ..checkpoint import write_atomic
from ..errors import IncompatibleAdapterError

TRAINABLE_NAME = "trainable.safetensors"
HEAD_NAME = "head.safetensors"
STATE_NAME = "trainer_state.json"


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies (on CPU) of the parameters that require grad, keyed by their path in the model."""
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_trainable(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the trained parameters to `path` atomically."""
    state = trainable_state(model)
    write_atomic(Path(path), lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))


def load_trainable(model: nn.Module, path: str | os.PathLike) -> None:
    """Copy saved trained parameters into `model`, refusing a file made for other trainable parameters."""
    state = load_file(str(path))
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


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete `checkpoint-N` folder (one an interrupt cut short is skipped)."""
    if not checkpoints.is_dir():
        return None
    done = [p for p in checkpoints.glob("checkpoint-*") if (p / STATE_NAME).is_file() and p.name[11:].isdigit()]
    return max(done, key=lambda p: int(p.name[11:]), default=None)


def save_head(model: nn.Module, directory: Path, modules: list[str]) -> None:
    """Write the task-head modules trained beside an adapter (full paths as keys) to head.safetensors."""
    state = {f"{m}.{k}": v.detach().cpu().contiguous() for m in modules
             for k, v in model.get_submodule(m).state_dict().items()}
    write_atomic(directory / HEAD_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))


def load_head(model: nn.Module, directory: str | os.PathLike) -> bool:
    """Load head.safetensors of a run folder into `model` if there is one; returns whether it did."""
    path = Path(directory) / HEAD_NAME
    if not path.is_file():
        return False
    state = load_file(str(path))
    own = model.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise IncompatibleAdapterError(
            f"{path} does not fit this model's head ({bad[:2]} missing or of another shape); load the model "
            "with the run's number of labels (see config id2label in the run folder)."
        )
    model.load_state_dict(state, strict=False)
    return True


def replace_dir(build, target: Path) -> None:
    """Fill a fresh temporary folder with build(tmp) and swap it in for `target` (never half-written)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; a run folder is meant to be shared
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class AdapterTrainer(Trainer):
    """HF Trainer whose checkpoints hold the trainable parameters only (unless the whole model trains)."""

    def __init__(self, *args, full_model: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.full_model = full_model

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.full_model:
            return super()._save(output_dir, state_dict)
        if self.args.should_save:
            save_trainable(self.model, Path(output_dir or self.args.output_dir) / TRAINABLE_NAME)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        path = Path(resume_from_checkpoint) / TRAINABLE_NAME
        if self.full_model:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        if not path.is_file():
            raise IncompatibleAdapterError(f"{resume_from_checkpoint} has no {TRAINABLE_NAME}; it is not a "
                                           "checkpoint of an adapter run.")
        load_trainable(model if model is not None else self.model, path)
