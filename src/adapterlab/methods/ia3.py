"""(IA)^3 (Liu et al., 2022): learned per-feature scaling vectors, initialised to ones. Mergeable.

Attention targets (default k, v) scale the layer's output, y * l, with l over out features; feed-forward
targets (default the down projection) scale its input, layer(x * l), with l over in features. The
vector is named and shaped as PEFT's `ia3_l` ((out, 1) or (1, in)), so checkpoints map one to one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.config import AdapterConfig
from ..core.option_help import documented, option_field
from ..errors import AdapterError, NotMergeableError
from ..core.layers import linear_features, reference_tensor, weight_as_out_in
from ..core.site_hooks import placed_at
from ..core.sites import Placement, Site, model_type_of
from ..core.adapter import Adapter, RowStack, linear_host
from ..interop.peft.protocol import PeftMethod, peft_heads, peft_targets, peft_task_type, refuse_peft_options
from ..interop.peft.protocol import regex_of_paths

DEFAULT_FEEDFORWARD = ("down",)


@documented
@dataclass
class IA3Config(PeftMethod, AdapterConfig):
    """IA3 (Liu et al., 2022): learned vectors that rescale the targets' outputs (the feedforward targets' inputs);
    mergeable into the weights."""

    method = "ia3"
    default_targets = ("k", "v", "down")
    mergeable = True

    feedforward: list[str] | None = option_field(None, "the targets whose input is scaled (logical names or "
                                                 "module-name suffixes, PEFT's feedforward_modules); every other "
                                                 "target has its output scaled; unset: the down projection")

    peft_type = "IA3"

    def validate(self) -> None:
        if isinstance(self.feedforward, str):
            self.feedforward = [t.strip() for t in self.feedforward.split(",") if t.strip()]
        if self.feedforward is not None:
            if not all(isinstance(t, str) and t for t in self.feedforward):
                raise AdapterError(f"ia3: `feedforward` must be a list of target names, got {self.feedforward!r}.")
            self.feedforward = list(self.feedforward)

    def feedforward_paths(self, model: nn.Module, placement: Placement) -> set[str]:
        """Full names of the layers whose input is scaled: those `feedforward` names, else the down projections.

        The default needs the model's architecture (the user's override honoured). Where it cannot say which
        layer is the down projection and targets were named, which of them are feed-forward is unknown:
        that is an error, not a silent switch to output scaling.
        """
        if self.feedforward is not None:
            return {s.path for s in placement.resolve(self.feedforward, self.layers)}
        try:
            arch = placement.architecture
        except AdapterError as exc:
            raise self._feedforward_unknown(f"no architecture is known for this {model_type_of(model)} model") from exc
        if arch.projection("down") is None:
            if self.targets is None:  # the defaults skipped down on this family: no target is feed-forward
                return set()
            raise self._feedforward_unknown(f"the {arch.name} architecture has no down projection")
        return {s.path for s in placement.resolve(list(DEFAULT_FEEDFORWARD), self.layers, defaults=True)}

    def _feedforward_unknown(self, reason: str) -> AdapterError:
        return AdapterError(
            f"ia3 scales the input of feed-forward layers (by default the down projection), but {reason}, so "
            "which targets are feed-forward is unknown. "
            "Name them with feedforward=[...] (feedforward=[] for none), or pass architecture={'down': ...}."
        )

    def build(self, site: Site, model: nn.Module, placement: Placement) -> IA3Adapter:
        host = linear_host(site, model, "ia3 scales", "k_proj, v_proj, down_proj")
        in_features, out_features = linear_features(host)
        feedforward = site.path in self.feedforward_paths(model, placement)
        ref = reference_tensor(host)
        return IA3Adapter(in_features if feedforward else out_features, feedforward, ref.device, ref.dtype)

    def to_peft(self, model: nn.Module, sites: list[Site]) -> dict:
        """The equivalent PEFT IA3Config as a dict; `sites` are those of the placed adapters (`adapter._site`),
        whose vectors say which layers are feed-forward."""
        from transformers.pytorch_utils import Conv1D

        feedforward = [s.path for s in sites if placed_at(model, s).feedforward]
        return {
            "peft_type": "IA3",
            "task_type": peft_task_type(model),
            "target_modules": regex_of_paths(s.path for s in sites),
            "feedforward_modules": regex_of_paths(feedforward) if feedforward else [],
            "fan_in_fan_out": any(isinstance(model.get_submodule(s.path), Conv1D) for s in sites),
            "modules_to_save": peft_heads(model),
            "init_ia3_weights": True,
            "inference_mode": True,
        }

    @classmethod
    def from_peft(cls, data: dict) -> IA3Config:
        """An IA3Config from a PEFT adapter_config.json (modules_to_save are handled by load_peft)."""
        refuse_peft_options("IA3", data, ("exclude_modules",))
        targets = peft_targets(data["target_modules"])
        feedforward = peft_targets(data.get("feedforward_modules") or [])
        return cls(targets=targets, feedforward=feedforward)


class IA3Adapter(Adapter):
    """One (IA)^3 vector: scales the host's output features, or its input features if `feedforward`."""

    def __init__(self, features: int, feedforward: bool, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.feedforward = feedforward
        shape = (1, features) if feedforward else (features, 1)
        self.ia3_l = nn.Parameter(torch.ones(shape, device=device, dtype=dtype))

    def changes_input(self) -> bool:
        return self.feedforward

    def changes_output(self) -> bool:
        return not self.feedforward

    def reads_input(self) -> bool:
        return False

    def adapt_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.feedforward:
            return x
        return (x.to(self.ia3_l.dtype) * self.ia3_l.flatten()).to(x.dtype)

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.feedforward:
            return y
        return (y.to(self.ia3_l.dtype) * self.ia3_l.flatten()).to(y.dtype)

    @classmethod
    def stack_rows(cls, adapters: list[IA3Adapter]) -> IA3Rows | None:
        """The vectors of one site as one table gathered per row; None where the members scale different sides or
        differ in dtype or device."""
        if len({(a.feedforward, a.ia3_l.dtype, a.ia3_l.device) for a in adapters}) > 1:
            return None
        return IA3Rows(adapters)

    @torch.no_grad()
    def merge_into(self, host: nn.Module) -> None:
        """Scale the weight's rows (and the bias, which the output scaling also multiplies) or columns by l.

        Refuses a vector with exact zeros: those rows or columns would be erased and unmerge could not
        bring them back.
        """
        if bool((self.ia3_l == 0).any()):
            raise NotMergeableError(
                "ia3: this vector has exact zeros, so merging would erase base weights that unmerge cannot "
                "restore; keep the adapter unmerged."
            )
        self._rescale(host, torch.mul)

    @torch.no_grad()
    def unmerge_from(self, host: nn.Module) -> None:
        """Divide the merged scaling back out. (w * l) / l equals w only to rounding (about one ulp of the
        weight's dtype per merge/unmerge cycle), so many cycles in half precision drift slightly."""
        self._rescale(host, torch.div)

    def _rescale(self, host: nn.Module, op) -> None:
        """weight (and, for output scaling, bias) <- op(value, l), computed in at least float32."""
        weight = weight_as_out_in(host)
        compute = torch.promote_types(weight.dtype, torch.float32)
        scale = self.ia3_l.flatten().to(compute)
        if self.feedforward:
            weight.copy_(op(weight.to(compute), scale[None, :]).to(weight.dtype))
        else:
            weight.copy_(op(weight.to(compute), scale[:, None]).to(weight.dtype))
            if getattr(host, "bias", None) is not None:
                host.bias.copy_(op(host.bias.to(compute), scale).to(host.bias.dtype))


class IA3Rows(RowStack):
    """Several IA3 vectors of one layer for a mixed-adapter batch: a table of them (and ones for rows without one),
    each row scaled by its own."""

    def build(self) -> torch.Tensor:
        first = self.members[0].ia3_l
        table = first.new_ones(len(self.members) + 1, first.numel())
        for i, adapter in enumerate(self.members):
            table[i] = adapter.ia3_l.flatten()
        return table

    def scale(self, t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        table = self.cached(self.build)[index]
        scaled = t.to(table.dtype).reshape(t.shape[0], -1, t.shape[-1]) * table[:, None, :]
        return scaled.reshape(t.shape).to(t.dtype)

    def adapt_input(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.scale(x, index) if self.members[0].feedforward else x

    def adapt_output(self, x: torch.Tensor | None, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return y if self.members[0].feedforward else self.scale(y, index)
