"""Training adapters (or whole models) on the HF Trainer: `train(TrainConfig(...)) -> summary dict`;
`cross_validate(config)` trains once per fold of a dataset protocol and summarizes the folds."""

from .checkpointing import load_head
from .config import TrainConfig
from .cross_validation import cross_validate
from .recipe import train

__all__ = ["TrainConfig", "train", "cross_validate", "load_head", "load_run"]


def load_run(model, run_dir, name: str = "default", trainable: bool = False):
    """Restore a trained run onto its base model: the adapter and, for classification, the trained head."""
    from ..core.checkpoint import load_adapter

    load_adapter(model, run_dir, name, trainable=trainable)
    load_head(model, run_dir)
    return model
