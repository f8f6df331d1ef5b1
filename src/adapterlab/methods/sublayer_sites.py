"""Where a bottleneck-style adapter reads and writes at a site: its widths and, for AdaptFormer, its input
moved to the residual stream. Shared by the bottleneck and conformer adapters."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..errors import AdapterError
from ..core.layers import is_linear, linear_features
from ..core.sites import Placement, Site, block_paths


def input_features(layer: nn.Module) -> int | None:
    """The width a layer reads: a linear layer's in-features, a norm's normalised width; None otherwise."""
    if is_linear(layer):
        return linear_features(layer)[0]
    weight = getattr(layer, "weight", None)
    is_norm = hasattr(layer, "normalized_shape") or "norm" in type(layer).__name__.lower()
    return int(weight.shape[-1]) if is_norm and isinstance(weight, torch.Tensor) and weight.dim() == 1 else None


def site_features(site: Site, model: nn.Module, method: str) -> tuple[int, int]:
    """(in, out) features at a site: a linear layer's, or a sublayer's entry-layer input and exit-layer output."""
    entry, exit_ = model.get_submodule(site.entry), model.get_submodule(site.path)
    in_features = input_features(entry)
    for role, where, layer, ok in (("input", site.entry, entry, in_features is not None),
                                   ("output", site.path, exit_, is_linear(exit_))):
        if not ok:
            raise AdapterError(
                f"{method} needs a linear layer at the {role} of target {site.target!r}, but {where!r} is a "
                f"{type(layer).__name__}. Target linear layers (e.g. down_proj) or the sublayers attn / mlp."
            )
    return int(in_features), linear_features(exit_)[1]


def residual_site(site: Site, model: nn.Module, placement: Placement, method: str) -> Site:
    """The site with its input moved to the sublayer's residual stream: the input of the pre-norm in front of
    it (pre-norm families), or the sublayer's own input where the family is post-norm (BERT)."""
    if site.kind != "sublayer":
        raise AdapterError(f"{method}: source='residual' reads a sublayer's residual stream; target the sublayer "
                           f"attn or mlp, not {site.target!r} (or use source='sublayer').")
    arch = placement.architecture
    if arch.post_norm:
        return site
    norm = arch.sublayer_norm(site.target)
    if norm is None:
        raise AdapterError(f"{method}: the {arch.name} architecture row does not name the norm in front of the "
                           f"{site.target} sublayer; pass architecture={{'{site.target}_norm': '<its path in the "
                           "block>'} (or {'post_norm': True} for a post-norm model), or use source='sublayer'.")
    block = block_paths(model, arch)[site.layer]
    return dataclasses.replace(site, entry=f"{block}.{norm}")
