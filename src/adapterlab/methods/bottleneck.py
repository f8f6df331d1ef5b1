"""Bottleneck adapters: series (Houlsby et al., 2019; Pfeiffer et al., 2021) and parallel (He et al., 2022).

One module, `up(act(down(dropout(x))))`, placed two ways:

* series:   y' = y + s * f(y)  on the output y of a linear layer or of an attention/MLP sublayer (before
  the block's residual add). `houlsby` places it after both sublayers, `pfeiffer` after the MLP only.
* parallel: y' = y + s * f(x)  with x the input of the linear layer (LLM-Adapters: in -> size -> out) or
  of the whole sublayer (the input of its entry layer; He et al. 2022, AdaptFormer). `scaled_parallel`
  is He et al.'s setting: at the MLP, s = 4, up-projection zero at init.

Semantics follow LLM-Adapters' bottleneck tuner: dropout on the adapter input, "bert" init N(0, 0.02)
on both projections, `scaling` a float or "learned" (a scalar parameter initialised to 1.0, as
LLM-Adapters and AdaptFormer's learnable scalar). LLM-Adapters' projections have no bias: pass
bias=False to reproduce its parameter counts. Its "AdapterP" is `pfeiffer` (series on down_proj); its
"AdapterH" adapts the inputs of gate/up and the output of down, whereas `houlsby` here follows Houlsby
et al. (after the attention and the MLP outputs). Not mergeable: the activation makes the adapter nonlinear.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..config import AdapterConfig, one_of, positive_int
from ..errors import AdapterError
from ..layers import is_linear, linear_features, reference_tensor
from ..sites import Placement, Site
from .base import Adapter, in_dtype_of

INITS = ("bert", "zero")


def site_features(site: Site, model: nn.Module, method: str) -> tuple[int, int]:
    """(in, out) features at a site: a linear layer's, or a sublayer's entry-layer input and exit-layer output."""
    ends = {"input": model.get_submodule(site.entry), "output": model.get_submodule(site.path)}
    for role, layer in ends.items():
        if not is_linear(layer):
            where = site.entry if role == "input" else site.path
            raise AdapterError(
                f"{method} needs a linear layer at the {role} of target {site.target!r}, but {where!r} is a "
                f"{type(layer).__name__}. Target linear layers (e.g. down_proj) or the sublayers attn / mlp."
            )
    return linear_features(ends["input"])[0], linear_features(ends["output"])[1]


def parse_scaling(method: str, value: float | int | str) -> float | str:
    """`scaling` as a float or the string "learned"; numeric strings (from the command line) become floats."""
    if value == "learned":
        return value
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise AdapterError(f"{method}: `scaling` must be a number or 'learned', got {value!r}.") from None


@dataclass
class BottleneckOptions(AdapterConfig):
    """size: bottleneck width; activation: a transformers ACT2FN name; bias: biases in down/up;
    init: "bert" (N(0, 0.02) weights, as LLM-Adapters) or "zero" (up-projection zero, down Kaiming-uniform,
    as LoRA / LLM-Adapters' "mam_adapter": the model is unchanged at init); scaling: float or "learned";
    dropout: on the adapter's input."""

    site_kinds = ("module", "sublayer")

    size: int = 256
    activation: str = "tanh"
    bias: bool = True
    init: str = "bert"
    scaling: float | str = 1.0
    dropout: float = 0.0

    def validate(self) -> None:
        positive_int(self.method, "size", self.size)
        if self.activation not in ACT2FN:
            raise AdapterError(
                f"{self.method}: unknown `activation` {self.activation!r}. Use one of {sorted(ACT2FN)}."
            )
        if not isinstance(self.bias, bool):
            raise AdapterError(f"{self.method}: `bias` must be true or false, got {self.bias!r}.")
        one_of(self.method, "init", self.init, INITS)
        self.scaling = parse_scaling(self.method, self.scaling)
        if not 0.0 <= float(self.dropout) < 1.0:
            raise AdapterError(f"{self.method}: `dropout` must be in [0, 1), got {self.dropout!r}.")

    def make(self, in_features: int, out_features: int, placement: str, host: nn.Module) -> "BottleneckAdapter":
        ref = reference_tensor(host)
        return BottleneckAdapter(in_features, out_features, self, placement, ref.device, ref.dtype)


@dataclass
class SeriesConfig(BottleneckOptions):
    """Series adapter on the output of each target (linear layer or attn/mlp sublayer): y + s * f(y)."""

    method = "series"
    default_targets = ("down",)

    def build(self, site: Site, model: nn.Module, placement: Placement) -> "BottleneckAdapter":
        _, out_features = site_features(site, model, self.method)
        return self.make(out_features, out_features, "series", model.get_submodule(site.path))


@dataclass
class ParallelConfig(BottleneckOptions):
    """Parallel adapter beside each target: y + s * f(x), x the linear layer's or the sublayer's input."""

    method = "parallel"
    default_targets = ("mlp",)

    def build(self, site: Site, model: nn.Module, placement: Placement) -> "BottleneckAdapter":
        in_features, out_features = site_features(site, model, self.method)
        return self.make(in_features, out_features, "parallel", model.get_submodule(site.path))


@dataclass
class HoulsbyConfig(SeriesConfig):
    """Houlsby et al. (2019): a series adapter after the attention and after the MLP sublayer of each block."""

    method = "houlsby"
    default_targets = ("attn", "mlp")


@dataclass
class PfeifferConfig(SeriesConfig):
    """Pfeiffer et al. (2021): a series adapter after the MLP sublayer only (LLM-Adapters' AdapterP)."""

    method = "pfeiffer"
    default_targets = ("mlp",)


@dataclass
class ScaledParallelConfig(ParallelConfig):
    """He et al. (2022)'s scaled parallel adapter: beside the MLP, scaled by 4, up-projection zero at init."""

    method = "scaled_parallel"

    scaling: float | str = 4.0
    init: str = "zero"


class BottleneckAdapter(Adapter):
    """down (in -> size), activation, up (size -> out), scaled and added to the site's output."""

    split_points = {"down": "down", "up": "up"}  # the projections MoSA may split (methods/mosa.py)

    def __init__(self, in_features: int, out_features: int, options: BottleneckOptions, placement: str,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.placement = placement
        self.dropout = nn.Dropout(options.dropout) if options.dropout > 0 else nn.Identity()
        self.down = nn.Linear(in_features, options.size, bias=options.bias, device=device, dtype=dtype)
        self.act = ACT2FN[options.activation]
        self.up = nn.Linear(options.size, out_features, bias=options.bias, device=device, dtype=dtype)
        if options.scaling == "learned":
            self.scaling = nn.Parameter(torch.ones(1, device=device, dtype=dtype))
        else:
            self.scaling = float(options.scaling)
        self.reset_parameters(options.init)

    @torch.no_grad()
    def reset_parameters(self, init: str) -> None:
        if init == "bert":
            nn.init.normal_(self.down.weight, std=0.02)
            nn.init.normal_(self.up.weight, std=0.02)
        else:
            nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5)
            nn.init.zeros_(self.up.weight)
        for layer in (self.down, self.up):
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def delta(self, h: torch.Tensor) -> torch.Tensor:
        """s * up(act(down(dropout(h)))), computed in the adapter's dtype."""
        h = in_dtype_of(self, h)
        return self.up(self.act(self.down(self.dropout(h)))) * self.scaling

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        source = y if self.placement == "series" else x
        return y + self.delta(source).to(y.dtype)
