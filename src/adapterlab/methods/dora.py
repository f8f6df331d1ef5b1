"""DoRA (Liu et al., 2024), weight-decomposed LoRA, as a variant of the LoRA module (PEFT's `DoraLinearVariant`).

The adapted weight is m * (W + s B A) / ||W + s B A||, the norm taken per output feature (a row of the (out, in)
weight) and treated as a constant in backward (the paper's section 4.3): gradients reach m, A and B, never through
the norm. m (`lora_magnitude_vector`, PEFT's name and file key) starts as that norm, so attaching changes nothing
while B A is zero. Written from the paper and PEFT's `DoraLinearLayer`; the tests hold it to PEFT's outputs,
gradients and merged weights.

The forward is PEFT's, dropout included: with no dropout drawn (eval mode, or dropout 0) the base output y (less
the host's bias) stands for W x; with dropout drawn in training, W is applied to the dropped input once more. So an
adapter that runs before it on the same layer (another active LoRA there) is rescaled with W x, as in PEFT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.layers import weight_as_out_in
from ..core.site_hooks import HOST_ATTR
from ..errors import NotMergeableError

from .lora_init import LowRankPair

MAGNITUDE = "lora_magnitude_vector"  # PEFT's parameter name; its file key is <layer path>.lora_magnitude_vector


def host_weight(host: nn.Module) -> torch.Tensor:
    """The host layer's weight laid out (out, in), whatever its class (Linear, GPT-2's Conv1D)."""
    return weight_as_out_in(host)


def weight_norm(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """||W + delta|| per output feature (row of an (out, in) weight), without gradient."""
    with torch.no_grad():
        return torch.linalg.norm(weight + delta, dim=1).to(weight.dtype)


class DoraVariant:
    """What DoRA changes in a `LoraAdapter`: an extra parameter, its initial value, the forward and the merge. The
    LoRA module keeps A, B, dropout and scaling; these hooks are called with it (as PEFT's LoraVariant)."""

    @staticmethod
    def build(adapter: LowRankPair, out_features: int) -> None:
        """Add the magnitude vector (its value is set by `init`, once the module sits at its host)."""
        weight = adapter.lora_B.weight
        setattr(adapter, MAGNITUDE, nn.Parameter(torch.ones(out_features, device=weight.device, dtype=weight.dtype)))

    @staticmethod
    @torch.no_grad()
    def init(adapter: LowRankPair, host: nn.Module) -> None:
        """m = ||W + s B A|| per output feature: the adapted layer starts as the LoRA one."""
        magnitude = getattr(adapter, MAGNITUDE)
        delta = adapter.delta_weight()
        weight = host_weight(host).to(delta.device)
        magnitude.copy_(weight_norm(weight, delta.to(torch.promote_types(weight.dtype, delta.dtype))))

    @staticmethod
    def forward(adapter: LowRankPair, host: nn.Module, x: torch.Tensor, y: torch.Tensor,
                h: torch.Tensor | None = None) -> torch.Tensor:
        """y adapted: y + (m/n - 1) W x' + (m/n) s B A x', n = ||W + s B A|| (detached), x' the dropped input. `x` is
        cast to the adapter's dtype; `h` is A x when the shared-input path computed it (no dropout drawn then)."""
        weight = host_weight(host).to(x.dtype)
        lora_weight = adapter.lora_B.weight @ adapter.lora_A.weight
        scale = getattr(adapter, MAGNITUDE) / weight_norm(weight, adapter.scaling * lora_weight.detach().to(x.dtype))
        if adapter.drops and adapter.training:
            x = adapter.dropout(x)
            base = F.linear(x, weight)
            h = adapter.lora_A(x)
        else:
            bias = getattr(host, "bias", None)
            base = y.to(x.dtype) if bias is None else (y - bias).to(x.dtype)
            h = adapter.lora_A(x) if h is None else h
        delta = (scale - 1) * base + scale * adapter.lora_B(h) * adapter.scaling
        return y + (delta if delta.dtype == y.dtype else delta.to(y.dtype))

    @staticmethod
    @torch.no_grad()
    def merge(adapter: LowRankPair, host: nn.Module) -> None:
        """W <- (m / n) (W + s B A), n = ||W + s B A|| kept for `unmerge` (the merged weight no longer tells it)."""
        check_alone(adapter, host, "merged")
        weight = host_weight(host)
        delta = adapter.delta_weight().to(weight.dtype)
        norm = weight_norm(weight, delta)
        adapter._merged_norm = norm
        factor = (getattr(adapter, MAGNITUDE).to(weight.dtype) / norm).view(-1, 1)
        weight.copy_(factor * (weight + delta))

    @staticmethod
    @torch.no_grad()
    def unmerge(adapter: LowRankPair, host: nn.Module) -> None:
        """W <- W / (m / n) - s B A, with the n that `merge` used."""
        check_alone(adapter, host, "unmerged")
        weight = host_weight(host)
        norm = adapter._merged_norm.to(weight.device)
        factor = (getattr(adapter, MAGNITUDE).to(weight.dtype) / norm).view(-1, 1)
        weight.copy_(weight / factor - adapter.delta_weight().to(weight.dtype))
        adapter._merged_norm = None


def check_alone(adapter: nn.Module, host: nn.Module, done: str) -> None:
    """Refuse to fold DoRA in or out of a layer that holds another merged adapter: DoRA rescales the whole weight,
    so the other's update would be rescaled with it (and taken out wrongly by its unmerge)."""
    others = [name for name, other in getattr(host, HOST_ATTR, {}).items()
              if other is not adapter and getattr(other, "merged", False)]
    if others:
        raise NotMergeableError(
            f"A DoRA adapter cannot be {done} while its layer holds other merged adapters ({', '.join(others)}): DoRA "
            "rescales the whole weight. Unmerge those first, or keep the DoRA adapter unmerged."
        )


__all__ = ["DoraVariant", "MAGNITUDE"]
