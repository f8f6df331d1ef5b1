"""What prompt tuning, P-tuning and prefix tuning share: learned virtual tokens placed before the input.

Text models: the adapter rewrites the model call (`before_model`). On the first call of a sequence
(no KV cache yet, or an empty one, as `generate()` passes on its first step) the virtual tokens enter
the sequence; on later cached steps they already sit in the cache, so only the attention mask and
position ids are shifted. Any non-empty cache passed in is taken to be one this adapter filled.
Conventions follow PEFT so that logits compare: virtual tokens go first (before any left padding),
the attention mask gets `n` ones in front, token-level labels get `n` entries of -100 in front, token
type ids get `n` zeros, and the logits of a call that adds the prompt keep its `n` positions in front
(slice `logits[:, n:]` to align them with input_ids). Unlike PEFT, which drops position ids for prompt
tuning, given position ids are kept and shifted by `n`: `generate()` derives them from the padding mask,
and this is what makes a left-padded batch generate the same tokens as each prompt alone.

Vision/audio models (no token embeddings): the tokens are inserted after the leading special tokens
(`Architecture.leading_tokens`: CLS, distillation) at the input of the first block, so CLS stays at 0.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn
from transformers import Cache

from ..core.config import positive_int
from ..errors import AdapterError
from ..core.layers import is_linear, linear_features
from ..core.sites import Placement, block_paths, model_type_of, text_config
from ..core.adapter import Adapter


def check_num_virtual_tokens(method: str, value: Any) -> None:
    """Raise AdapterError unless `num_virtual_tokens` is a positive int."""
    positive_int(method, "num_virtual_tokens", value)


def modality_and_blocks(model: nn.Module, placement: Placement, need_blocks: bool) -> tuple[str, int, list[str]]:
    """(modality, leading special tokens, block paths) of `model`.

    A model whose input embeddings are a token table is "text" (blocks looked up only when needed);
    otherwise the placement's architecture says which modality it is and how many special tokens lead.
    """
    is_text = isinstance(input_embeddings(model), nn.Embedding)
    if is_text and not need_blocks:
        return "text", 0, []
    arch = placement.architecture
    blocks = block_paths(model, arch)
    if is_text:
        return "text", 0, blocks
    check_one_token_sequence(model, blocks)
    return (arch.modality if arch.modality != "text" else "vision"), arch.leading_tokens, blocks


def input_embeddings(model: nn.Module) -> nn.Module | None:
    """The model's input embedding layer; None where it has none (wav2vec2's transformers class raises)."""
    try:
        return model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    except NotImplementedError:
        return None


def check_one_token_sequence(model: nn.Module, blocks: list[str],
                             what: str = "Virtual tokens (prompt, ptuning)") -> None:
    """Refuse a vision/audio model whose blocks do not all read one sequence of hidden-size tokens; `what`
    names the method(s) refused.

    Virtual tokens are inserted at the first block's input (prefixes join every block's attention). Hierarchical models (Swin, ConvNeXt) run stages
    of blocks on a fixed grid of patches and change the width between stages, so the sequence cannot grow.
    """
    stack = blocks[0].rsplit(".", 1)[0]
    outer = next((prefix for prefix in _prefixes(stack) if isinstance(model.get_submodule(prefix), nn.ModuleList)),
                 None)
    hidden = getattr(text_config(model), "hidden_size", None)
    first = next((m for m in model.get_submodule(blocks[0]).modules() if is_linear(m)), None)
    width = linear_features(first)[0] if first is not None else None
    if outer is not None:
        why = f"its blocks ({stack}) sit inside stages ({outer})"
    elif hidden is None:
        why = "its config gives no hidden_size to size the tokens by"
    elif width != hidden:
        why = f"its first block ({blocks[0]}) reads {width}-wide hidden states, but its hidden size is {hidden}"
    else:
        return
    raise AdapterError(
        f"{what} cannot be added to this {model_type_of(model)} model "
        f"({type(model).__name__}): {why}. They need one sequence of hidden-size tokens through one stack of "
        "blocks, and hierarchical models such as Swin work in stages on a fixed grid of patches. Use lora, ia3, "
        "bitfit or a bottleneck adapter (series, parallel) on it."
    )


def _prefixes(path: str) -> list[str]:
    """The dotted paths that enclose `path` ("a.b.c" -> ["a", "a.b"])."""
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def past_length(past: Any) -> int:
    """How many positions a KV cache already holds (0 for none)."""
    if past is None:
        return 0
    if isinstance(past, Cache):
        return int(past.get_seq_length())
    raise AdapterError(
        f"past_key_values is a {type(past).__name__}; virtual-token adapters need a transformers Cache "
        "(e.g. DynamicCache) or None."
    )


def extend_mask(mask: torch.Tensor | None, n: int, past: int, query: int) -> torch.Tensor | None:
    """The 2-D attention mask with `n` ones in front when it does not cover the virtual tokens yet."""
    if mask is None:
        return None
    if mask.dim() != 2:
        raise AdapterError(
            f"Virtual-token adapters take a 2-D attention mask (batch, length), got {mask.dim()}-D; pass the "
            "padding mask and use a dynamic cache (the default) in generate()."
        )
    missing = past + query - mask.shape[1]
    if missing == 0:
        return mask
    if missing < n:
        raise AdapterError(
            f"attention_mask has length {mask.shape[1]} but the sequence (cache {past} + input {query}) needs "
            f"{past + query} or {past + query - n} (without the {n} virtual tokens); pass the input's own mask."
        )
    return torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=1)


def as_keywords(model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's positional arguments (input_ids, attention_mask, ...) moved into keywords by name."""
    if not args:
        return dict(kwargs)
    names = [p.name for p in inspect.signature(model.forward).parameters.values()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(args) > len(names):
        raise AdapterError(
            f"{type(model).__name__} was called with {len(args)} positional arguments; pass them by name."
        )
    clash = [n for n in names[:len(args)] if n in kwargs]
    if clash:
        raise AdapterError(f"{clash} given both positionally and by keyword.")
    return {**dict(zip(names, args)), **kwargs}


def sequence_length(kwargs: dict[str, Any]) -> tuple[int, int, torch.device]:
    """(batch, length, device) of the call's input_ids or inputs_embeds."""
    source = kwargs.get("input_ids")
    if source is None:
        source = kwargs.get("inputs_embeds")
    if source is None:
        raise AdapterError("Virtual-token adapters on text models need input_ids or inputs_embeds.")
    return source.shape[0], source.shape[1], source.device


def shift_positions(kwargs: dict[str, Any], n: int, prepend: bool) -> None:
    """Shift given position ids by `n` (and give the prepended virtual tokens 0..n-1 when `prepend`)."""
    positions = kwargs.get("position_ids")
    if positions is None:
        return
    shifted = positions + n
    if prepend:
        front = torch.arange(n, device=positions.device, dtype=positions.dtype).expand(*positions.shape[:-1], n)
        shifted = torch.cat([front, shifted], dim=-1)
    kwargs["position_ids"] = shifted


class VirtualTokenAdapter(Adapter):
    """Base of the adapters that put learned token embeddings into the input sequence (prompt, P-tuning).

    Subclasses give `prompts()` (num_virtual_tokens, hidden) and, for deep prompts, `layer_prompts(i)`
    for block i >= 1 (the tokens that replace the prompt positions at that block's input).
    """

    def __init__(self, num_virtual_tokens: int, modality: str, leading_tokens: int, blocks: list[str]) -> None:
        super().__init__()
        self.num_virtual_tokens = num_virtual_tokens
        self.modality = modality
        self.leading_tokens = leading_tokens
        self.block_names = list(blocks)
        # whether the latest call's sequence holds the prompt positions (deep prompts replace them only then);
        # kept after the call so that gradient-checkpointing recomputation of the blocks sees the same value
        self.prompt_in_call = False

    def prompts(self) -> torch.Tensor:
        raise NotImplementedError

    def layer_prompts(self, index: int) -> torch.Tensor | None:
        """Tokens replacing the prompt positions at the input of block `index`; None for plain prompts."""
        return None

    @property
    def deep(self) -> bool:
        return False

    def hook_submodules(self, model: nn.Module) -> list:
        """Block hooks: insertion after the leading tokens (vision/audio) and per-layer tokens (deep)."""
        handles = []
        for index, path in enumerate(self.block_names):
            if index == 0 and self.modality == "text":
                continue
            if index > 0 and not self.deep:
                continue
            block = model.get_submodule(path)
            hook = functools.partial(self._block_pre, index)
            handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
        return handles

    def _block_pre(self, index: int, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        if not self.applies:
            return None
        in_kwargs = not args
        hidden = kwargs["hidden_states"] if in_kwargs else args[0]
        start, n = self.leading_tokens, self.num_virtual_tokens
        if index == 0:  # vision/audio: insert after the leading special tokens
            tokens = self.prompts().to(hidden.dtype).expand(hidden.shape[0], -1, -1)
            hidden = torch.cat([hidden[:, :start], tokens, hidden[:, start:]], dim=1)
        elif self.modality != "text" or self.prompt_in_call:  # deep: this layer's own tokens
            tokens = self.layer_prompts(index).to(hidden.dtype).expand(hidden.shape[0], -1, -1)
            hidden = torch.cat([hidden[:, :start], tokens, hidden[:, start + n:]], dim=1)
        else:
            return None
        if in_kwargs:
            return args, {**kwargs, "hidden_states": hidden}
        return (hidden, *args[1:]), kwargs

    def check_inputs(self, names: set[str]) -> None:
        """Refuse an attention mask on a vision/audio model: it covers the sequence without the tokens."""
        if self.modality != "text" and "attention_mask" in names:
            raise AdapterError(
                f"Virtual tokens (prompt, ptuning) join this {self.modality} model's sequence at its first block, "
                "where the attention_mask given to the model (a padding mask, as wav2vec2 models with "
                "do_stable_layer_norm take) would no longer fit the sequence; call it without one (a feature "
                "extractor with return_attention_mask=False pads with zeros) or use prefix, lora or a bottleneck "
                "adapter.")

    def before_model(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        if self.modality != "text":
            self.check_inputs({k for k, v in as_keywords(model, args, kwargs).items() if v is not None})
            return args, kwargs
        args, kwargs = (), as_keywords(model, args, kwargs)
        batch, length, device = sequence_length(kwargs)
        n = self.num_virtual_tokens
        past = past_length(kwargs.get("past_key_values"))
        self.prompt_in_call = past == 0
        if self.prompt_in_call:
            embeds = kwargs.pop("inputs_embeds", None)
            ids = kwargs.pop("input_ids", None)
            if embeds is None:
                embeds = model.get_input_embeddings()(ids)
            if embeds.dim() != 3:  # a multiple-choice model's (batch, choices, tokens) input
                raise AdapterError(f"{type(self).__name__}: virtual tokens go in front of one sequence per row, but "
                                   f"this model takes inputs of shape {tuple(embeds.shape[:-1])} (a multiple-choice "
                                   "model's batch x choices x tokens); use lora, ia3, a bottleneck adapter or prefix.")
            tokens = self.prompts().to(device=embeds.device, dtype=embeds.dtype).expand(batch, -1, -1)
            kwargs["inputs_embeds"] = torch.cat([tokens, embeds], dim=1)
            labels = kwargs.get("labels")
            if labels is not None and labels.dim() >= 2 and labels.shape[1] == length:
                kwargs["labels"] = torch.cat([labels.new_full((batch, n, *labels.shape[2:]), -100), labels], dim=1)
            token_types = kwargs.get("token_type_ids")
            if token_types is not None:
                kwargs["token_type_ids"] = torch.cat([token_types.new_zeros(batch, n), token_types], dim=1)
            length += n
        shift_positions(kwargs, n, prepend=self.prompt_in_call)
        if "attention_mask" in kwargs:
            kwargs["attention_mask"] = extend_mask(kwargs["attention_mask"], n, past, length)
        return args, kwargs
