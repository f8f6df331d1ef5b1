"""Conformer adapter (Cappellazzo et al., 2024, "Parameter-Efficient Transfer Learning of Audio Spectrogram
Transformers"): the Conformer convolution module (Gulati et al., 2020) used as an adapter.

f(h) = pw_out(SiLU(norm(dw_conv(GLU(pw_in(LN(h)))))))  on h of shape (batch, seq, d):
LN over d (`input_norm`; the paper's code computes this LN but then convolves its input x, not the
result, in Conformer_adapter.forward: input_norm=False reproduces what it runs), pointwise conv d -> 2*size,
GLU over channels, depthwise conv over the sequence (`kernel_size`, odd or even; 31 by default as in common
Conformer code and their --kernel_size, 8 their best on audio), BatchNorm (the paper) or LayerNorm, SiLU,
pointwise conv size -> out. Unlike the paper's code, the depthwise conv has no bias in front of BatchNorm by
default, which would cancel it (it never trains); conv_bias=True adds it, for their parameter counts (AST-base,
size 8, kernel 31: 252,288 with it, 252,192 without). train_norms=True also trains each block's norm in front
of the adapted sublayer, as their code does (`block_norms.py`). Placement "parallel" adds f(x) (x the sublayer or layer input) to the output, "series" adds
f(y). The paper's best setting, parallel at the MLP ("Pfeiffer") with no extra residual, is the default;
its bottleneck is d / 64 (12 on AST-base), so pass size=12 to match it there.

`residual` is their `--apply_residual` (PETL_AST main.py, used in ASTLayer_adapter.forward whichever adapter
block, bottleneck or conformer, the layer holds), with the same four cells as the bottleneck adapters'
`residual` (methods/bottleneck.py). With F the site's output, x its input (on AST's MLP: layernorm_after(h),
as their code) and h the block's residual stream, added by the block outside the site:

* series,   residual=True (default here):  y' = F + f(F)      (block: h + F + A(F))
* series,   residual=False (their default): y' = f(F)         (block: h + A(F); "A(F) alone")
* parallel, residual=False (default):      y' = F + f(x)      (block: h + F + A(x))
* parallel, residual=True:                 y' = F + f(x) + x  (block: h + F + A(x) + x)

Their flag defaults to False in both placements; here series defaults to True, as the bottleneck series
adapters and as conformer series adapters did before this option existed (pass residual=False for their
sequential runs). Their flag is `type=bool`, so any value given on their command line, "False" included,
turns it on. Parallel with residual needs x and F of one width. Without the residual the series adapter is
not the identity at init, even with init="zero" (the site's output becomes zero).

The depthwise conv pads as PyTorch's padding="same", which is also what the paper's code passes: the
output keeps the sequence length; for an even kernel the k - 1 padded positions split as (k - 1) // 2 before
and k // 2 after (kernel 8: 3 before, 4 after), so each output mixes one more position after it than before.

Behaviour users must know:
* BatchNorm follows the model's mode: batch statistics under `model.train()`, running statistics
  (saved with the adapter) under `model.eval()`. Train with batches of more than one position.
* The adapter does not see attention masks: the depthwise conv mixes up to kernel_size // 2 neighbouring
  positions on a side, padded ones included, and in training BatchNorm's statistics include padded
  positions. Fixed-length inputs (AST spectrograms, ViT patches) are unaffected; in padded text batches, real
  positions within kernel_size // 2 of the padding differ from what the unpadded sequence would give.
* The conv looks both ways along the sequence, so causal LMs are refused (it would leak future tokens and
  cannot run token by token with a KV cache). Layers that see flattened (tokens, d) inputs raise an
  error at the first forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import AdapterConfig, one_of, positive_int
from ..core.option_help import documented, option_field
from ..errors import AdapterError
from ..core.layers import reference_tensor
from ..core.sites import Placement, Site
from ..core.adapter import Adapter
from .block_norms import BlockNorms
from .sublayer_sites import site_features


@documented
@dataclass
class ConformerConfig(BlockNorms, AdapterConfig):
    """Conformer adapter (Cappellazzo et al., 2024): the Conformer convolution module beside (or after) each target
    sublayer, for audio and vision encoders; refused on causal LMs (the module docstring)."""

    method = "conformer"
    default_targets = ("mlp",)
    site_kinds = ("module", "sublayer")

    size: int = option_field(64, "the channels of the conv path",
                             paper="the paper's bottleneck is d / 64 (12 on AST-base)")
    kernel_size: int = option_field(31, "the depthwise kernel over the sequence, odd or even (same padding)",
                                    paper="their best on audio: 8")
    placement: str = option_field("parallel", "parallel (adds f(x), x the site's input) or series (adds f(y))")
    norm: str = option_field("batch", "the norm after the depthwise conv: batch (the paper) or layer")
    input_norm: bool = option_field(True, "a LayerNorm on the adapter's input",
                                    paper="their code computes it but convolves the raw input: false reproduces that")
    init: str = option_field("torch", "torch (PyTorch's defaults, as the paper) or zero (last pointwise conv zero: "
                             "the model is unchanged at init)")
    dropout: float = option_field(0.0, "dropout on the adapter's output")
    residual: bool | None = option_field(None, "the identity term beside the adapter (their --apply_residual); "
                                         "unset: true in series, false in parallel",
                                         paper="theirs defaults to false everywhere")
    conv_bias: bool | None = option_field(None, "a bias on the depthwise conv (BatchNorm cancels it); unset: only "
                                          "with norm=layer",
                                          paper="their code has it: true matches their parameter counts")

    def validate(self) -> None:
        if self.residual is None:  # saved adapters that predate the option get the behaviour they trained with
            self.residual = self.placement == "series"
        if self.conv_bias is None:  # as before the option existed: no bias where BatchNorm would cancel it
            self.conv_bias = self.norm != "batch"
        positive_int(self.method, "size", self.size)
        positive_int(self.method, "kernel_size", self.kernel_size)
        one_of(self.method, "placement", self.placement, ("parallel", "series"))
        one_of(self.method, "norm", self.norm, ("batch", "layer"))
        one_of(self.method, "init", self.init, ("torch", "zero"))
        for flag in ("input_norm", "residual", "conv_bias"):
            if not isinstance(getattr(self, flag), bool):
                raise AdapterError(f"conformer: `{flag}` must be true or false, got {getattr(self, flag)!r}.")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise AdapterError(f"conformer: `dropout` must be in [0, 1), got {self.dropout!r}.")
        self.check_train_norms(self.method)

    def sites(self, model: nn.Module, placement: Placement) -> list[Site]:
        return self.with_norms(super().sites(model, placement), model, placement)

    def build(self, site: Site, model: nn.Module, placement: Placement) -> Adapter:
        norm = self.build_norm(site, model)
        if norm is not None:
            return norm
        if is_causal_lm(model):
            raise AdapterError(
                f"conformer mixes neighbouring positions in both directions, so on this {type(model).__name__} "
                "it would let tokens see the future and could not generate with a KV cache. Use it on "
                "encoders (AST, ViT, BERT-like); for causal LMs use series, parallel or lora."
            )
        in_features, out_features = site_features(site, model, self.method)
        if self.placement == "series":
            in_features = out_features
        elif self.residual and in_features != out_features:
            raise AdapterError(f"conformer: residual=True adds the adapter's input x to the output, but at "
                               f"{site.path!r} x has {in_features} features and the output {out_features}. Target "
                               "a sublayer (attn, mlp) or a square layer, or set residual=False.")
        ref = reference_tensor(model.get_submodule(site.path))
        return ConformerAdapter(in_features, out_features, self, ref.device, ref.dtype)


def is_causal_lm(model: nn.Module) -> bool:
    """Whether `model` generates left to right (a transformers decoder or causal LM)."""
    config = getattr(model, "config", None)
    can_generate = getattr(model, "can_generate", None)
    return bool(getattr(config, "is_decoder", False)) or bool(callable(can_generate) and can_generate())


class ConformerAdapter(Adapter):
    """The Conformer convolution module, from (batch, seq, in) to (batch, seq, out)."""

    def __init__(self, in_features: int, out_features: int, options: ConformerConfig,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        size, kernel = options.size, options.kernel_size
        factory = {"device": device, "dtype": dtype}
        self.placement, self.residual = options.placement, options.residual
        self.input_norm = nn.LayerNorm(in_features, **factory) if options.input_norm else nn.Identity()
        self.pointwise_in = nn.Conv1d(in_features, 2 * size, 1, **factory)
        # a bias before BatchNorm is cancelled by its mean subtraction (zero gradient), so it is left out there
        # unless conv_bias asks for it (their code has it: their parameter counts include it)
        self.depthwise = nn.Conv1d(size, size, kernel, padding="same", groups=size,
                                   bias=options.conv_bias, **factory)
        self.norm = nn.BatchNorm1d(size, **factory) if options.norm == "batch" else nn.LayerNorm(size, **factory)
        self.pointwise_out = nn.Conv1d(size, out_features, 1, **factory)
        self.dropout = nn.Dropout(options.dropout) if options.dropout > 0 else nn.Identity()
        if options.init == "zero":
            with torch.no_grad():
                nn.init.zeros_(self.pointwise_out.weight)
                nn.init.zeros_(self.pointwise_out.bias)

    def convolve(self, h: torch.Tensor) -> torch.Tensor:
        """f(h) for h of shape (batch, seq, in), in the adapter's dtype."""
        if h.dim() != 3:
            raise AdapterError(
                f"conformer needs (batch, seq, features) inputs to convolve over the sequence, but its layer "
                f"received shape {tuple(h.shape)}. Target layers or sublayers that keep the sequence axis "
                "(the attn / mlp sublayers of AST, ViT or BERT-like encoders)."
            )
        h = self.input_norm(self.cast_in(h)).transpose(1, 2)  # (batch, in, seq)
        h = F.glu(self.pointwise_in(h), dim=1)
        h = self.depthwise(h)
        h = self.norm(h) if isinstance(self.norm, nn.BatchNorm1d) else self.norm(h.transpose(1, 2)).transpose(1, 2)
        h = self.pointwise_out(F.silu(h))
        return self.dropout(h.transpose(1, 2))

    def reads_input(self) -> bool:
        return self.placement != "series"

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The four cells of the module docstring: series F + f(F) or f(F); parallel F + f(x) (+ x)."""
        if self.placement == "series":
            delta = self.convolve(y).to(y.dtype)
            return y + delta if self.residual else delta
        out = y + self.convolve(x).to(y.dtype)
        return out + x.to(y.dtype) if self.residual else out
