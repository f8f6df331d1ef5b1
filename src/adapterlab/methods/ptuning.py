"""P-tuning (Liu et al., 2021): virtual token embeddings produced by a small prompt encoder (MLP or LSTM).

The encoder reparameterises the prompt: `embedding` (num_virtual_tokens, hidden) goes through
`mlp_head` (Linear-ReLU-Linear-ReLU-Linear), or a bidirectional `lstm_head` then a two-layer
`mlp_head`, with PEFT's layer names and shapes so that weights compare. The encoded tokens are then
placed like prompt tuning's (first in text models, after CLS in ViT/AST). count_parameters counts the
encoder too; PEFT saves only the encoded tokens after training, adapterlab saves the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.config import AdapterConfig, one_of, positive_int
from ..core.option_help import documented, option_field
from ..errors import AdapterError
from ..core.layers import reference_tensor
from ..core.sites import Placement, Site
from ..core.site_hooks import placed_at
from ..interop.peft.prompts import PeftVirtualTokens, peft_prompt_config
from .virtual_rows import stack_prompts
from .virtual_tokens import VirtualTokenAdapter, check_num_virtual_tokens, modality_and_blocks, text_config


@documented
@dataclass
class PTuningConfig(PeftVirtualTokens, AdapterConfig):
    """P-tuning (Liu et al., 2021): virtual tokens in front of the input, produced by a small trained encoder (an MLP
    or an LSTM, as PEFT's); `targets` and `layers` stay unset."""

    method = "ptuning"
    peft_kind = "P-tuning"
    peft_tokens = "prompts"
    site_kinds = ("model",)

    num_virtual_tokens: int = option_field(20, "the prompt's length in virtual tokens")
    encoder: str = option_field("mlp", "the prompt encoder: mlp (always 3 linear layers, as PEFT's) or lstm")
    encoder_hidden_size: int | None = option_field(None, "the prompt encoder's hidden size; unset: the model's "
                                                   "hidden size")
    encoder_num_layers: int = option_field(2, "the LSTM encoder's layers (the MLP's are fixed)")
    encoder_dropout: float = option_field(0.0, "dropout inside the LSTM encoder")

    def validate(self) -> None:
        check_num_virtual_tokens(self.method, self.num_virtual_tokens)
        one_of(self.method, "encoder", self.encoder, ("mlp", "lstm"))
        if self.encoder_hidden_size is not None:
            positive_int(self.method, "encoder_hidden_size", self.encoder_hidden_size)
        positive_int(self.method, "encoder_num_layers", self.encoder_num_layers)
        if not 0.0 <= float(self.encoder_dropout) < 1.0:
            raise AdapterError(f"ptuning: `encoder_dropout` must be in [0, 1), got {self.encoder_dropout!r}.")
        if self.targets is not None or self.exclude is not None or self.layers is not None:
            raise AdapterError("ptuning: the prompt goes at the model's input; leave `targets`, `exclude` and `layers` unset.")

    def build(self, site: Site, model: nn.Module, placement: Placement) -> PTuningAdapter:
        modality, leading, blocks = modality_and_blocks(model, placement, need_blocks=False)
        if modality == "text":
            embeddings = model.get_input_embeddings()
            ref, hidden = reference_tensor(embeddings), embeddings.embedding_dim
        else:
            ref, hidden = reference_tensor(model.get_submodule(blocks[0])), text_config(model).hidden_size
        encoder = PromptEncoder(self.num_virtual_tokens, hidden, self.encoder_hidden_size or hidden, self.encoder,
                                self.encoder_num_layers, self.encoder_dropout).to(device=ref.device, dtype=ref.dtype)
        return PTuningAdapter(encoder, self.num_virtual_tokens, modality, leading, blocks)

    peft_type = "P_TUNING"

    @classmethod
    def peft_import(cls) -> type:
        """PEFT saves a P-tuning adapter as its encoded tokens only (no encoder), so it imports as the prompt
        adapter holding them: the same virtual tokens, the same outputs."""
        from .prompt import PromptConfig

        return PromptConfig

    def to_peft(self, model: nn.Module, sites: list[Site]) -> dict:
        """PEFT's PromptEncoderConfig as a dict; the file holds the encoded tokens, as PEFT saves them."""
        adapter = placed_at(model, sites[0])
        hidden = adapter.encoder.embedding.embedding_dim
        return peft_prompt_config(model, adapter, self.peft_type, hidden, text_config(model).num_attention_heads,
                                  encoder_reparameterization_type=self.encoder.upper(),
                                  encoder_hidden_size=self.encoder_hidden_size or hidden,
                                  encoder_num_layers=self.encoder_num_layers, encoder_dropout=self.encoder_dropout)


class PromptEncoder(nn.Module):
    """Token embeddings and the MLP or LSTM+MLP that turns them into the prompt."""

    def __init__(self, n: int, hidden: int, encoder_hidden: int, kind: str, lstm_layers: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n, hidden)
        self.lstm_head = None
        if kind == "lstm":
            self.lstm_head = nn.LSTM(hidden, encoder_hidden, num_layers=lstm_layers, dropout=dropout,
                                     bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * encoder_hidden, 2 * encoder_hidden), nn.ReLU(),
                                          nn.Linear(2 * encoder_hidden, hidden))
        else:
            self.mlp_head = nn.Sequential(nn.Linear(hidden, encoder_hidden), nn.ReLU(),
                                          nn.Linear(encoder_hidden, encoder_hidden), nn.ReLU(),
                                          nn.Linear(encoder_hidden, hidden))

    def forward(self) -> torch.Tensor:
        tokens = self.embedding.weight.unsqueeze(0)
        if self.lstm_head is not None:
            tokens = self.lstm_head(tokens)[0]
        return self.mlp_head(tokens)[0]


class PTuningAdapter(VirtualTokenAdapter):
    """Places the prompt encoder's output as virtual tokens."""

    def __init__(self, encoder: PromptEncoder, n: int, modality: str, leading: int, blocks: list[str]) -> None:
        super().__init__(n, modality, leading, blocks)
        self.encoder = encoder

    stack_rows = classmethod(stack_prompts)  # mixed-adapter batches (methods/virtual_rows.py)

    def prompts(self) -> torch.Tensor:
        return self.encoder()
