"""Training adapters (or whole models) on the HF Trainer: `train(TrainConfig(...)) -> summary dict`."""

from .checkpointing import load_head
from .config import TrainConfig
from .recipe import train

__all__ = ["TrainConfig", "train", "load_head", "load_run"]


def load_run(model, run_dir, name: str = "default", trainable: bool = False):
    """Restore a trained run onto its base model: the adapter and, for classification, the trained head."""
    from ..checkpoint import load_adapter

    load_adapter(model, run_dir, name, trainable=trainable)
    load_head(model, run_dir)
    return model
