"""Adapter configs used only by the engine tests, so they exercise the engine without any registered method.

`ProbeConfig` records the input and output its site hands it and changes nothing; `SideConfig` is a small
trainable side branch (y + B tanh(A x)) that works at module and sublayer sites.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from adapterlab.core.config import AdapterConfig
from adapterlab.core.layers import linear_features, reference_tensor
from adapterlab.core.adapter import Adapter, in_dtype_of
from adapterlab.core.sites import Placement, Site


class Probe(Adapter):
    def __init__(self) -> None:
        super().__init__()
        self.last_x: torch.Tensor | None = None
        self.last_y: torch.Tensor | None = None

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.last_x, self.last_y = x, y
        return y


@dataclass
class ProbeConfig(AdapterConfig):
    method = "probe"
    site_kinds = ("module", "sublayer")

    def build(self, site: Site, model: nn.Module, placement: Placement) -> Probe:
        return Probe()


class Side(Adapter):
    def __init__(self, d_in: int, d_out: int, ref: torch.Tensor) -> None:
        super().__init__()
        self.a = nn.Linear(d_in, 4, device=ref.device, dtype=ref.dtype)
        self.b = nn.Linear(4, d_out, device=ref.device, dtype=ref.dtype)
        self.drop = nn.Dropout(0.5)

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + self.b(torch.tanh(self.a(self.drop(in_dtype_of(self, x))))).to(y.dtype)


@dataclass
class SideConfig(AdapterConfig):
    method = "side"
    default_targets = ("attn", "mlp")
    site_kinds = ("module", "sublayer")

    def build(self, site: Site, model: nn.Module, placement: Placement) -> Side:
        d_in, _ = linear_features(model.get_submodule(site.entry))
        _, d_out = linear_features(model.get_submodule(site.path))
        return Side(d_in, d_out, reference_tensor(model.get_submodule(site.path)))
