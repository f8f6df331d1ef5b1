"""Prompt tuning (Lester et al., 2021): learned token embeddings before the input; deep=True adds VPT-deep.

The virtual tokens go first in text models (their logits are kept in the output, as PEFT does: the
logits of a call that adds the prompt have `num_virtual_tokens` extra leading positions), and after the
CLS/distillation tokens in ViT/AST. With deep=True (Jia et al., 2022, VPT-deep) every block i >= 1
gets its own tokens: at that block's input the prompt positions are replaced by layer i's tokens.
Not mergeable; the parameters are the embeddings themselves, so count_parameters counts n x hidden
(x layers when deep).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.config import AdapterConfig, one_of
from ..core.option_help import documented, option_field
from ..errors import AdapterError
from ..core.layers import reference_tensor
from ..core.sites import Placement, Site
from ..core.site_hooks import placed_at
from ..interop.peft.prompts import PeftVirtualTokens, peft_prompt_config
from .virtual_rows import stack_prompts
from .virtual_tokens import (VirtualTokenAdapter, check_num_virtual_tokens, input_embeddings, modality_and_blocks,
                             text_config)

INITS = ("random", "vocab", "text")


@documented
@dataclass
class PromptConfig(PeftVirtualTokens, AdapterConfig):
    """Prompt tuning (Lester et al., 2021): learned virtual tokens in front of the input; VPT-deep with `deep`.

    The init text is tokenized when the config is made and the ids kept in `init_token_ids`, so a saved adapter
    reloads without the tokenizer. Vocabulary/text init copies the model's word embeddings, so it only
    happens when they hold real values: attached to a meta-device model the prompt stays random (its
    values come from the checkpoint you load afterwards). Deep prompt layers always start random.
    """

    method = "prompt"
    peft_kind = "prompt tuning"
    peft_tokens = "prompts"
    site_kinds = ("model",)

    num_virtual_tokens: int = option_field(20, "the prompt's length in virtual tokens")
    deep: bool = option_field(False, "own virtual tokens at every block (VPT-deep), not only at the input")
    init: str = option_field("random", "the prompt's initial values: random (N(0, 1), PEFT's default), vocab "
                             "(embeddings of random vocabulary tokens) or text (embeddings of init_text, repeated or "
                             "cut to length)")
    init_text: str | None = option_field(None, "the text whose token embeddings start the prompt (with init=text)")
    tokenizer: str | None = option_field(None, "the tokenizer (a hub name or path) that tokenizes init_text")
    init_token_ids: list[int] | None = option_field(None, "the token ids that start the prompt (set from init_text "
                                                    "when the config is made; saved, so a reload needs no tokenizer)")

    def validate(self) -> None:
        check_num_virtual_tokens(self.method, self.num_virtual_tokens)
        one_of(self.method, "init", self.init, INITS)
        if self.targets is not None or self.exclude is not None or self.layers is not None:
            raise AdapterError("prompt: the prompt goes at the model's input; leave `targets`, `exclude` and `layers` unset.")
        if self.init == "text" and self.init_token_ids is None:
            self.init_token_ids = tokenize_init_text(self.init_text, self.tokenizer)
        elif self.init_token_ids is not None:
            check_token_ids(self.init, self.init_token_ids)

    def build(self, site: Site, model: nn.Module, placement: Placement) -> PromptAdapter:
        modality, leading, blocks = modality_and_blocks(model, placement, need_blocks=self.deep)
        embeddings = input_embeddings(model)
        if modality == "text":
            ref = reference_tensor(embeddings)
            hidden = embeddings.embedding_dim
        else:
            ref = reference_tensor(model.get_submodule(blocks[0]))
            hidden = text_config(model).hidden_size
            if self.init != "random":
                raise AdapterError(
                    f"prompt: init={self.init!r} needs word embeddings; {modality} models take init='random'."
                )
        adapter = PromptAdapter(self.num_virtual_tokens, hidden, self.deep, modality, leading, blocks,
                                ref.device, ref.dtype)
        if self.init != "random" and not ref.is_meta:  # data-dependent: only over real weights
            if self.init == "text":
                ids = self.init_token_ids
                if max(ids) >= embeddings.num_embeddings:
                    raise AdapterError(f"prompt: init_token_ids holds id {max(ids)}, but this model's vocabulary has "
                                       f"{embeddings.num_embeddings} tokens (ids 0 to {embeddings.num_embeddings - 1}); "
                                       "give ids of this model's tokenizer, or init_text with its tokenizer.")
            else:
                ids = torch.randint(0, embeddings.num_embeddings, (self.num_virtual_tokens,)).tolist()
            adapter.init_from_vocabulary(embeddings, ids)
        return adapter

    peft_type = "PROMPT_TUNING"

    def to_peft(self, model: nn.Module, sites: list[Site]) -> dict:
        """PEFT's PromptTuningConfig as a dict (init RANDOM: the tokens themselves are saved)."""
        adapter = placed_at(model, sites[0])
        if adapter.deep:
            raise AdapterError("export_peft: this prompt adapter has deep=True (VPT-deep: own tokens at every "
                               "block), which PEFT's prompt tuning has no counterpart for. Use save_adapter.")
        return peft_prompt_config(model, adapter, self.peft_type, adapter.embedding.embedding_dim,
                                  text_config(model).num_attention_heads, prompt_tuning_init="RANDOM")


def check_token_ids(init: str, ids: object) -> None:
    """init_token_ids, used by init='text' only, must be a non-empty list of token ids (ints >= 0)."""
    if init != "text":
        raise AdapterError(f"prompt: init_token_ids is read by init='text' only, and init is {init!r}; drop it or "
                           "set init='text'.")
    if (not isinstance(ids, (list, tuple)) or not ids
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)):
        raise AdapterError(f"prompt: init_token_ids must be a non-empty list of token ids (integers >= 0), got "
                           f"{ids!r:.80}; give the ids of this model's tokenizer, or init_text with its tokenizer.")


def tokenize_init_text(text: str | None, tokenizer: str | None) -> list[int]:
    """Token ids of the prompt's initial text."""
    if not text or not tokenizer:
        raise AdapterError("prompt: init='text' needs `init_text` (the words) and `tokenizer` (a name or path).")
    from transformers import AutoTokenizer

    try:
        ids = AutoTokenizer.from_pretrained(tokenizer)(text, add_special_tokens=False)["input_ids"]
    except (OSError, ValueError) as exc:
        raise AdapterError(f"prompt: could not load tokenizer {tokenizer!r} for init='text' ({exc}).") from exc
    if not ids:
        raise AdapterError(f"prompt: init_text {text!r} has no tokens.")
    return list(ids)


class PromptAdapter(VirtualTokenAdapter):
    """The prompt embeddings (`embedding.weight`, like PEFT) and, when deep, `layer_prompts` per block >= 1."""

    def __init__(self, num_virtual_tokens: int, hidden: int, deep: bool, modality: str, leading: int,
                 blocks: list[str], device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(num_virtual_tokens, modality, leading, blocks)
        self.embedding = nn.Embedding(num_virtual_tokens, hidden, device=device, dtype=dtype)
        self.deep_prompts = None
        if deep:
            self.deep_prompts = nn.Parameter(torch.empty(len(blocks) - 1, num_virtual_tokens, hidden,
                                                         device=device, dtype=dtype))
            nn.init.normal_(self.deep_prompts)

    stack_rows = classmethod(stack_prompts)  # mixed-adapter batches (methods/virtual_rows.py)

    @property
    def deep(self) -> bool:
        return self.deep_prompts is not None

    def prompts(self) -> torch.Tensor:
        return self.embedding.weight

    def layer_prompts(self, index: int) -> torch.Tensor | None:
        return None if self.deep_prompts is None else self.deep_prompts[index - 1]

    @torch.no_grad()
    def init_from_vocabulary(self, embeddings: nn.Embedding, ids: list[int]) -> None:
        """Start the prompt as the embeddings of token `ids` (repeated or cut to the prompt length)."""
        n = self.num_virtual_tokens
        ids = (ids * (n // len(ids) + 1))[:n]
        index = torch.tensor(ids, device=embeddings.weight.device)
        self.embedding.weight.copy_(embeddings.weight[index].to(self.embedding.weight.dtype))
