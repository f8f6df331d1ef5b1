"""`--resume_from_checkpoint DIR` (LLM-Adapters' flag): start training from a checkpoint or an adapter folder.

As in their finetune.py: a folder of the Trainer's (trainer_state.json beside the weights) resumes it whole,
weights, optimizer, schedule and step; a folder holding only a trained adapter gives its weights to the
freshly attached adapter and training starts from step 0. Unlike theirs, a folder that is neither is an
error, not a printed line followed by training from scratch.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..core.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_state
from ..errors import MissingPathError
from ..files import read_safetensors
from .checkpointing import check_checkpoint


def warm_start(model: nn.Module, folder: str, full_model: bool) -> Path | None:
    """Load what `folder` holds into the attached adapter; returns it when the Trainer must resume from it."""
    path = Path(folder)
    if (path / "trainer_state.json").is_file():
        check_checkpoint(path, full_model=full_model)
        return path
    if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
        state = read_safetensors(path / WEIGHTS_NAME, "save the adapter again")
        load_state(model, "default", state, str(path))
        return None
    raise MissingPathError(f"--resume_from_checkpoint {folder}: neither a checkpoint folder (trainer_state.json) nor "
                           f"an adapter folder ({CONFIG_NAME} + {WEIGHTS_NAME}); give one of those.")
