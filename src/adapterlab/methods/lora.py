"""LoRA (Hu et al., 2021): y = W x + (alpha / r) * B A dropout(x), with B zero at init. Mergeable."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..config import AdapterConfig, positive_int
from ..errors import AdapterError
from ..layers import is_linear, linear_features, reference_tensor, weight_as_out_in
from ..sites import Site
from .base import Adapter, in_dtype_of


@dataclass
class LoraConfig(AdapterConfig):
    """r: rank; alpha: scale numerator (scaling = alpha / r); dropout on the LoRA branch's input."""

    method = "lora"
    default_targets = ("q", "v")
    mergeable = True

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0

    peft_type = "LORA"

    def validate(self) -> None:
        positive_int(self.method, "r", self.r)
        if not 0.0 <= float(self.dropout) < 1.0:
            raise AdapterError(f"lora: `dropout` must be in [0, 1), got {self.dropout!r}.")

    def build(self, site: Site, model: nn.Module) -> "LoraAdapter":
        host = model.get_submodule(site.path)
        if not is_linear(host):
            raise AdapterError(
                f"lora adapts linear layers; target {site.target!r} matched {site.path!r}, a "
                f"{type(host).__name__}. Target its projections instead (e.g. q_proj, v_proj)."
            )
        in_features, out_features = linear_features(host)
        ref = reference_tensor(host)
        return LoraAdapter(in_features, out_features, self.r, self.alpha / self.r, self.dropout, ref.device, ref.dtype)


    def to_peft(self, model: nn.Module, sites: list[Site]) -> dict:
        """The equivalent PEFT LoraConfig as a dict; targets are the exact placed layers."""
        from transformers.pytorch_utils import Conv1D

        return {
            "peft_type": "LORA",
            "task_type": peft_task_type(model),
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": "(" + "|".join(re.escape(s.path) for s in sites) + ")",
            "fan_in_fan_out": any(isinstance(model.get_submodule(s.path), Conv1D) for s in sites),
            "bias": "none",
            "inference_mode": True,
        }

    @classmethod
    def from_peft(cls, data: dict) -> "LoraConfig":
        """A LoraConfig from a PEFT adapter_config.json (plain LoRA only)."""
        unsupported = [k for k in ("use_dora", "use_rslora") if data.get(k)]
        if data.get("rank_pattern") or data.get("alpha_pattern"):
            unsupported.append("rank_pattern/alpha_pattern")
        if data.get("bias", "none") != "none":
            unsupported.append(f"bias={data['bias']!r}")
        if unsupported:
            raise AdapterError(f"This PEFT LoRA uses {unsupported}, which adapterlab does not import; only plain LoRA.")
        targets = data["target_modules"]
        targets = [targets] if isinstance(targets, str) else list(targets)
        if len(targets) == 1 and any(c in targets[0] for c in "()|^$*"):
            targets = [t.replace("\\.", ".") for t in targets[0].strip("()^$").split("|")]
        return cls(targets=targets, r=data["r"], alpha=data["lora_alpha"], dropout=data.get("lora_dropout", 0.0))


def peft_task_type(model: nn.Module) -> str | None:
    """PEFT's task_type for a transformers model class, or None for a bare model."""
    name = type(model).__name__
    for suffix, task in (("ForCausalLM", "CAUSAL_LM"), ("ForSequenceClassification", "SEQ_CLS")):
        if name.endswith(suffix):
            return task
    return None


class LoraAdapter(Adapter):
    """The low-rank update B A of one linear layer."""

    def __init__(self, in_features: int, out_features: int, r: int, scaling: float, dropout: float,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(r, out_features, bias=False, device=device, dtype=dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        delta = self.lora_B(self.lora_A(self.dropout(in_dtype_of(self, x))))
        return y + (delta * self.scaling).to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B A, laid out (out, in)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    @torch.no_grad()
    def merge(self, host: nn.Module) -> None:
        weight = weight_as_out_in(host)
        weight += self.delta_weight().to(weight.dtype)

    @torch.no_grad()
    def unmerge(self, host: nn.Module) -> None:
        weight = weight_as_out_in(host)
        weight -= self.delta_weight().to(weight.dtype)
