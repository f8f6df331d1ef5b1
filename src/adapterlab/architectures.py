"""Where things live in each supported architecture: one row of data per model family.

Paths inside a block are relative to the block. Sublayer sites are derived: the attention sublayer
runs from the input of q (or the fused qkv) to the output of o; the MLP sublayer from the input of
up to the output of down. A model family missing here is handled by `discovery.discover`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Architecture:
    """The layout of one model family. `blocks` is the name (suffix) of the ModuleList of blocks."""

    name: str
    blocks: str
    q: str | None = None
    k: str | None = None
    v: str | None = None
    o: str | None = None
    up: str | None = None
    gate: str | None = None
    down: str | None = None
    qkv: str | None = None  # fused q/k/v projection, when the family has one
    qkv_layout: str | None = None  # "concat" ([q | k | v]) or "per_head" (interleaved per head)
    leading_tokens: int = 0  # special tokens before the content (CLS, distillation) in vision/audio
    modality: str = "text"  # text | vision | audio
    attn_norm: str | None = None  # pre-norm families: the norm whose input is the attention's residual stream
    mlp_norm: str | None = None  # pre-norm families: the norm whose input is the MLP's residual stream
    post_norm: bool = False  # post-norm families (BERT): each sublayer reads the residual stream itself

    def projection(self, logical: str) -> str | None:
        """The block-relative path of a logical projection name (q k v o up gate down qkv)."""
        return getattr(self, logical)

    @property
    def attn_entry(self) -> str | None:
        return self.qkv or self.q

    def sublayer_norm(self, sublayer: str) -> str | None:
        """The block-relative path of the norm in front of a sublayer ("attn" or "mlp"), in pre-norm families."""
        return self.attn_norm if sublayer == "attn" else self.mlp_norm

    @property
    def mlp_entry(self) -> str | None:
        return self.up or self.gate


LLAMA = Architecture(
    "llama", blocks="layers",
    q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
    up="mlp.up_proj", gate="mlp.gate_proj", down="mlp.down_proj",
    attn_norm="input_layernorm", mlp_norm="post_attention_layernorm",
)
BERT = Architecture(
    "bert", blocks="encoder.layer",
    q="attention.self.query", k="attention.self.key", v="attention.self.value", o="attention.output.dense",
    up="intermediate.dense", down="output.dense", post_norm=True,
)
VIT = Architecture(
    "vit", blocks="layers",
    q="attention.q_proj", k="attention.k_proj", v="attention.v_proj", o="attention.o_proj",
    up="mlp.fc1", down="mlp.fc2", leading_tokens=1, modality="vision",
    attn_norm="layernorm_before", mlp_norm="layernorm_after",
)

ARCHITECTURES: dict[str, Architecture] = {
    "llama": LLAMA,
    "mistral": replace(LLAMA, name="mistral"),
    "qwen2": replace(LLAMA, name="qwen2"),
    "bloom": Architecture(
        "bloom", blocks="h", qkv="self_attention.query_key_value", qkv_layout="per_head",
        o="self_attention.dense", up="mlp.dense_h_to_4h", down="mlp.dense_4h_to_h",
        attn_norm="input_layernorm", mlp_norm="post_attention_layernorm",
    ),
    "opt": Architecture(
        "opt", blocks="layers",
        q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.out_proj",
        up="fc1", down="fc2",
    ),
    "gptj": Architecture(
        "gptj", blocks="h",
        q="attn.q_proj", k="attn.k_proj", v="attn.v_proj", o="attn.out_proj",
        up="mlp.fc_in", down="mlp.fc_out", attn_norm="ln_1", mlp_norm="ln_1",
    ),
    "gpt2": Architecture(
        "gpt2", blocks="h", qkv="attn.c_attn", qkv_layout="concat", o="attn.c_proj",
        up="mlp.c_fc", down="mlp.c_proj", attn_norm="ln_1", mlp_norm="ln_2",
    ),
    "gpt_neox": Architecture(
        "gpt_neox", blocks="layers", qkv="attention.query_key_value", qkv_layout="per_head",
        o="attention.dense", up="mlp.dense_h_to_4h", down="mlp.dense_4h_to_h",
        attn_norm="input_layernorm", mlp_norm="post_attention_layernorm",
    ),
    "bert": BERT,
    "roberta": replace(BERT, name="roberta"),
    "xlm-roberta": replace(BERT, name="xlm-roberta"),
    "vit": VIT,
    "audio-spectrogram-transformer": replace(
        VIT, name="audio-spectrogram-transformer", leading_tokens=2, modality="audio"
    ),
}

LOGICAL_PROJECTIONS = ("q", "k", "v", "o", "up", "gate", "down")
SUBLAYERS = ("attn", "mlp")
# Logical groups of projections: each names those of the group that the family has (the MLP's input
# projections are up, and gate where the MLP is gated; LLM-Adapters' "mh_adapter" layers).
GROUPS = {"mlp_in": ("gate", "up")}
