"""BitFit (Ben Zaken et al., 2022): train bias terms only, as a zero-initialised additive bias per layer.

Design: every target layer gets a vector `bias_delta` (zero at init) added to its output. Where the layer
has a bias, y + delta is exactly the layer with its bias trained from the pretrained value: the gradient
of the delta equals the gradient the real bias would get, and an optimizer step moves both the same way.
Where it has none (LLaMA's projections, RMSNorm) the delta is a new bias, so the method works on every
family. Only the deltas are saved, not the base biases. Targets may be linear layers or normalisation
layers; a layer's output features are its last dimension, or dimension 1 for the channels-first norms
(GroupNorm, BatchNorm, InstanceNorm: wav2vec2's convolutional feature encoder).

As the BitFit paper (and the PETL-for-AST paper's count) has it, every bias of the model trains: the
projections' (the targets) and, with `norms` (the default), those of every normalisation layer of the
base model (LayerNorm, RMSNorm, ...; a task head's own layers train with the head, not here).

Merging adds the delta into the host's bias. A layer without a bias is refused (NotMergeableError), not
given a new bias parameter: that would change the model's structure and state_dict keys, and a merged
model saved with `save_pretrained` would silently lose the bias when reloaded into its bias-free class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.config import AdapterConfig
from ..core.option_help import documented, option_field
from ..errors import AdapterError, NotMergeableError
from ..core.layers import is_linear, is_norm, linear_features, reference_tensor
from ..core.sites import ADAPTER_SLOT, Placement, Site, block_paths
from ..core.adapter import Adapter

# Normalisation layers whose output is (batch, channels, ...): their bias is added along dimension 1.
CHANNELS_FIRST = (nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


@documented
@dataclass
class BitFitConfig(AdapterConfig):
    """BitFit (Ben Zaken et al., 2022): trains only biases, by default of every projection of every block (gate is
    skipped on families without one); mergeable where each target has a bias."""

    method = "bitfit"
    default_targets = ("q", "k", "v", "o", "up", "gate", "down")
    mergeable = True
    legacy_defaults = {"norms": False}  # adapters saved before `norms` existed trained no norm biases

    norms: bool = option_field(True, "also train the bias of every normalisation layer (of the `layers` blocks, if "
                               "given); false trains the targets' biases only",
                               paper="adapters saved before this option existed load with false")

    def validate(self) -> None:
        if not isinstance(self.norms, bool):
            raise AdapterError(f"bitfit: `norms` must be true or false, got {self.norms!r}.")

    def sites(self, model: nn.Module, placement: Placement) -> list[Site]:
        sites = {site.path: site for site in super().sites(model, placement)}
        if self.norms:
            for site in norm_sites(model, placement, self.layers):
                sites.setdefault(site.path, site)
        return list(sites.values())

    def build(self, site: Site, model: nn.Module, placement: Placement) -> BitFitAdapter:
        host = model.get_submodule(site.path)
        features, ref = output_features(host, site)
        return BitFitAdapter(features, ref.device, ref.dtype, channels_first=isinstance(host, CHANNELS_FIRST))


def norm_sites(model: nn.Module, placement: Placement, layers: list[int] | None) -> list[Site]:
    """A site for every normalisation layer of the base model that has a per-feature weight or bias."""
    backbone = getattr(model, "base_model", model)  # transformers' backbone, without the task head
    prefix = next(name for name, module in model.named_modules() if module is backbone)
    blocks = block_paths(model, placement.architecture) if layers is not None else []
    sites = []
    for name, module in backbone.named_modules():
        path = f"{prefix}.{name}" if prefix and name else prefix or name
        if not is_norm(module) or ADAPTER_SLOT in path.split(".") or not has_feature_vector(module):
            continue
        layer = next((i for i, block in enumerate(blocks) if path.startswith(block + ".")), None)
        if layers is None or layer in layers:
            sites.append(Site("module", path, path, path.rsplit(".", 1)[-1], layer))
    return sites


def has_feature_vector(module: nn.Module) -> bool:
    return any(isinstance(getattr(module, n, None), torch.Tensor) and getattr(module, n).dim() == 1
               for n in ("bias", "weight"))


def output_features(host: nn.Module, site: Site) -> tuple[int, torch.Tensor]:
    """(size of the host's output feature dimension, a parameter to take device and dtype from)."""
    if is_linear(host):
        return linear_features(host)[1], reference_tensor(host)  # a float dtype also over a quantized weight
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
    """A trainable bias delta added to the host's output features (its last dimension, or dimension 1 where
    `channels_first`)."""

    def __init__(self, features: int, device: torch.device, dtype: torch.dtype, channels_first: bool = False) -> None:
        super().__init__()
        self.bias_delta = nn.Parameter(torch.zeros(features, device=device, dtype=dtype))
        self.channels_first = channels_first

    def reads_input(self) -> bool:
        return False

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        delta = self.bias_delta.to(y.dtype)
        return y + (delta.view(-1, *[1] * (y.dim() - 2)) if self.channels_first else delta)

    def _host_bias(self, host: nn.Module) -> torch.Tensor:
        bias = getattr(host, "bias", None)
        if not isinstance(bias, torch.Tensor):
            raise NotMergeableError(
                f"bitfit: a {type(host).__name__} without a bias cannot absorb the trained bias (adding one would "
                "change the model's structure). Keep the adapter unmerged, or target only layers with biases."
            )
        return bias

    @torch.no_grad()
    def merge_into(self, host: nn.Module) -> None:
        bias = self._host_bias(host)
        bias += self.bias_delta.to(bias.dtype)

    @torch.no_grad()
    def unmerge_from(self, host: nn.Module) -> None:
        bias = self._host_bias(host)
        bias -= self.bias_delta.to(bias.dtype)
