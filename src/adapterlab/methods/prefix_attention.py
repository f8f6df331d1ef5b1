"""Prefix tuning on bidirectional attention (BERT family, ViT, AST), which takes no KV cache: forward hooks
join the learned keys/values to each attention layer's own, without touching transformers' attention code.

Transformers reshapes a layer's k and v projections by the length of the layer's input, so the keys can
only grow if the input does. Per layer, for each prefix adapter:
  1. a pre-hook on the attention module (the one holding q, k, v and o) puts `n` placeholder rows (zeros)
     in front of its hidden states and `n` always-attended columns (and placeholder rows) in front of its
     attention mask, whatever the mask's format (eager's additive float, sdpa's bool, flash's 2-D padding
     mask; None stays None: no padding, the keys just grow);
  2. forward hooks on the k and v projections overwrite the placeholders' keys/values with the layer's
     learned prefix, so the attention sees keys [P_k; K] and values [P_v; V];
  3. a forward hook on the attention module removes the placeholder rows from its output (and from the
     attention weights' query axis), so every real query sees softmax(q [P_k; K]^T / sqrt(d) + mask) [P_v; V]
     and the layer's output has the input's length. Padded key positions keep their mask.
The placeholder queries cost n extra query rows of attention and are discarded. Several prefix adapters
active at once stack: each finds its own rows by their distance from the end of the sequence.
The hooks keep no state between calls, so gradient checkpointing (which re-runs a layer) works.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ..core.architectures import Architecture
from ..errors import AdapterError
from ..core.layers import is_linear, linear_features
from ..core.sites import block_paths, model_type_of


class PrefixSource(Protocol):
    """What the hooks read of the adapter they run (`prefix.PrefixAdapter`)."""

    num_virtual_tokens: int

    @property
    def applies(self) -> bool: ...

    def layer_prefix(self, layer: int, index: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class AttentionSite:
    """One block's attention module, the module that computes the attention weights (the parent of k: the
    same module in ViT/AST, BertSelfAttention inside BertAttention) and its k and v projections (full paths)."""

    attention: str
    scores: str
    key: str
    value: str


def has_bidirectional_attention(model: nn.Module) -> bool:
    """Whether the model's attention modules say they are not causal (transformers' `is_causal` flag)."""
    flags = [m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    return bool(flags) and not any(flags)


def attention_sites(model: nn.Module, arch: Architecture) -> list[AttentionSite]:
    """Per block, the module that runs the attention sublayer (the innermost one holding q, k, v and o)."""
    if arch.qkv or not (arch.q and arch.k and arch.v):
        raise AdapterError(
            f"prefix tuning on a model without a KV cache joins its keys/values to separate q, k and v "
            f"projections; the {arch.name} architecture row names "
            f"{'a fused ' + repr(arch.qkv) if arch.qkv else 'no q, k and v'}. Use method='prompt' for this model."
        )
    paths = [p for p in (arch.q, arch.k, arch.v, arch.o) if p]
    common = paths[0].split(".")[:-1]
    for path in paths[1:]:
        parts = path.split(".")[:-1]
        while common != parts[:len(common)]:
            common = common[:-1]
    sites = []
    for block in block_paths(model, arch):
        attention = ".".join([block, *common])
        if "position_embeddings" in inspect.signature(model.get_submodule(attention).forward).parameters:
            raise AdapterError(
                f"prefix tuning without a KV cache adds placeholder rows to {attention!r}, which applies rotary "
                "position embeddings inside the attention (they would not fit the longer rows). Use method='prompt' "
                "or 'lora' for this model."
            )
        key = f"{block}.{arch.k}"
        site = AttentionSite(attention, key.rsplit(".", 1)[0], key, f"{block}.{arch.v}")
        for path in (site.key, site.value):
            if not is_linear(model.get_submodule(path)):
                raise AdapterError(
                    f"prefix tuning: {path!r} in this {model_type_of(model)} model is a "
                    f"{type(model.get_submodule(path)).__name__}, not a linear k/v projection; pass "
                    "architecture={'k': ..., 'v': ...} naming the projections."
                )
        sites.append(site)
    return sites


def kv_width(model: nn.Module, site: AttentionSite) -> int:
    """Width of the layer's keys (all heads): the k projection's output features."""
    return linear_features(model.get_submodule(site.key))[1]


def extend_layer_mask(mask: Any, n: int) -> Any:
    """The layer's attention mask with `n` attended key columns (and placeholder query rows) in front."""
    if mask is None:
        return None
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:  # flash attention: the 2-D padding mask
        return torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=1)
    if isinstance(mask, torch.Tensor) and mask.dim() == 4 and (mask.dtype == torch.bool or mask.is_floating_point()):
        attend = True if mask.dtype == torch.bool else 0.0  # sdpa: True attends; eager: 0 is added
        rows = n if mask.shape[-2] > 1 else 0  # a mask broadcast over queries keeps its single row
        return nn.functional.pad(mask, (n, 0, rows, 0), value=attend)
    raise AdapterError(
        f"prefix tuning cannot extend an attention mask of type {type(mask).__name__}"
        f"{f' ({mask.dim()}-D, {mask.dtype})' if isinstance(mask, torch.Tensor) else ''}; load the model with "
        "attn_implementation='sdpa' or 'eager'."
    )


def _without_rows(x: torch.Tensor, start: int, n: int, dim: int) -> torch.Tensor:
    return torch.cat([x.narrow(dim, 0, start), x.narrow(dim, start + n, x.shape[dim] - start - n)], dim=dim)


class PrefixAttentionHooks:
    """The hooks of one prefix adapter on every attention layer of a bidirectional model.

    An object rather than closures so that `copy.deepcopy(model)` and pickling give the copy hooks that
    call the copy's adapter. `tail[layer]` is how many rows ran from this adapter's placeholders to the end
    of the sequence when they were added; `start[layer]` where they sat when k was projected. Both are
    set afresh on every run of the layer (a checkpointing re-run included).
    """

    def __init__(self, adapter: PrefixSource, sites: list[AttentionSite]) -> None:
        self.adapter = adapter
        self.sites = list(sites)
        self.tail: dict[int, int] = {}
        self.start: dict[int, int] = {}

    def install(self, model: nn.Module) -> list:
        """Register the hooks on every layer; returns their handles."""
        handles = []
        for layer, site in enumerate(self.sites):
            attention = model.get_submodule(site.attention)
            names = [p.name for p in inspect.signature(attention.forward).parameters.values()
                     if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            # prepended: the adapters' placeholders nest (the last attached adds its rows first and removes them
            # first), and the rows are gone before transformers' output_attentions recorders read the weights
            pre = functools.partial(self.attention_pre, layer, names)
            handles.append(attention.register_forward_pre_hook(pre, with_kwargs=True, prepend=True))
            for index, path in enumerate((site.key, site.value)):
                hook = functools.partial(self.projection_post, layer, index)
                handles.append(model.get_submodule(path).register_forward_hook(hook))
            if site.scores != site.attention:
                hook = functools.partial(self.scores_post, layer)
                handles.append(model.get_submodule(site.scores).register_forward_hook(hook, prepend=True))
            hook = functools.partial(self.attention_post, layer, site.scores == site.attention)
            handles.append(attention.register_forward_hook(hook, prepend=True))
        return handles

    def attention_pre(self, layer: int, names: list[str], module: nn.Module, args: tuple,
                      kwargs: dict[str, Any]) -> Any:
        if not self.adapter.applies:
            return None
        n = self.adapter.num_virtual_tokens
        args, kwargs = list(args), dict(kwargs)
        for name, extend in (("hidden_states", self._with_placeholders), ("attention_mask", extend_layer_mask)):
            if name in kwargs:
                kwargs[name] = extend(kwargs[name], n)
            elif name in names and names.index(name) < len(args):
                args[names.index(name)] = extend(args[names.index(name)], n)
            elif name == "hidden_states":  # the first positional argument, whatever its name
                args[0] = extend(args[0], n)
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        self.tail[layer] = hidden.shape[1]
        return tuple(args), kwargs

    @staticmethod
    def _with_placeholders(hidden: torch.Tensor, n: int) -> torch.Tensor:
        return torch.cat([hidden.new_zeros(hidden.shape[0], n, *hidden.shape[2:]), hidden], dim=1)

    def projection_post(self, layer: int, index: int, module: nn.Module, args: tuple, output: torch.Tensor) -> Any:
        if not self.adapter.applies or layer not in self.tail:  # only inside this layer's attention call
            return None
        n = self.adapter.num_virtual_tokens
        start = output.shape[1] - self.tail[layer]
        self.start[layer] = start
        prefix = self.adapter.layer_prefix(layer, index).to(output.dtype).expand(output.shape[0], -1, -1)
        return torch.cat([output[:, :start], prefix, output[:, start + n:]], dim=1)

    def scores_post(self, layer: int, module: nn.Module, args: tuple, output: Any) -> Any:
        """The attention weights (b, heads, queries, keys) lose the placeholder queries; the states keep them."""
        if not self.adapter.applies or layer not in self.start:
            return None
        return self._without_placeholders(output, layer, states=False)

    def attention_post(self, layer: int, weights_too: bool, module: nn.Module, args: tuple, output: Any) -> Any:
        if not self.adapter.applies or layer not in self.start:
            return None
        output = self._without_placeholders(output, layer, states=True, weights=weights_too)
        del self.start[layer], self.tail[layer]
        return output

    def _without_placeholders(self, output: Any, layer: int, states: bool, weights: bool = True) -> Any:
        n, start = self.adapter.num_virtual_tokens, self.start[layer]
        if isinstance(output, torch.Tensor):
            return _without_rows(output, start, n, 1) if states else output
        first, *rest = output
        if weights:
            rest = [_without_rows(r, start, n, 2) if isinstance(r, torch.Tensor) and r.dim() == 4 else r for r in rest]
        return type(output)([_without_rows(first, start, n, 1) if states else first, *rest])
