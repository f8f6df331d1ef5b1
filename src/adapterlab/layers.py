"""Facts about linear-like layers (nn.Linear and transformers' transposed Conv1D)."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def linear_features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear or Conv1D."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    raise TypeError(f"{type(module).__name__} is not a linear layer")


def weight_as_out_in(module: nn.Module) -> torch.Tensor:
    """The weight laid out (out, in) whatever the layer type; a view, so in-place edits reach the layer."""
    return module.weight.T if isinstance(module, Conv1D) else module.weight


def reference_tensor(module: nn.Module) -> torch.Tensor:
    """A tensor of the module whose device and dtype new adapter parameters should share."""
    for p in module.parameters():
        return p
    raise ValueError(f"{type(module).__name__} has no parameters to take a device and dtype from")
