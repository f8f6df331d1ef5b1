"""BitFit (Ben Zaken et al., 2022): train bias terms only, as a zero-initialised additive bias per layer.

Design: every target layer gets a vector `bias_delta` (zero at init) added to its output. Where the layer
has a bias, y + delta is exactly the layer with its bias trained from the pretrained value: the gradient
of the delta equals the gradient the real bias would get, and an optimizer step moves both the same way.
Where it has none (LLaMA's projections, RMSNorm) the delta is a new bias, so the method works on every
family. Only the deltas are saved, not the base biases. Targets may be linear layers or normalisation
layers (e.g. BERT's `LayerNorm`, for the paper's "all biases"); any layer whose output's last dimension
is its feature count works.

Merging adds the delta into the host's bias. A layer without a bias is refused (NotMergeableError), not
given a new bias parameter: that would change the model's structure and state_dict keys, and a merged
model saved with `save_pretrained` would silently lose the bias when reloaded into its bias-free class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import AdapterConfig
from ..errors import AdapterError, NotMergeableError
from ..layers import is_linear, linear_features
from ..sites import Placement, Site
from .base import Adapter


@dataclass
class BitFitConfig(AdapterConfig):
    """Default targets: every projection of every block (gate is skipped on families without one).
    Add normalisation layers by name, e.g. targets=["q", "k", "v", "o", "up", "down", "LayerNorm"]."""

    method = "bitfit"
    default_targets = ("q", "k", "v", "o", "up", "gate", "down")
    mergeable = True

    def build(self, site: Site, model: nn.Module, placement: Placement) -> "BitFitAdapter":
        host = model.get_submodule(site.path)
        features, ref = output_features(host, site)
        return BitFitAdapter(features, ref.device, ref.dtype)


def output_features(host: nn.Module, site: Site) -> tuple[int, torch.Tensor]:
    """(size of the host's output feature dimension, a parameter to take device and dtype from)."""
    if is_linear(host):
        return linear_features(host)[1], host.weight
    for name in ("bias", "weight"):  # normalisation layers: a per-feature affine vector
        p = getattr(host, name, None)
        if isinstance(p, torch.Tensor) and p.dim() == 1:
            return p.shape[0], p
    raise AdapterError(
        f"bitfit adds a bias to a layer's output features; target {site.target!r} matched {site.path!r}, a "
        f"{type(host).__name__} with no per-feature weight or bias to size it from. Target linear or "
        "normalisation layers (e.g. q_proj, down_proj, LayerNorm)."
    )


class BitFitAdapter(Adapter):
    """A trainable bias delta added to the host's output."""

    def __init__(self, features: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.bias_delta = nn.Parameter(torch.zeros(features, device=device, dtype=dtype))

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + self.bias_delta.to(y.dtype)

    def _host_bias(self, host: nn.Module) -> torch.Tensor:
        bias = getattr(host, "bias", None)
        if not isinstance(bias, torch.Tensor):
            raise NotMergeableError(
                f"bitfit: a {type(host).__name__} without a bias cannot absorb the trained bias (adding one would "
                "change the model's structure). Keep the adapter unmerged, or target only layers with biases."
            )
        return bias

    @torch.no_grad()
    def merge(self, host: nn.Module) -> None:
        bias = self._host_bias(host)
        bias += self.bias_delta.to(bias.dtype)

    @torch.no_grad()
    def unmerge(self, host: nn.Module) -> None:
        bias = self._host_bias(host)
        bias -= self.bias_delta.to(bias.dtype)
