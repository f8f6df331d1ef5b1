"""Resize the learned position embeddings of an Audio Spectrogram Transformer to a new input length.

A checkpoint's position table holds one row per special token (CLS, distillation) followed by one row
per patch of a fixed (frequency, time) grid. Using the model with another `max_length` changes the grid;
the patch rows are then resized by 2-D (bicubic) interpolation and the special rows are kept, so the
pretrained positions carry over instead of being re-initialised or zeroed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from ..errors import UsageError


def resize_patch_grid(table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                      leading_tokens: int, mode: str = "bicubic") -> torch.Tensor:
    """Interpolate a `(1, leading + h*w, dim)` position table from grid `old_grid` to `new_grid` (rows, cols).

    The patch rows are laid out row-major over (rows, cols), as the patch convolution flattens them.
    """
    rows, cols = old_grid
    expected = leading_tokens + rows * cols
    if table.dim() != 3 or table.shape[1] != expected:
        raise UsageError(f"Position table of shape {tuple(table.shape)} does not match {leading_tokens} special "
                         f"tokens plus a {rows}x{cols} patch grid ({expected} rows); check the config it came from.")
    special, patches = table[:, :leading_tokens], table[:, leading_tokens:]
    grid = patches.reshape(1, rows, cols, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode=mode, align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], -1).to(table.dtype)
    return torch.cat([special, patches], dim=1)


def ast_grid(num_mel_bins: int, max_length: int, patch_size: int, frequency_stride: int,
             time_stride: int) -> tuple[int, int]:
    """(frequency, time) patch counts of an AST spectrogram, as its strided patch convolution produces them."""
    if min(num_mel_bins, max_length) < patch_size:
        raise UsageError(f"An AST input of {max_length} frames x {num_mel_bins} mel bins is smaller than one "
                         f"{patch_size}x{patch_size} patch; use a max_length of at least {patch_size}.")
    return ((num_mel_bins - patch_size) // frequency_stride + 1, (max_length - patch_size) // time_stride + 1)


def _embeddings(model: nn.Module) -> nn.Module:
    """The embeddings module (holding `position_embeddings`) of a transformers model with or without a head."""
    base = getattr(model, "base_model", model)
    embeddings = getattr(base, "embeddings", None)
    if embeddings is None or not isinstance(getattr(embeddings, "position_embeddings", None), nn.Parameter):
        raise UsageError(f"{type(model).__name__} has no learned `embeddings.position_embeddings` to resize.")
    return embeddings


def _replace_table(embeddings: nn.Module, table: torch.Tensor) -> None:
    old = embeddings.position_embeddings
    embeddings.position_embeddings = nn.Parameter(table.detach().clone(), requires_grad=old.requires_grad)


def resize_ast_positions(model: nn.Module, max_length: int) -> nn.Module:
    """Fit an Audio Spectrogram Transformer to `max_length` frames; updates its position table and config."""
    config = model.config
    patching = (config.patch_size, config.frequency_stride, config.time_stride)
    old = ast_grid(config.num_mel_bins, config.max_length, *patching)
    new = ast_grid(config.num_mel_bins, max_length, *patching)
    embeddings = _embeddings(model)
    with torch.no_grad():
        _replace_table(embeddings, resize_patch_grid(embeddings.position_embeddings, old, new, leading_tokens=2))
    config.max_length = max_length
    return model
