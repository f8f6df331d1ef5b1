"""Prefix tuning (Li & Liang, 2021): learned key/value prefixes at every layer, fed as the KV cache.

On the first call of a sequence the adapter fills the (empty or new) transformers Cache with
`num_virtual_tokens` learned keys and values per layer, extends the attention mask with ones in front
and shifts given position ids by `num_virtual_tokens`, as PEFT does; later cached steps (generate) only
get the mask and position shift. The logits cover the real tokens only. The parameters use PEFT's
layout: `embedding.weight` (n, layers * 2 * kv_heads * head_dim), ordered layer, key/value, head,
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

from ..config import AdapterConfig, positive_int
from ..errors import AdapterError
from ..layers import reference_tensor
from ..sites import Placement, Site
from .base import Adapter
from .virtual_tokens import (
    as_keywords,
    check_num_virtual_tokens,
    extend_mask,
    modality_and_blocks,
    past_length,
    sequence_length,
    shift_positions,
    text_config,
)


@dataclass
class PrefixConfig(AdapterConfig):
    """num_virtual_tokens: prefix length; prefix_projection: learn the prefixes through an MLP of hidden
    size encoder_hidden_size (default: the key/value width)."""

    method = "prefix"
    site_kinds = ("model",)

    num_virtual_tokens: int = 20
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None

    def validate(self) -> None:
        check_num_virtual_tokens(self.method, self.num_virtual_tokens)
        if self.encoder_hidden_size is not None:
            positive_int(self.method, "encoder_hidden_size", self.encoder_hidden_size)
        if self.targets is not None or self.layers is not None:
            raise AdapterError("prefix: prefixes go into every layer's KV cache; leave `targets` and `layers` unset.")

    def build(self, site: Site, model: nn.Module, placement: Placement) -> "PrefixAdapter":
        if "past_key_values" not in inspect.signature(model.forward).parameters:
            raise AdapterError(
                f"prefix tuning feeds learned keys/values through past_key_values, which {type(model).__name__} "
                "does not take (no KV cache). Use method='prompt' or 'ptuning' for this model."
            )
        modality, _, _ = modality_and_blocks(model, placement, need_blocks=False)
        if modality != "text":
            raise AdapterError(f"prefix tuning needs a text model with a KV cache; use method='prompt' for {modality}.")
        config = text_config(model)
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        ref = reference_tensor(model.get_input_embeddings())
        projection = (self.encoder_hidden_size or kv_heads * head_dim) if self.prefix_projection else None
        return PrefixAdapter(self.num_virtual_tokens, config.num_hidden_layers, kv_heads, head_dim, projection,
                             ref.device, ref.dtype)


class PrefixAdapter(Adapter):
    """Learned per-layer key/value prefixes, injected as the model's KV cache on a sequence's first call."""

    def __init__(self, n: int, num_layers: int, kv_heads: int, head_dim: int, projection: int | None,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.num_virtual_tokens, self.num_layers, self.kv_heads, self.head_dim = n, num_layers, kv_heads, head_dim
        kv_dim = kv_heads * head_dim
        self.transform = None
        if projection is not None:  # reparameterised: prefixes = MLP(token embeddings)
            self.embedding = nn.Embedding(n, kv_dim, device=device, dtype=dtype)
            self.transform = nn.Sequential(nn.Linear(kv_dim, projection, device=device, dtype=dtype), nn.Tanh(),
                                           nn.Linear(projection, num_layers * 2 * kv_dim, device=device, dtype=dtype))
        else:
            self.embedding = nn.Embedding(n, num_layers * 2 * kv_dim, device=device, dtype=dtype)

    def key_values(self) -> torch.Tensor:
        """All prefixes as (2 * layers, kv_heads, n, head_dim): layer i's keys at 2i, values at 2i + 1."""
        flat = self.embedding.weight if self.transform is None else self.transform(self.embedding.weight)
        n = self.num_virtual_tokens
        return flat.view(n, 2 * self.num_layers, self.kv_heads, self.head_dim).permute(1, 2, 0, 3)

    def fill(self, cache: Any, batch: int, dtype: torch.dtype) -> None:
        """Write every layer's prefix into an empty cache."""
        kv = self.key_values().to(dtype)
        for layer in range(self.num_layers):
            keys = kv[2 * layer].expand(batch, -1, -1, -1).contiguous()
            values = kv[2 * layer + 1].expand(batch, -1, -1, -1).contiguous()
            cache.update(keys, values, layer)

    def before_model(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
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
