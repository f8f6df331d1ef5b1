"""Linear probing: train the task head and the encoder's final norm only, the backbone frozen (the "linear"
method of Cappellazzo et al.'s PETL for AST, umbertocappellazzo/PETL_AST main.py: their encoder frozen but its
final `layernorm`, and the classification head).

Like BitFit here (methods/bitfit.py), it trains existing parameters through zero-initialised deltas of the
same shapes, so the base model stays untouched (save, load, switch and `disabled` work as for every method):
a linear head layer computes W x + b + (dW x + db), exactly the layer with W, b trained from their values (the
gradient of dW is that of W); a norm runs with weight + dw and bias + db. Trainable parameters are exactly
as many as the head's and the final norm's.

The head: the model's output embeddings (a causal LM's lm_head), else its children named classifier, score,
classification_head or projector (AST's and ViT's classifier, RoBERTa's two-layer head, wav2vec2's projector
and classifier), every linear and norm layer in them. The final norm: the last normalisation layer of the
backbone outside its blocks and embeddings (AST's and ViT's `layernorm`, GPT-2's ln_f, LLaMA's norm). Post-norm
families (BERT, wav2vec2 without do_stable_layer_norm) have none: only the head trains there. Not mergeable: on
a causal LM the head is often tied to the input embeddings.

The transformers head reads what the model class reads (AST: the mean of the CLS and distillation tokens; ViT,
BERT: the first token); their mean pooling over all tokens (`final_output: ALL`) is `--pooling mean` of
`--task audio-cls` (tasks/audio_models.py). Their head is one linear layer on the final norm, whereas AST's
transformers head runs a LayerNorm of its own first, which trains here (AST-base, 50 classes: 41,522 parameters
against their 39,986); head_norm=False skips it, their probe (a pretrained checkpoint's head norm is kept by
default: it is part of the model as transformers builds it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..core.config import AdapterConfig
from ..core.option_help import documented, option_field
from ..errors import AdapterError
from ..core.layers import is_linear, is_norm
from ..core.sites import ADAPTER_SLOT, Placement, Site, block_paths
from ..core.adapter import Adapter, in_dtype_of

SKIPPED = "skipped_head_norm"  # the target name of a head norm that head_norm=False skips
HEAD_NAMES = ("classifier", "score", "classification_head", "projector")  # wav2vec2/HuBERT: projector, classifier


@documented
@dataclass
class LinearProbeConfig(AdapterConfig):
    """Linear probing: trains the task head and the final norm only, which it finds on the model (the module
    docstring says how); `targets` and `layers` stay unset."""

    method = "linear_probe"
    trains_head = True  # its deltas on the head are what trains; the recipe leaves the head's own weights frozen

    head_norm: bool = option_field(True, "also train the head's own norms (AST's classifier.layernorm); false makes "
                                   "the probe the final norm and one linear layer",
                                   paper="PETL for AST's probe: false (their classification_head is one nn.Linear)")

    def validate(self) -> None:
        for option in ("targets", "exclude", "layers"):
            if getattr(self, option) is not None:
                raise AdapterError(f"linear_probe trains the task head and the final norm, which it finds itself; "
                                   f"leave `{option}` unset (use bitfit, lora, ... to adapt chosen layers).")
        if not isinstance(self.head_norm, bool):
            raise AdapterError(f"linear_probe: `head_norm` must be true or false, got {self.head_norm!r}.")

    def sites(self, model: nn.Module, placement: Placement) -> list[Site]:
        head = head_paths(model)
        norms = [p for p in head if is_norm(model.get_submodule(p))]
        if not self.head_norm and not norms:
            raise AdapterError(f"linear_probe: head_norm=False skips the head's norm, but the head of this "
                               f"{type(model).__name__} has none; drop head_norm.")
        sites = [Site("module", p, p, SKIPPED if p in norms and not self.head_norm else p.rsplit(".", 1)[-1], None)
                 for p in head]
        return sites + [Site("module", p, p, p.rsplit(".", 1)[-1], None) for p in final_norm_paths(model, placement)]

    def build(self, site: Site, model: nn.Module, placement: Placement) -> Adapter:
        host = model.get_submodule(site.path)
        if site.target == SKIPPED:
            return SkipNorm()
        if is_linear(host) and isinstance(host, nn.Linear):
            return LinearDelta(host)
        return NormDelta(host)


def path_of(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def head_paths(model: nn.Module) -> list[str]:
    """The linear and norm layers of the task head (output embeddings, or a classifier child)."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    roots = [path_of(model, output)] if output is not None else [n for n, _ in model.named_children()
                                                                 if n in HEAD_NAMES]
    if not roots:
        raise AdapterError(f"linear_probe trains a task head, but this {type(model).__name__} has no output "
                           f"embeddings nor a child named one of {HEAD_NAMES}; load the model with its head "
                           "(e.g. AutoModelForSequenceClassification).")
    paths = []
    for root in roots:
        for name, module in model.get_submodule(root).named_modules():
            path = f"{root}.{name}" if name else root
            if isinstance(module, nn.Linear) or (is_norm(module) and has_affine(module)):
                paths.append(path)
    return paths


def final_norm_paths(model: nn.Module, placement: Placement) -> list[str]:
    """The backbone's last norm outside its blocks and embeddings (none in post-norm families such as BERT: there
    the last such norm, e.g. wav2vec2's encoder.layer_norm, runs before the blocks)."""
    if placement.architecture.post_norm:
        return []
    backbone = getattr(model, "base_model", model)
    prefix = path_of(model, backbone)
    blocks = tuple(f"{b}." for b in block_paths(model, placement.architecture))
    norms = []
    for name, module in backbone.named_modules():
        path = f"{prefix}.{name}" if prefix and name else prefix or name
        parts = path.split(".")
        if (is_norm(module) and has_affine(module) and not path.startswith(blocks) and ADAPTER_SLOT not in parts
                and not any("embed" in part for part in parts)):
            norms.append(path)
    return norms[-1:]


def has_affine(module: nn.Module) -> bool:
    return isinstance(getattr(module, "weight", None), torch.Tensor)


class LinearDelta(Adapter):
    """dW, db (zero at init) added to a linear layer's output: the layer with its weight and bias trained."""

    def __init__(self, host: nn.Linear) -> None:
        super().__init__()
        ref = host.weight
        self.weight_delta = nn.Parameter(torch.zeros(host.weight.shape, device=ref.device, dtype=ref.dtype))
        has_bias = host.bias is not None  # a bias-free head (lm_head) gets none: only existing parameters train
        self.bias_delta = nn.Parameter(torch.zeros(host.out_features, device=ref.device, dtype=ref.dtype)) \
            if has_bias else None

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + F.linear(in_dtype_of(self, x), self.weight_delta, self.bias_delta).to(y.dtype)


class NormDelta(Adapter):
    """Deltas of a norm's weight (and bias, where it has one): the norm runs again with the sums."""

    def __init__(self, host: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "host", host)  # not a child module: the host is in the model tree already
        self.running = False
        self.deltas = nn.ParameterDict({
            name: nn.Parameter(torch.zeros_like(getattr(host, name)))
            for name in ("weight", "bias") if isinstance(getattr(host, name, None), torch.Tensor)
        })

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.running:  # the re-run below passes through this hook again
            return y
        params = {n: getattr(self.host, n) + d.to(getattr(self.host, n).dtype) for n, d in self.deltas.items()}
        self.running = True
        try:
            return functional_call(self.host, params, (x,))
        finally:
            self.running = False


class SkipNorm(Adapter):
    """No parameters: the norm's output is replaced by its input (head_norm=False: a head without the norm)."""

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.to(y.dtype)
