"""Prefix tuning (Li & Liang, 2021): learned key/value prefixes at every layer.

Causal models take them as the KV cache: on the first call of a sequence the adapter fills the (empty or
new) transformers Cache with `num_virtual_tokens` learned keys and values per layer, extends the attention
mask with ones in front and shifts given position ids by `num_virtual_tokens`, as PEFT does; later cached
steps (generate) only get the mask and position shift. Models whose attention is bidirectional (BERT family,
ViT, AST: no KV cache) get them through hooks on each attention layer (`prefix_attention`): keys and values
become [P_k; K] and [P_v; V], the mask gains always-attended prefix columns, positions are not shifted and
the output keeps the input's length. Either way the logits cover the real tokens only. The parameters use
PEFT's layout: `embedding.weight` (n, layers * 2 * kv_heads * head_dim), ordered layer, key/value, head,
dim; with prefix_projection=True they are `embedding.weight` (n, kv_dim) through `transform`
(Linear-Tanh-Linear, hidden `encoder_hidden_size`). count_parameters counts the reparameterisation MLP
too; PEFT drops it after training and keeps only the prefixes, adapterlab saves the MLP.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from ..core.config import AdapterConfig, positive_int
from ..core.option_help import documented, option_field
from ..errors import AdapterError
from ..core.layers import reference_tensor
from ..core.sites import Placement, Site, block_paths
from ..core.adapter import Adapter
from ..core.site_hooks import placed_at
from ..interop.peft.prompts import PeftVirtualTokens, peft_prompt_config
from .prefix_attention import AttentionSite, PrefixAttentionHooks, attention_sites, has_bidirectional_attention, kv_width
from .virtual_rows import stack_prefixes
from .virtual_tokens import (
    as_keywords,
    check_num_virtual_tokens,
    check_one_token_sequence,
    extend_mask,
    input_embeddings,
    modality_and_blocks,
    past_length,
    sequence_length,
    shift_positions,
    text_config,
)


@documented
@dataclass
class PrefixConfig(PeftVirtualTokens, AdapterConfig):
    """Prefix tuning (Li and Liang, 2021): learned keys and values in front of every layer's attention (the KV
    cache on decoders, attention hooks on encoders); `targets` and `layers` stay unset."""

    method = "prefix"
    peft_kind = "prefix tuning"
    peft_tokens = "flat_prefixes"
    site_kinds = ("model",)

    num_virtual_tokens: int = option_field(20, "the prefix length: keys and values per layer (PETL for AST's prefix "
                                           "size p is p/2 here)", paper="LLM-Adapters' recipe: 30")
    prefix_projection: bool = option_field(False, "learn the prefixes through an MLP (PEFT's prefix_projection)")
    encoder_hidden_size: int | None = option_field(None, "the hidden size of the prefix MLP; unset: the key/value "
                                                   "width")

    def validate(self) -> None:
        check_num_virtual_tokens(self.method, self.num_virtual_tokens)
        if self.encoder_hidden_size is not None:
            positive_int(self.method, "encoder_hidden_size", self.encoder_hidden_size)
        if self.targets is not None or self.exclude is not None or self.layers is not None:
            raise AdapterError("prefix: prefixes go into every layer's KV cache; leave `targets`, `exclude` and `layers` unset.")

    def build(self, site: Site, model: nn.Module, placement: Placement) -> PrefixAdapter:
        config = text_config(model)
        if has_bidirectional_attention(model):  # encoders: no KV cache, hooks join the prefix to k and v
            if not isinstance(input_embeddings(model), nn.Embedding):  # vision/audio: one sequence, not stages
                check_one_token_sequence(model, block_paths(model, placement.architecture), "Prefix tuning (prefix)")
            heads = config.num_attention_heads
            sites = attention_sites(model, placement.architecture)
            kv_dim = kv_width(model, sites[0])
            ref = reference_tensor(model.get_submodule(sites[0].key))
            return PrefixAdapter(self.num_virtual_tokens, len(sites), heads, kv_dim // heads,
                                 self._projection(kv_dim), ref.device, ref.dtype, sites)
        if "past_key_values" not in inspect.signature(model.forward).parameters:
            raise AdapterError(
                f"prefix tuning feeds learned keys/values through past_key_values, which {type(model).__name__} "
                "does not take (no KV cache), and its attention does not say it is bidirectional "
                "(is_causal=False), which the cache-free path needs. Use method='prompt' or 'ptuning' for this model."
            )
        modality, _, _ = modality_and_blocks(model, placement, need_blocks=False)
        if modality != "text":
            raise AdapterError(f"prefix tuning needs a text model with a KV cache; use method='prompt' for {modality}.")
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        ref = reference_tensor(model.get_input_embeddings())
        return PrefixAdapter(self.num_virtual_tokens, config.num_hidden_layers, kv_heads, head_dim,
                             self._projection(kv_heads * head_dim), ref.device, ref.dtype)

    def _projection(self, kv_dim: int) -> int | None:
        """Hidden size of the reparameterisation MLP; None without prefix_projection."""
        return (self.encoder_hidden_size or kv_dim) if self.prefix_projection else None

    peft_type = "PREFIX_TUNING"

    def check_peft_model(self, model: nn.Module) -> None:
        """Refuse a bidirectional (encoder) model: PEFT feeds it the prefix as past_key_values, which e.g. shifts
        BERT's position ids by the prefix length, while adapterlab joins it inside attention without a shift."""
        if has_bidirectional_attention(model):
            raise AdapterError(
                f"PEFT's prefix tuning runs {type(model).__name__} (an encoder) through past_key_values, which "
                "shifts its positions; adapterlab joins the prefix inside attention without a shift, so the two "
                "compute different outputs and a prefix adapter of an encoder cannot move between them. Keep it "
                "in adapterlab's format (save_adapter / load_adapter), or use prompt tuning for PEFT."
            )

    def to_peft(self, model: nn.Module, sites: list[Site]) -> dict:
        """PEFT's PrefixTuningConfig as a dict; the file holds the flat prefixes (after the MLP), which is what
        prefix_projection=False describes, so the config says that."""
        self.check_peft_model(model)
        adapter = placed_at(model, sites[0])
        return peft_prompt_config(model, adapter, self.peft_type, adapter.kv_heads * adapter.head_dim,
                                  adapter.kv_heads, prefix_projection=False)


class PrefixAdapter(Adapter):
    """Learned per-layer key/value prefixes: injected as the model's KV cache on a sequence's first call, or,
    on bidirectional models (`attention_sites` given), joined to each attention layer's keys/values by hooks."""

    def __init__(self, n: int, num_layers: int, kv_heads: int, head_dim: int, projection: int | None,
                 device: torch.device, dtype: torch.dtype, attention_sites: list[AttentionSite] | None = None) -> None:
        super().__init__()
        self.attention_sites = attention_sites
        self.num_virtual_tokens, self.num_layers, self.kv_heads, self.head_dim = n, num_layers, kv_heads, head_dim
        kv_dim = kv_heads * head_dim
        self.transform = None
        if projection is not None:  # reparameterised: prefixes = MLP(token embeddings)
            self.embedding = nn.Embedding(n, kv_dim, device=device, dtype=dtype)
            self.transform = nn.Sequential(nn.Linear(kv_dim, projection, device=device, dtype=dtype), nn.Tanh(),
                                           nn.Linear(projection, num_layers * 2 * kv_dim, device=device, dtype=dtype))
        else:
            self.embedding = nn.Embedding(n, num_layers * 2 * kv_dim, device=device, dtype=dtype)

    stack_rows = classmethod(stack_prefixes)  # mixed-adapter batches (methods/virtual_rows.py)

    def flat_prefixes(self) -> torch.Tensor:
        """All prefixes as (n, layers * 2 * kv_heads * head_dim), PEFT's layout (through the MLP if any)."""
        return self.embedding.weight if self.transform is None else self.transform(self.embedding.weight)

    def key_values(self) -> torch.Tensor:
        """All prefixes as (2 * layers, kv_heads, n, head_dim): layer i's keys at 2i, values at 2i + 1."""
        flat = self.flat_prefixes()
        n = self.num_virtual_tokens
        return flat.view(n, 2 * self.num_layers, self.kv_heads, self.head_dim).permute(1, 2, 0, 3)

    def layer_prefix(self, layer: int, index: int) -> torch.Tensor:
        """Layer `layer`'s keys (index 0) or values (1) as (n, kv_heads * head_dim), heads side by side as a
        k/v projection outputs them. Through the MLP only that slice of its last layer is computed."""
        width = self.kv_heads * self.head_dim
        column = (2 * layer + index) * width
        if self.transform is None:
            return self.embedding.weight[:, column:column + width]
        first, act, last = self.transform
        return nn.functional.linear(act(first(self.embedding.weight)), last.weight[column:column + width],
                                    last.bias[column:column + width])

    def hook_submodules(self, model: nn.Module) -> list:
        """On bidirectional models, the hooks that join the prefix to every attention layer's keys/values."""
        return [] if self.attention_sites is None else PrefixAttentionHooks(self, self.attention_sites).install(model)

    def fill(self, cache: Any, batch: int, dtype: torch.dtype) -> None:
        """Write every layer's prefix into an empty cache."""
        kv = self.key_values().to(dtype)
        for layer in range(self.num_layers):
            keys = kv[2 * layer].expand(batch, -1, -1, -1).contiguous()
            values = kv[2 * layer + 1].expand(batch, -1, -1, -1).contiguous()
            cache.update(keys, values, layer)

    def before_model(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        if self.attention_sites is not None:  # the attention hooks do it all
            return args, kwargs
        args, kwargs = (), as_keywords(model, args, kwargs)
        if model.training and getattr(model, "is_activation_checkpointing", False):
            raise AdapterError(
                "prefix tuning passes its keys/values through past_key_values, which transformers drops inside "
                "checkpointed layers. Turn gradient checkpointing off for prefix tuning "
                "(--gradient-checkpointing false), or use prompt tuning."
            )
        batch, length, _ = sequence_length(kwargs)
        past = past_length(kwargs.get("past_key_values"))
        if past == 0:
            cache = kwargs.get("past_key_values")
            if cache is None:
                cache = DynamicCache(config=model.config)
            self.fill(cache, batch, reference_tensor(model.get_input_embeddings()).dtype)
            kwargs["past_key_values"] = cache
            past = self.num_virtual_tokens
        shift_positions(kwargs, self.num_virtual_tokens, prepend=False)
        if "attention_mask" in kwargs:
            kwargs["attention_mask"] = extend_mask(kwargs["attention_mask"], self.num_virtual_tokens, past, length)
        return args, kwargs

    def after_model(self, model: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        # the cache was injected, so the model returns it even with use_cache=False; generate() would then
        # feed it back and count the prefix twice
        if kwargs.get("use_cache") is False and getattr(output, "past_key_values", None) is not None:
            output["past_key_values"] = None
        return output
