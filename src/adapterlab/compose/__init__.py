"""Making one adapter from several attached to one model: weighted merging and task arithmetic (`weighted.py`)."""

from .weighted import add_weighted_adapter

__all__ = ["add_weighted_adapter"]
