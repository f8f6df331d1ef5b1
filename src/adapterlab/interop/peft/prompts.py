"""PEFT's format for the virtual-token methods (prompt tuning, P-tuning, prefix tuning), both ways.

PEFT saves one tensor for each of them, `prompt_embeddings`: the virtual tokens (prompt tuning), the prompt
encoder's output (P-tuning) or the flat key/value prefixes (prefix tuning, after its MLP when
prefix_projection is on), and loads it into a plain `embedding` in inference mode. So an export writes
what the adapter computes, and an import gives the adapter that holds exactly that: a PEFT P-tuning adapter
becomes a prompt adapter, a projected prefix a plain prefix (the encoders are not in PEFT's file).
Whole modules saved beside it (a SEQ_CLS classifier) are keyed `base_model.<module>` there.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...core.site_hooks import placed_at
from ...core.sites import text_config
from ...errors import AdapterError
from .protocol import PeftMethod, peft_heads, peft_task_type

__all__ = ["placed_at", "peft_prompt_config", "encoded", "check_peft_prompt_config", "peft_key_to_ours",
           "PeftVirtualTokens"]

PROMPT_EMBEDDINGS = "prompt_embeddings"
PEFT_PREFIX = "base_model."  # PEFT keys modules_to_save of prompt learning as base_model.<module path>
OURS = "embedding.weight"  # where the imported adapter keeps the tensor


def peft_prompt_config(model: nn.Module, adapter: nn.Module, peft_type: str, token_dim: int,
                       num_attention_heads: int, **fields: Any) -> dict[str, Any]:
    """The adapter_config.json PEFT needs to rebuild a prompt-learning adapter of `model` (`adapter` placed)."""
    modality = getattr(adapter, "modality", "text")
    if modality != "text":
        raise AdapterError(f"export_peft: PEFT's {peft_type} puts virtual tokens before token embeddings; this "
                           f"adapter sits on a {modality} model, which PEFT cannot run. Use save_adapter.")
    task = peft_task_type(model)
    if task is None:
        raise AdapterError(
            f"export_peft: PEFT runs {peft_type} only through its task models (CAUSAL_LM, SEQ_CLS), and "
            f"{type(model).__name__} is neither a ...ForCausalLM nor a ...ForSequenceClassification; attach the "
            "adapter to the model with its head, or keep it in adapterlab's format (save_adapter)."
        )
    return {
        "peft_type": peft_type,
        "task_type": task,
        "num_virtual_tokens": adapter.num_virtual_tokens,
        "token_dim": token_dim,
        "num_transformer_submodules": 1,
        "num_attention_heads": num_attention_heads,
        "num_layers": text_config(model).num_hidden_layers,
        "modules_to_save": peft_heads(model),
        "inference_mode": True,
        **fields,
    }


@torch.no_grad()
def encoded(module: nn.Module, compute: Any) -> torch.Tensor:
    """compute() with `module` in eval mode (no encoder dropout in what is saved), as a CPU tensor."""
    was_training = module.training
    module.eval()
    try:
        return compute().detach().to("cpu").contiguous()
    finally:
        module.train(was_training)


def check_peft_prompt_config(kind: str, data: dict[str, Any]) -> int:
    """The num_virtual_tokens of a PEFT prompt-learning config, refusing what adapterlab cannot run by name."""
    if data.get("num_transformer_submodules") not in (None, 1) or data.get("task_type") == "SEQ_2_SEQ_LM":
        raise AdapterError(
            f"This PEFT {kind} adapter is for an encoder-decoder model (task_type={data.get('task_type')!r}, "
            f"num_transformer_submodules={data.get('num_transformer_submodules')!r}); adapterlab imports "
            "virtual-token adapters of decoder and encoder models only. Load it with peft itself."
        )
    n = data.get("num_virtual_tokens")
    if not isinstance(n, int) or n < 1:
        raise AdapterError(f"This PEFT {kind} adapter_config.json has num_virtual_tokens={n!r}; a positive "
                           "integer is needed. Save the adapter again with peft.")
    return n


def peft_key_to_ours(key: str) -> str:
    """adapterlab's state key for a key of PEFT's prompt-learning file (after load_peft strips the prefix)."""
    return OURS if key == PROMPT_EMBEDDINGS else key


class PeftVirtualTokens(PeftMethod):
    """The `PeftMethod` of the virtual-token methods: PEFT's file holds one `prompt_embeddings` tensor (what
    the adapter's `peft_tokens` attribute computes, in eval mode) and imports as `num_virtual_tokens` tokens of
    `peft_import` (the class itself unless a subclass says otherwise)."""

    peft_prefix = PEFT_PREFIX
    peft_kind: str  # PEFT's name of the method, for messages ("prompt tuning", "prefix tuning", "P-tuning")
    peft_tokens: str  # the placed adapter's attribute computing the saved tensor

    @classmethod
    def peft_import(cls) -> type:
        """The adapterlab config class a PEFT file of this method imports as."""
        return cls

    def peft_state(self, model: nn.Module, sites: list) -> dict[str, torch.Tensor]:
        adapter = placed_at(model, sites[0])
        return {PROMPT_EMBEDDINGS: encoded(adapter, getattr(adapter, self.peft_tokens))}

    @classmethod
    def from_peft(cls, data: dict) -> Any:
        """An adapter holding PEFT's saved tokens (PEFT's own init options do not matter then)."""
        return cls.peft_import()(num_virtual_tokens=check_peft_prompt_config(cls.peft_kind, data))

    peft_key_to_ours = staticmethod(peft_key_to_ours)
