"""AdapterFusion (Pfeiffer et al., EACL 2021), stage two: attention over the outputs of N trained, frozen adapters.

At each site of its members (series bottleneck adapters: pfeiffer, houlsby, series, compacter), with the members' pieces
(`BottleneckAdapter.branch`): q = the members' input, up_i = member i's scaled branch s * f_i(q), r = what the
branch is added to (the site's output y), all three taken from the last member as AdapterHub's `compose_fuse`:

    scores_i = Query(q) . Key(up_i)          (dropout on the scores, then softmax over i, divided by T)
    out      = sum_i p_i Value(up_i) + r     (Value after the softmax with value_before_softmax=false)

Written from AdapterHub's `BertFusion` and `BottleneckLayer.compose_fuse`; the default is their default config
("dynamic"): Query and Key d x d with bias, Value d x d without bias initialised to the identity (1e-6 off the
diagonal), regularization 0.01 * ||I - Value||^2 per site added to the training loss, no temperature, dropout on
the scores at the base model's attention_probs_dropout_prob. `residual_before` adds r to every up_i before the
attention (keys too: AdapterHub adds it in place to the one tensor it passes as key and value) and not after.
`temperature`: T starts at 50 and falls by 0.05 per training forward down to 1 (AdapterHub's schedule; theirs also
falls in eval forwards and restarts at 50 on load; here T is a saved buffer that moves in training only).

Differences from AdapterHub: their Pfeiffer adapter reads LayerNorm(F + h) (the sublayer output after the block's
residual add and norm) and is added before that norm; adapterlab's series adapters read F and are added to it, so
q is F here (their query_before_ln has no second value to choose: both of its readings are F). Without query, key
and value they build an unused Linear(d, 1); none here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.adapter import Adapter
from ..core.composition import Composing
from ..core.config import AdapterConfig
from ..core.layers import reference_tensor
from ..core.option_help import documented, option_field
from ..core.sites import Placement, Site
from ..errors import AdapterError

T_START, T_FLOOR = 50.0, 1.0  # AdapterHub's BertFusion: T = 50, reduced by T/1000 per forward, floor 1
REGULARIZATION = 0.01  # their get_fusion_regularization_loss weight


@documented
@dataclass
class FusionConfig(Composing, AdapterConfig):
    """AdapterFusion: attention over the outputs of trained series adapters (adapters=...), per site."""

    method = "fusion"
    site_kinds = ("module", "sublayer")

    query: bool = option_field(True, "a d x d linear map (with bias) on the query")
    key: bool = option_field(True, "a d x d linear map (with bias) on the keys (the members' outputs)")
    value: bool = option_field(True, "a d x d linear map (no bias) on the values (the members' outputs)",
                               paper="AdapterHub's static config: false")
    value_before_softmax: bool = option_field(True, "the value map acts on each member's output before the weighted "
                                              "sum (false: on the sum)")
    value_initialized: bool = option_field(True, "the value map starts as the identity (1e-6 off the diagonal); "
                                           "false: N(0, 0.02)")
    residual_before: bool = option_field(False, "add the site's output to each member's output before the attention "
                                         "(keys and values) instead of to the result")
    temperature: bool = option_field(False, "softmax temperature from 50 down by 0.05 per training forward to 1")
    regularization: bool = option_field(True, "add 0.01 x the squared distance of each site's value map from the "
                                        "identity to the training loss",
                                        paper="AdapterHub's static config: false")
    dropout: float | None = option_field(None, "dropout on the attention scores; unset: the base model's "
                                         "attention_probs_dropout_prob (0 where it has none), as AdapterHub")

    def validate(self) -> None:
        self.check_members()
        for flag in ("query", "key", "value", "value_before_softmax", "value_initialized", "residual_before",
                     "temperature", "regularization"):
            if not isinstance(getattr(self, flag), bool):
                raise AdapterError(f"fusion: `{flag}` must be true or false, got {getattr(self, flag)!r}.")
        if self.regularization and not self.value:
            raise AdapterError("fusion: regularization pulls the value map toward the identity; with value=false "
                               "there is none. Set regularization=false.")
        if self.dropout is not None and not 0.0 <= float(self.dropout) < 1.0:
            raise AdapterError(f"fusion: `dropout` must be in [0, 1), got {self.dropout!r}.")

    def check_member(self, name: str, module: Adapter) -> None:
        if getattr(module, "placement", None) != "series" or not hasattr(module, "branch"):
            what = getattr(module, "placement", type(module).__name__)
            raise AdapterError(f"fusion fuses series bottleneck adapters (pfeiffer, houlsby, series, compacter); "
                               f"member {name!r} has a {what} module at {module._site.path!r} (train_norms, parallel "
                               "and input placements are not fused).")
        if module.gate is not None:
            raise AdapterError(f"fusion: member {name!r} has robust AdapterDrop; fuse adapters that always run.")

    def build_composer(self, site: Site, members: list[Adapter], model: nn.Module, placement: Placement) -> Adapter:
        width = members[0].up.out_features
        if any(m.up.out_features != width for m in members):
            raise AdapterError(f"fusion: the members' outputs at {site.path!r} differ in width.")
        rate = self.dropout if self.dropout is not None else \
            float(getattr(getattr(model, "config", None), "attention_probs_dropout_prob", 0.0) or 0.0)
        ref = reference_tensor(model.get_submodule(site.path))  # built as the host; attach's adapter_dtype applies
        return FusionModule(width, self, rate, members, ref.device, ref.dtype)


class FusionModule(Adapter):
    """The fusion layer at one site: attention with the members' input as query over their scaled branches."""

    def __init__(self, width: int, options: FusionConfig, dropout: float, members: list[Adapter],
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.members = tuple(members)  # not submodules: they stay the members' own (state dict, trainability)
        self.options = options
        self.dropout = nn.Dropout(dropout)
        made = dict(device=device, dtype=dtype)
        self.query = nn.Linear(width, width, **made) if options.query else None
        self.key = nn.Linear(width, width, **made) if options.key else None
        self.value = nn.Linear(width, width, bias=False, **made) if options.value else None
        if options.temperature:
            self.register_buffer("temperature", torch.tensor(T_START, device=device))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for layer in (self.query, self.key, self.value):
            if layer is not None:
                nn.init.normal_(layer.weight, std=0.02)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        if self.value is not None and self.options.value_initialized:
            self.value.weight.fill_(1e-6).fill_diagonal_(1.0)

    def reads_input(self) -> bool:
        """Only where a member reads the site's input (series members read its output: no entry hook)."""
        return any(member.reads_input() for member in self.members)

    def adapt_output(self, x: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        pieces = [member.branch(x, y) for member in self.members]
        query, _, residual = (self.cast_in(p) if p is not None else None for p in pieces[-1])
        ups = torch.stack([self.cast_in(p[1]) for p in pieces], dim=-2)  # (..., members, width)
        if self.options.residual_before and residual is not None:
            ups = ups + residual.unsqueeze(-2)
        q = self.query(query) if self.query is not None else query
        k = self.key(ups) if self.key is not None else ups
        v = self.value(ups) if self.value is not None and self.options.value_before_softmax else ups
        scores = self.dropout(torch.matmul(q.unsqueeze(-2), k.transpose(-2, -1)).squeeze(-2))
        probs = torch.softmax(scores / self._temperature_step(), dim=-1)
        out = torch.matmul(probs.unsqueeze(-2), v).squeeze(-2)
        if self.value is not None and not self.options.value_before_softmax:
            out = self.value(out)
        if not self.options.residual_before and residual is not None:
            out = out + residual
        return out.to(y.dtype)

    def _temperature_step(self) -> float:
        """This forward's T (1 without `temperature`); a training forward then lowers it by T_START / 1000."""
        if not self.options.temperature:
            return 1.0
        t = float(self.temperature)
        if self.training:
            self.temperature.fill_(max(t - T_START / 1000, T_FLOOR))
        return t

    def penalty(self) -> torch.Tensor | None:
        """AdapterHub's fusion regularization: 0.01 * ||I - Value||^2, while the value map trains."""
        if not self.options.regularization or self.value is None or not self.value.weight.requires_grad:
            return None
        weight = self.value.weight
        eye = torch.eye(weight.shape[0], device=weight.device, dtype=weight.dtype)
        return REGULARIZATION * (eye - weight).pow(2).sum()
