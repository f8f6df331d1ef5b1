"""LoRA (Hu et al., 2021): y = W x + (alpha / r) * B A dropout(x), with B zero at init. Mergeable.

Variants of the module, as PEFT's `LoraVariant`s: DoRA (`use_dora`, methods/dora.py); and PEFT's initialisations
(`init_lora_weights`, methods/lora_init.py), PiSSA and OLoRA among them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..core.config import AdapterConfig, positive_int
from ..core.option_help import documented, option_field
from ..errors import AdapterError
from ..core.layers import is_quantized_layer, linear_features, reference_tensor, weight_as_out_in
from ..core.sites import Placement, Site
from ..core.adapter import Adapter, RowStack, linear_host
from ..interop.peft.protocol import PeftMethod, peft_heads, peft_targets, peft_task_type, refuse_peft_options
from ..interop.peft.protocol import regex_of_paths
from .dora import DoraVariant
from .lora_init import RESIDUAL_INITS, check_host, check_init, draw, residual_init, restore


@documented
@dataclass
class LoraConfig(PeftMethod, AdapterConfig):
    """LoRA (Hu et al., 2021): a low-rank update W + (alpha / r) * B A beside each target linear layer, B zero at
    init; mergeable into the weights."""

    method = "lora"
    default_targets = ("q", "v")
    mergeable = True

    r: int = option_field(8, "the rank of the update (the inner width of B A)")
    alpha: float = option_field(16.0, "the scale numerator: the update is scaled by alpha / r",
                                paper="PEFT's LoraConfig: 8; LLM-Adapters' finetune.py: 16")
    dropout: float = option_field(0.0, "dropout on the LoRA branch's input", paper="LLM-Adapters' recipe: 0.05")
    use_dora: bool = option_field(False, "DoRA (Liu et al., 2024): a learned magnitude per output feature times the "
                                  "normalised W + s B A, as PEFT's use_dora")
    init_lora_weights: bool | str = option_field(
        True, "PEFT's init_lora_weights: true (A Kaiming-uniform, B zero), false (A and B both random: not the base "
              "at init), gaussian (A ~ N(0, 1/r), B zero), pissa or olora (A, B from the weight's SVD or QR; these "
              "leave W - s B A in the base layers, see the README)")

    peft_type = "LORA"

    def validate(self) -> None:
        positive_int(self.method, "r", self.r)
        if not 0.0 <= float(self.dropout) < 1.0:
            raise AdapterError(f"lora: `dropout` must be in [0, 1), got {self.dropout!r}.")
        if not isinstance(self.use_dora, bool):
            raise AdapterError(f"lora: `use_dora` must be true or false, got {self.use_dora!r}.")
        self.init_lora_weights = check_init(self.init_lora_weights)

    def build(self, site: Site, model: nn.Module, placement: Placement) -> LoraAdapter:
        host = linear_host(site, model, "lora adapts", "q_proj, v_proj")
        in_features, out_features = linear_features(host)
        if self.use_dora and is_quantized_layer(host):
            raise AdapterError(f"lora: use_dora on a quantized base ({site.path} is a {type(host).__name__}) is not "
                               "supported; load the base unquantized, or drop use_dora.")
        check_host(host, self.init_lora_weights, self.r, in_features, out_features)
        others = list(getattr(model, "adapterlab_configs", {}))
        if self.init_lora_weights in RESIDUAL_INITS and others:
            raise AdapterError(f"lora: init_lora_weights={self.init_lora_weights!r} changes the base weights that the "
                               f"adapters already attached ({', '.join(others)}) run on; attach it to a model without "
                               "adapters (PEFT warns of the same).")
        ref = reference_tensor(host)
        return LoraAdapter(in_features, out_features, self.r, self.alpha / self.r, self.dropout, ref.device, ref.dtype,
                           use_dora=self.use_dora, init=self.init_lora_weights)


    def to_peft(self, model: nn.Module, sites: list[Site]) -> dict:
        """The equivalent PEFT LoraConfig as a dict; targets are the exact placed layers."""
        from transformers.pytorch_utils import Conv1D

        return {
            "peft_type": "LORA",
            "task_type": peft_task_type(model),
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": regex_of_paths(s.path for s in sites),
            "fan_in_fan_out": any(isinstance(model.get_submodule(s.path), Conv1D) for s in sites),
            "bias": "none",
            "use_dora": self.use_dora,
            "init_lora_weights": self.init_lora_weights,
            "modules_to_save": peft_heads(model),
            "inference_mode": True,
        }

    @classmethod
    def from_peft(cls, data: dict) -> LoraConfig:
        """A LoraConfig from a PEFT adapter_config.json: plain LoRA, or rsLoRA (its alpha / sqrt(r) scaling
        is the same as alpha * sqrt(r) / r); anything else that changes the model is refused by name."""
        refuse_peft_options("LoRA", data, PEFT_LORA_UNSUPPORTED)
        if data.get("bias", "none") != "none":
            raise AdapterError(f"This PEFT LoRA trains biases (bias={data['bias']!r}), which adapterlab does "
                               "not import; only bias='none' adapters.")
        r, alpha = data["r"], data["lora_alpha"]
        if data.get("use_rslora"):
            alpha = alpha * math.sqrt(r)
        return cls(targets=peft_targets(data["target_modules"]), r=r, alpha=alpha,
                   dropout=data.get("lora_dropout") or 0.0,  # old PEFT / their fork may write null
                   use_dora=bool(data.get("use_dora")),
                   init_lora_weights=peft_init(data.get("init_lora_weights", True)))


# PEFT LoraConfig options that change what the adapter computes or where it sits, and that adapterlab's
# LoRA cannot express; importing an adapter that sets one would silently give a different model.
PEFT_LORA_UNSUPPORTED = (
    "rank_pattern", "alpha_pattern", "lora_bias", "target_parameters",
    "layers_to_transform", "exclude_modules", "layer_replication", "trainable_token_indices",
    "alora_invocation_tokens", "use_qalora", "megatron_config", "use_bdlora", "arrow_config", "kasa_config",
    "enable_lora",  # LLM-Adapters' fork (old PEFT): MergedLinear, LoRA on slices of a fused projection
)


def peft_init(value: bool | str | None) -> bool | str:
    """The init an imported PEFT LoRA needs: its A and B come from the file, so only an init that changes the base
    weight (PiSSA, OLoRA) matters; other inits that leave it alone import as True; the rest are refused by name."""
    if value in (None, True, False, "gaussian", "eva", "orthogonal"):
        return True
    return value


class LoraAdapter(Adapter):
    """The low-rank update B A of one linear layer; `variant` (DoRA) changes its forward and merge."""

    split_points = {"down": "lora_A", "up": "lora_B"}  # the projections MoSA may split (methods/mosa.py)

    def __init__(self, in_features: int, out_features: int, r: int, scaling: float, dropout: float,
                 device: torch.device, dtype: torch.dtype, *, use_dora: bool = False, init: bool | str = True) -> None:
        super().__init__()
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.drops = dropout > 0  # an Identity is not called: at batch 1 each module call is a visible cost
        self.lora_A = nn.Linear(in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(r, out_features, bias=False, device=device, dtype=dtype)
        draw(self, init)
        self.init = init
        self.variant = DoraVariant if use_dora else None
        if self.variant is not None:
            self.variant.build(self, out_features)
        self._residual: tuple[torch.Tensor, torch.Tensor] | None = None  # what a PiSSA / OLoRA init took from W
        self._merged_norm: torch.Tensor | None = None  # DoRA's weight norm while merged

    def on_attach(self, host: nn.Module) -> None:
        """The inits read from the host's weight: PiSSA / OLoRA (which leave W - s B A in it), then DoRA's magnitude."""
        self.__dict__["_host"] = host  # not a submodule: the host owns this module
        if host.weight.is_meta:
            return
        if self.init in RESIDUAL_INITS:
            self._residual = residual_init(self, host, self.init)
        if self.variant is not None:
            self.variant.init(self, host)

    @property
    def changes_base(self) -> bool:
        return self._residual is not None

    def on_detach(self, host: nn.Module) -> None:
        if self._residual is not None:
            restore(host, self._residual, self.scaling)
            self._residual = None

    def forget_fold(self) -> None:
        super().forget_fold()
        self._residual = None  # merge_and_unload: the merged residual model is the trained one

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.cast_in(x)
        if self.variant is not None:
            return self.variant.forward(self, self._host, x, y)
        return self.adapt_output_after_down(x, y, self.lora_A(self.dropout(x) if self.drops else x))

    def down_projection(self) -> nn.Linear | None:
        """A (shareable with the q, k, v or gate, up LoRAs beside it) unless dropout draws a mask in training."""
        plain = type(self.lora_A) is nn.Linear  # MoSA's split A draws a module per step
        return self.lora_A if plain and not (self.drops and self.training) else None

    def adapt_output_after_down(self, x: torch.Tensor, y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.variant is not None:
            return self.variant.forward(self, self._host, x, y, h)
        delta = self.lora_B(h) * self.scaling
        return y + (delta if delta.dtype == y.dtype else delta.to(y.dtype))

    @classmethod
    def stack_rows(cls, adapters: list[LoraAdapter]) -> LoraRows | None:
        """The LoRAs of one site as one batched update (S-LoRA / Punica in plain torch); None where a member's A or B
        is not a plain linear layer (MoSA's split layers), a member is a variant (DoRA: each runs on its own rows) or
        the members differ in dtype or device."""
        plain = all(type(a.lora_A) is nn.Linear and type(a.lora_B) is nn.Linear and a.variant is None
                    for a in adapters)
        if not plain or len({(a.lora_A.weight.dtype, a.lora_A.weight.device) for a in adapters}) > 1:
            return None
        return LoraRows(adapters)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B A, laid out (out, in)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    @torch.no_grad()
    def merge_into(self, host: nn.Module) -> None:
        if self.variant is not None:
            return self.variant.merge(self, host)
        weight = weight_as_out_in(host)
        weight += self.delta_weight().to(weight.dtype)

    @torch.no_grad()
    def unmerge_from(self, host: nn.Module) -> None:
        if self.variant is not None:
            return self.variant.unmerge(self, host)
        weight = weight_as_out_in(host)
        weight -= self.delta_weight().to(weight.dtype)


class LoraRows(RowStack):
    """Several LoRAs of one layer for a mixed-adapter batch: their A and scaled B stacked, zero-padded to the
    largest rank (the padding and a zero entry for rows without a LoRA add exact zeros), gathered per row and
    applied with two batched matmuls. The stack is kept until a weight changes; the rows' gathered weights are kept
    while the call's rows stay the same (every step of one generate())."""

    def __init__(self, members: list[LoraAdapter]) -> None:
        super().__init__(members)
        self._rows: tuple | None = None

    def build(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(down (members + 1, in, rank), up (members + 1, rank, out)), up scaled by each member's alpha / r."""
        first = self.members[0]
        rank = max(a.lora_A.out_features for a in self.members)
        down = first.lora_A.weight.new_zeros(len(self.members) + 1, first.lora_A.in_features, rank)
        up = first.lora_B.weight.new_zeros(len(self.members) + 1, rank, first.lora_B.out_features)
        for i, adapter in enumerate(self.members):
            r = adapter.lora_A.out_features
            down[i, :, :r] = adapter.lora_A.weight.t()
            up[i, :r] = adapter.lora_B.weight.t() * adapter.scaling
        return down, up

    def adapt_output(self, x: torch.Tensor | None, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        down, up = self.cached(self.build)
        rows = self._rows
        if rows is None or rows[0] is not index or rows[1] is not down:
            rows = (index, down, down[index], up[index])
            if not torch.is_grad_enabled():
                self._rows = rows
        x = self.members[0].cast_in(x)
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        delta = torch.bmm(torch.bmm(flat, rows[2]), rows[3]).reshape(*y.shape[:-1], -1)
        return y + (delta if delta.dtype == y.dtype else delta.to(y.dtype))
