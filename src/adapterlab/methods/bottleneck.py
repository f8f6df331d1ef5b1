"""Bottleneck adapters: series (Houlsby et al., 2019; Pfeiffer et al., 2021) and parallel (He et al., 2022).

One module, `up(act(down(dropout(x))))`, placed two ways:

* series:   y' = y + s * f(y)  on the output y of a linear layer or of an attention/MLP sublayer (before
  the block's residual add). `houlsby` places it after both sublayers, `pfeiffer` after the MLP only.
  With `input_targets`, the linear layers they name get it on their input instead: the layer reads
  x + s * f(x) (LLM-Adapters' "mh_adapter", which their AdapterH puts on the inputs of gate/up).
* parallel: y' = y + s * f(x)  with x the input of the linear layer (LLM-Adapters: in -> size -> out) or
  of the whole sublayer (the input of its entry layer; He et al. 2022, AdaptFormer). `scaled_parallel`
  is He et al.'s setting: at the MLP, s = 4, up-projection zero at init.

Semantics follow LLM-Adapters' bottleneck tuner by default: dropout on the adapter input, "bert" init N(0, 0.02)
on both projections, `scaling` a float or "learned" (a scalar parameter initialised to 1.0, as
LLM-Adapters and AdaptFormer's learnable scalar). LLM-Adapters' projections have no bias: pass
bias=False to reproduce its parameter counts. Its "AdapterP" is `pfeiffer` (series on down_proj); its
"AdapterH" is `series` with targets gate/up/down and input_targets=["mlp_in"] (the inputs of gate/up, the
output of down), whereas `houlsby` here follows Houlsby et al. (after the attention and the MLP outputs). Not mergeable: the activation makes the adapter nonlinear.

`adaptformer` is AdaptFormer's adapter as MoSA's code builds it (Chen et al. 2022; Theia-4869/MoSA
vit_mosa.py): beside the MLP, reading the block's residual stream (`source="residual"`: the input of the
MLP's pre-norm, or the sublayer input itself in post-norm families), its own input LayerNorm (eps 1e-6, as
theirs), down 64, GELU, dropout 0.1 after the activation, up zero-initialised, scaled by 0.1.

`residual` (Cappellazzo et al. 2024's `--apply_residual` ablation, umbertocappellazzo/PETL_AST
src/AST_adapters.py): whether an identity term runs beside the adapter. With F the site's output, x the
adapter's input and h the block's residual stream (added by the block, outside the site), the four cells:

* series,   residual=True (default):  y' = F + s * f(F)          (block: h + F + A(F))
* series,   residual=False:           y' = s * f(F)              (block: h + A(F); "A(F) alone")
* parallel, residual=False (default): y' = F + s * f(x)          (block: h + F + A(x))
* parallel, residual=True:            y' = F + s * f(x) + x      (block: h + F + A(x) + x)

In their code x is the sublayer's normalised input (AST's layernorm_after(h) at the MLP, layernorm_before(h)
at the attention): here the input of the sublayer's entry layer, the same on AST with source="sublayer"
(with source="residual", x is h itself). Parallel with residual needs x and F of one width. For an input
placement (`input_targets`), residual=False makes the layer read s * f(x) instead of x + s * f(x). Without the
residual the series adapter is not the identity at init: zero init makes the sublayer output zero.

AdapterDrop (Rücklé et al., EMNLP 2021), an option of every method here (its sites and gates, `adapterdrop.py`):

* `drop_layers=k` (default 0: none): the adapters of the lowest k blocks (0..k-1) do not run at inference.
* `drop_training="fixed"` (default): the paper's *specialised* AdapterDrop, k fixed in training too: no adapter
  is placed in blocks 0..k-1 (the same adapter as `layers=[k, ..., n-1]`).
* `drop_training="robust"`: the paper's *robust* AdapterDrop: adapters in every block; each training step draws
  j uniformly from {0, ..., n-1} (n blocks) and skips the adapters of blocks 0..j-1 (a reproducible draw of the
  step and the training seed, `stochastic.py`). One trained adapter serves any k at inference: pass
  `drop_layers` here or choose it later with `adapterlab.set_drop_layers(model, k)`.

AdapterHub's `adapters` exposes the same as `skip_layers` on the active setup, re-drawn per step by a trainer
callback (robust) or fixed; here both are adapter options, saved with the adapter.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from torch import nn
from transformers.activations import ACT2FN

from .adapterdrop import AdapterDrop, LayerDrop, check_drop, drop_sites, layer_drop
from ..core.config import AdapterConfig, one_of, positive_int
from ..core.option_help import documented, option_field
from ..errors import AdapterError
from ..core.layers import is_linear, reference_tensor
from ..core.sites import Placement, Site
from ..core.adapter import Adapter
from .block_norms import BlockNorms
from .bottleneck_module import BottleneckAdapter
from .sublayer_sites import input_features, residual_site, site_features
from ..interop.llm_adapters.fork import fork_key_to_ours, fork_options
from ..interop.peft.protocol import PeftMethod

INITS = ("bert", "zero")
DROPOUT_AT = ("input", "hidden")
SOURCES = ("sublayer", "residual")


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


@documented
@dataclass
class BottleneckOptions(PeftMethod, BlockNorms, AdapterConfig):
    """The options of every bottleneck adapter, one module up(act(down(dropout(x)))) (the module docstring)."""

    site_kinds = ("module", "sublayer")

    size: int = option_field(256, "the bottleneck width (down projects to it, up back from it)")
    activation: str = option_field("tanh", "the nonlinearity between down and up, a transformers ACT2FN name (relu, "
                                   "gelu, tanh, silu, ...)")
    bias: bool = option_field(True, "biases in the down and up projections",
                              paper="LLM-Adapters' recipe: false (their projections have none)")
    init: str = option_field("bert", "the initial weights: bert (N(0, 0.02) on both projections, as LLM-Adapters) or "
                             "zero (up zero, down Kaiming-uniform: the model is unchanged at init)")
    scaling: float | str = option_field(1.0, "the factor s on the adapter's output: a number, or learned (a scalar "
                                        "parameter starting at 1.0)")
    dropout: float = option_field(0.0, "the adapter's dropout rate")
    dropout_at: str = option_field("input", "where the dropout acts: input (on what the adapter reads, LLM-Adapters) "
                                   "or hidden (after the activation, AdaptFormer)")
    layer_norm: bool = option_field(False, "a LayerNorm on what the adapter reads (AdaptFormer, and Pfeiffer in "
                                    "MoSA's code)")
    drop_layers: int = option_field(0, "AdapterDrop: the adapters of the lowest k blocks do not run at inference")
    drop_training: str = option_field("fixed", "AdapterDrop in training: fixed (no adapter in the lowest drop_layers "
                                      "blocks) or robust (each step skips the lowest j blocks, j drawn per step)")
    residual: bool = option_field(False, "the identity term beside the adapter (series: y + s*f(y) or s*f(y) alone; "
                                  "parallel: adds the adapter's input x)",
                                  paper="PETL for AST's --apply_residual defaults to false everywhere")

    def validate(self) -> None:
        self.check_size()
        if self.activation not in ACT2FN:
            raise AdapterError(
                f"{self.method}: unknown `activation` {self.activation!r}. Use one of {sorted(ACT2FN)}."
            )
        for flag in ("bias", "layer_norm", "residual"):
            if not isinstance(getattr(self, flag), bool):
                raise AdapterError(f"{self.method}: `{flag}` must be true or false, got {getattr(self, flag)!r}.")
        one_of(self.method, "dropout_at", self.dropout_at, DROPOUT_AT)
        one_of(self.method, "init", self.init, INITS)
        self.scaling = parse_scaling(self.method, self.scaling)
        if not 0.0 <= float(self.dropout) < 1.0:
            raise AdapterError(f"{self.method}: `dropout` must be in [0, 1), got {self.dropout!r}.")
        check_drop(self.method, self.drop_layers, self.drop_training)
        self.check_train_norms(self.method)

    def check_size(self) -> None:
        """Refuse a `size` that is not a positive integer (Compacter also takes none: a width ratio instead)."""
        positive_int(self.method, "size", self.size)

    def sites(self, model: nn.Module, placement: Placement) -> list[Site]:
        """The adapter's sites and the norms `train_norms` adds, less those AdapterDrop removes ("fixed")."""
        sites = self.with_norms(self.adapter_sites(model, placement), model, placement)
        plan = self.adapter_drop()
        return sites if plan is None else drop_sites(plan, sites, placement.blocks)

    def gate(self, site: Site, name: str, placement: Placement) -> LayerDrop | None:
        """Robust AdapterDrop's per-step skip of the module at `site` (`adapterdrop.py`), or None."""
        return layer_drop(self.adapter_drop(), site, name, placement)

    def adapter_sites(self, model: nn.Module, placement: Placement) -> list[Site]:
        """The adapter's own sites (its targets'), without the norms `train_norms` adds."""
        return super().sites(model, placement)

    def build(self, site: Site, model: nn.Module, placement: Placement) -> Adapter:
        norm = self.build_norm(site, model)
        return norm if norm is not None else self.build_adapter(site, model, placement)

    def build_adapter(self, site: Site, model: nn.Module, placement: Placement) -> BottleneckAdapter:
        """The bottleneck module at one of the adapter's own sites (each placement builds its own)."""
        raise NotImplementedError

    peft_type = "BOTTLENECK"  # LLM-Adapters' fork of PEFT: load_peft imports its checkpoints (import only)
    peft_key_to_ours = staticmethod(fork_key_to_ours)

    @classmethod
    def from_peft(cls, data: dict) -> BottleneckOptions:
        """The series / pfeiffer / parallel adapter their BottleneckConfig `data` describes (`llm_adapters/fork.py`)."""
        method, options = fork_options(data)
        return {"series": SeriesConfig, "pfeiffer": PfeifferConfig, "parallel": ParallelConfig}[method](**options)

    def adapter_drop(self) -> AdapterDrop | None:
        if self.drop_layers == 0 and self.drop_training == "fixed":
            return None
        return AdapterDrop(self.method, self.drop_layers, self.drop_training)

    def make(self, in_features: int, out_features: int, placement: str, host: nn.Module) -> BottleneckAdapter:
        if self.size >= min(in_features, out_features):  # e.g. the default 256 on a 128-wide model
            warnings.warn(f"{self.method}: size {self.size} is not below the width it adapts "
                          f"({min(in_features, out_features)}), so the adapter widens rather than bottlenecks; pass "
                          "a smaller size (e.g. width / 16).", stacklevel=2)
        ref = reference_tensor(host)
        return BottleneckAdapter(in_features, out_features, self, placement, ref.device, ref.dtype)


@documented
@dataclass
class SeriesConfig(BottleneckOptions):
    """Series adapter on the output y of each target (a linear layer or an attn/mlp sublayer): y + s * f(y)."""

    method = "series"
    default_targets = ("down",)

    input_targets: list[str] | None = option_field(None, "those of the targets' linear layers (suffixes, logical "
                                                   "names, mlp_in) whose input the adapter adapts instead: the layer "
                                                   "reads x + s*f(x)", paper="LLM-Adapters' recipe: mlp_in")
    residual: bool = True

    def validate(self) -> None:
        super().validate()
        if isinstance(self.input_targets, str):
            self.input_targets = [t.strip() for t in self.input_targets.split(",") if t.strip()]

    def input_paths(self, placement: Placement) -> set[str]:
        """Paths of the layers whose input (not output) gets the adapter."""
        if not self.input_targets:
            return set()
        sites = placement.resolve(list(self.input_targets), self.layers, defaults=True)
        sublayers = [s.target for s in sites if s.kind != "module"]
        if sublayers:
            raise AdapterError(f"{self.method}: input_targets adapt one linear layer's input; {sublayers[0]!r} is a "
                               "sublayer. Name linear layers (e.g. up_proj, or mlp_in for the MLP's inputs).")
        return {s.path for s in sites}

    def build_adapter(self, site: Site, model: nn.Module, placement: Placement) -> BottleneckAdapter:
        width, where = self.series_width(site, model, placement)
        return self.make(width, width, where, model.get_submodule(site.path))

    def series_width(self, site: Site, model: nn.Module, placement: Placement) -> tuple[int, str]:
        """(the width the module at `site` adapts, "input" or "series"): the input of an `input_targets` layer, else
        the site's output."""
        host = model.get_submodule(site.path)
        if site.path in self.input_paths(placement) and site.kind == "module":
            width = input_features(host)
            if width is None or not is_linear(host):
                raise AdapterError(f"{self.method}: input target {site.path!r} is a {type(host).__name__}, not a "
                                   "linear layer; input_targets name linear layers.")
            return width, "input"
        return site_features(site, model, self.method)[1], "series"


@documented
@dataclass
class ParallelConfig(BottleneckOptions):
    """Parallel adapter beside each target (He et al., 2022): y + s * f(x), x the linear layer's or the sublayer's
    input."""

    method = "parallel"
    default_targets = ("mlp",)

    source: str = option_field("sublayer", "what the adapter reads: sublayer (its input) or residual (the block's "
                               "residual stream before the sublayer's pre-norm, as AdaptFormer)")

    def validate(self) -> None:
        super().validate()
        one_of(self.method, "source", self.source, SOURCES)

    def adapter_sites(self, model: nn.Module, placement: Placement) -> list[Site]:
        sites = super().adapter_sites(model, placement)
        if self.source == "sublayer":
            return sites
        return [residual_site(site, model, placement, self.method) for site in sites]

    def build_adapter(self, site: Site, model: nn.Module, placement: Placement) -> BottleneckAdapter:
        in_features, out_features = site_features(site, model, self.method)
        if self.residual and in_features != out_features:
            raise AdapterError(f"{self.method}: residual=True adds the adapter's input x to the output, but at "
                               f"{site.path!r} x has {in_features} features and the output {out_features}. Target "
                               "a sublayer (attn, mlp) or a square linear layer, or set residual=False.")
        return self.make(in_features, out_features, "parallel", model.get_submodule(site.path))


@documented
@dataclass
class HoulsbyConfig(SeriesConfig):
    """Houlsby et al. (2019): a series adapter after the attention and after the MLP sublayer of each block."""

    method = "houlsby"
    default_targets = ("attn", "mlp")


@documented
@dataclass
class PfeifferConfig(SeriesConfig):
    """Pfeiffer et al. (2021): a series adapter after the MLP sublayer only (LLM-Adapters' AdapterP)."""

    method = "pfeiffer"
    default_targets = ("mlp",)


@documented
@dataclass
class ScaledParallelConfig(ParallelConfig):
    """He et al. (2022)'s scaled parallel adapter: beside the MLP, scaled by 4, up-projection zero at init."""

    method = "scaled_parallel"

    scaling: float | str = 4.0
    init: str = "zero"


@documented
@dataclass
class AdaptFormerConfig(ParallelConfig):
    """AdaptFormer as MoSA builds it: LN(residual) -> down 64 -> GELU -> dropout 0.1 -> up (zero init), x 0.1."""

    method = "adaptformer"

    size: int = 64
    activation: str = "gelu"
    init: str = "zero"
    scaling: float | str = 0.1
    dropout: float = 0.1
    dropout_at: str = "hidden"
    layer_norm: bool = True
    source: str = "residual"
