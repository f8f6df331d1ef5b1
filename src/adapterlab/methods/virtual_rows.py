"""Virtual tokens in mixed-adapter batches (`core/row_routing.py`): rows of prompt / P-tuning adapters (or of prefix
adapters) with different numbers of virtual tokens, and rows of no such adapter, in one call.

Every row gets N positions for virtual tokens, N the largest count among the call's adapters: a row with n of them
has N - n masked pad positions first, then its n tokens (0 for a row of another adapter or of the base model). Padded
positions are masked, so each row attends to what it does alone; its positions are numbered as alone: given position
ids are shifted by the row's own n (the virtual tokens numbered 0..n-1), missing ones (where the model takes them) are
made as transformers numbers a row alone (0, 1, ... from its own cache length), since the pads would otherwise shift
them. (OPT numbers from the attention mask; a direct call of a left-padded batch without position ids gets the
count-from-zero numbering there.) Prompt tuning's logits keep the N positions in front: `logits[:, N:]` aligns with
input_ids for every row, and row i's own virtual tokens' logits are `logits[i, N - n_i:N]`. Prefix tuning's pads sit
in the KV cache, so its logits cover the input only, as alone.

Where every row has the same count nothing is padded and the call is laid out as alone, on any model; pads need a
decoder with a KV cache (an encoder would read its pooled first position from a pad). Deep prompts (VPT-deep), virtual
tokens of vision and audio models and prefixes joined inside an encoder's attention are refused by name.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from ..core.adapter import RowStack
from ..core.layers import reference_tensor
from ..errors import AdapterError
from .virtual_tokens import as_keywords, past_length, sequence_length


def _is_decoder(model: nn.Module) -> bool:
    can_generate = getattr(model, "can_generate", None)
    return bool(callable(can_generate) and can_generate())


class VirtualRows(RowStack):
    """The common part: each row's count `n`, the longest `N`, and the mask, position ids of a padded call."""

    kind = "virtual tokens"

    def counts(self, index: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
        """(each row's count, the longest N, whether some row has fewer than N: the call needs pads)."""
        table = torch.tensor([a.num_virtual_tokens for a in self.members] + [0], device=index.device)
        n = table[index]
        longest = max(a.num_virtual_tokens for a in self.members)
        return n, longest, bool((n != longest).any())

    def start(self, model: nn.Module, args: tuple, kwargs: dict[str, Any], index: torch.Tensor) -> tuple:
        """What every rewrite of a routed call begins with: the call as keywords, its (batch, length, device), each
        row's count, the longest, whether pads are needed (refused where the model cannot take them), the cache length."""
        kwargs = as_keywords(model, args, kwargs)
        n, longest, padded = self.counts(index)
        if padded:
            self.check_padding(model)
        return kwargs, sequence_length(kwargs), n, longest, padded, past_length(kwargs.get("past_key_values"))

    def check_padding(self, model: nn.Module) -> None:
        if not _is_decoder(model):
            raise AdapterError(f"This mixed-adapter batch gives rows different numbers of {self.kind}, which needs "
                               f"pads that {type(model).__name__} (no KV cache decoder) would read; give every row "
                               "an adapter with the same num_virtual_tokens, or run them in separate calls.")

    def positions(self, model: nn.Module, kwargs: dict[str, Any], n: torch.Tensor, longest: int, real_past: int,
                  query: int, front: bool, padded: bool) -> None:
        """Shift given position ids by each row's n (0..n-1 in front for `front` virtual tokens); where none are given
        and pads would shift the model's own numbering, number each row as alone."""
        positions = kwargs.get("position_ids")
        if positions is None:
            if not padded or "position_ids" not in inspect.signature(model.forward).parameters:
                return
            positions = torch.arange(real_past, real_past + query, device=n.device)[None]
        positions = positions.expand(n.shape[0], -1) + n[:, None].to(positions.dtype)
        if front:
            first = torch.arange(longest, device=n.device)[None] - (longest - n)[:, None]
            positions = torch.cat([first.clamp(min=0).to(positions.dtype), positions], dim=1)
        kwargs["position_ids"] = positions

    def mask(self, kwargs: dict[str, Any], n: torch.Tensor, longest: int, past: int, length: int,
             padded: bool) -> None:
        """The attention mask with each row's N - n pads masked and its n virtual positions unmasked in front, when
        it does not cover them yet (made, where pads need one and none was given)."""
        mask = kwargs.get("attention_mask")
        if mask is None:
            if not padded:
                return
            mask = torch.ones(n.shape[0], past + length - longest, dtype=torch.long, device=n.device)
        if mask.dim() != 2:
            raise AdapterError(f"Mixed-adapter batches with {self.kind} take a 2-D attention mask (batch, length), got "
                               f"{mask.dim()}-D; pass the padding mask.")
        missing = past + length - mask.shape[1]
        if missing == 0:
            kwargs["attention_mask"] = mask
            return
        if missing != longest:
            raise AdapterError(f"attention_mask has length {mask.shape[1]} but the call (cache {past} + input {length}) "
                               f"needs {past + length - longest} (without the {longest} virtual positions); pass the "
                               "input's own mask.")
        front = torch.arange(longest, device=mask.device)[None] >= (longest - n.to(mask.device))[:, None]
        kwargs["attention_mask"] = torch.cat([front.to(mask.dtype), mask], dim=1)

    def rows_of(self, index: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """(member, its rows) for each member with rows."""
        return [(t, rows) for t in range(len(self.members))
                if (rows := (index == t).nonzero().squeeze(1)).numel()]


class PromptRows(VirtualRows):
    """Prompt and P-tuning adapters (text models) for a mixed-adapter batch: each row's prompt in front, padded."""

    def before_model(self, model: nn.Module, args: tuple, kwargs: dict[str, Any],
                     index: torch.Tensor) -> tuple[tuple, dict[str, Any]]:
        kwargs, (batch, length, _), n, longest, padded, past = self.start(model, args, kwargs, index)
        args = ()
        first = past == 0
        for adapter in self.members:
            adapter.prompt_in_call = first
        query = length
        if first:
            embeds = kwargs.pop("inputs_embeds", None)
            ids = kwargs.pop("input_ids", None)
            if embeds is None:
                embeds = model.get_input_embeddings()(ids)
            front = embeds.new_zeros(batch, longest, embeds.shape[-1])
            for t, rows in self.rows_of(index):
                count = self.members[t].num_virtual_tokens
                front[rows, longest - count:] = self.members[t].prompts().to(embeds.dtype)
            kwargs["inputs_embeds"] = torch.cat([front, embeds], dim=1)
            labels = kwargs.get("labels")
            if labels is not None and labels.dim() >= 2 and labels.shape[1] == length:
                kwargs["labels"] = torch.cat([labels.new_full((batch, longest, *labels.shape[2:]), -100), labels], 1)
            token_types = kwargs.get("token_type_ids")
            if token_types is not None:
                kwargs["token_type_ids"] = torch.cat([token_types.new_zeros(batch, longest), token_types], dim=1)
            length += longest
        self.positions(model, kwargs, n, longest, 0 if first else past - longest, query, first, padded)
        self.mask(kwargs, n, longest, past, length, padded)
        return args, kwargs


class PrefixRows(VirtualRows):
    """Prefix adapters (decoders, through the KV cache) for a mixed-adapter batch: each row's prefix in the cache,
    padded in front."""

    kind = "prefix tokens"

    def fill(self, cache: Any, index: torch.Tensor, longest: int, dtype: torch.dtype) -> None:
        first = self.members[0]
        shape = (index.shape[0], first.kv_heads, longest, first.head_dim)
        pairs = [(rows, self.members[t].key_values().to(dtype)) for t, rows in self.rows_of(index)]
        for layer in range(first.num_layers):
            keys = torch.zeros(shape, dtype=dtype, device=index.device)
            values = torch.zeros(shape, dtype=dtype, device=index.device)
            for rows, kv in pairs:
                keys[rows, :, longest - kv.shape[2]:] = kv[2 * layer]
                values[rows, :, longest - kv.shape[2]:] = kv[2 * layer + 1]
            cache.update(keys, values, layer)

    def before_model(self, model: nn.Module, args: tuple, kwargs: dict[str, Any],
                     index: torch.Tensor) -> tuple[tuple, dict[str, Any]]:
        kwargs, (_, length, _), n, longest, padded, past = self.start(model, args, kwargs, index)
        args = ()
        real_past = past - longest if past else 0
        if past == 0:
            cache = kwargs.get("past_key_values")
            if cache is None:
                cache = DynamicCache(config=model.config)
            self.fill(cache, index, longest, reference_tensor(model.get_input_embeddings()).dtype)
            kwargs["past_key_values"] = cache
            past = longest
        self.positions(model, kwargs, n, longest, real_past, length, False, padded)
        self.mask(kwargs, n, longest, past, length, padded)
        return args, kwargs

    def after_model(self, model: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any,
                    index: torch.Tensor) -> Any:
        return self.members[0].after_model(model, args, kwargs, output)


def refuse(adapter: nn.Module, why: str) -> None:
    """An AdapterError saying that `adapter` cannot run in a mixed-adapter batch, and why."""
    raise AdapterError(f"adapter {adapter._name!r} cannot run in a mixed-adapter batch: {why}. Run its rows on their "
                       "own (set_active).")


def stack_prompts(cls: type, adapters: list) -> PromptRows:
    """`stack_rows` of prompt and P-tuning adapters (one function, so that both mix in one call)."""
    for adapter in adapters:
        if adapter.modality != "text":
            refuse(adapter, f"its virtual tokens join a {adapter.modality} model's sequence inside it")
        if adapter.deep:
            refuse(adapter, "its deep prompts (VPT-deep) replace positions at every block")
    return PromptRows(adapters)


def stack_prefixes(cls: type, adapters: list) -> PrefixRows:
    """`stack_rows` of prefix adapters on decoders (their prefixes go through the KV cache)."""
    for adapter in adapters:
        if adapter.attention_sites is not None:
            refuse(adapter, "its prefix joins an encoder's attention inside each layer")
    return PrefixRows(adapters)


__all__ = ["PrefixRows", "PromptRows", "refuse", "stack_prefixes", "stack_prompts"]
