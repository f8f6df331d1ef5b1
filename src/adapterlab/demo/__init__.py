"""`make demo`: a small model, a LoRA adapter trained on arithmetic word problems, before/after accuracy."""

from .run import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
