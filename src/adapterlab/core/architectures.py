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
    blocks: str  # "stages.*.blocks": the block lists of every stage, in order (Swin)
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
    # Families built either way (wav2vec2, HuBERT): the config flag that makes a model pre-norm, with the norms
    # above; where it is false the model is post-norm and has no norm in front of its sublayers (see `for_config`).
    pre_norm_flag: str | None = None

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

    def for_config(self, config: object) -> Architecture:
        """This row as it holds for one model: a `pre_norm_flag` family becomes pre-norm or post-norm by its config."""
        if self.pre_norm_flag is None:
            return self
        if getattr(config, self.pre_norm_flag, False):
            return replace(self, pre_norm_flag=None)
        return replace(self, name=f"{self.name} (post-norm)", pre_norm_flag=None, attn_norm=None, mlp_norm=None,
                       post_norm=True)


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
# wav2vec 2.0's encoder layers: post-norm by default (layer_norm after the attention's residual add,
# final_layer_norm after the MLP's), pre-norm with do_stable_layer_norm=True (the same two norms in front of
# the sublayers: the large "lv60" checkpoints). HuBERT's layers are the same modules under the same names.
WAV2VEC2 = Architecture(
    "wav2vec2", blocks="encoder.layers",
    q="attention.q_proj", k="attention.k_proj", v="attention.v_proj", o="attention.out_proj",
    up="feed_forward.intermediate_dense", down="feed_forward.output_dense", modality="audio",
    attn_norm="layer_norm", mlp_norm="final_layer_norm", pre_norm_flag="do_stable_layer_norm",
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
    # Swin: blocks inside stages (the width doubles at each stage's patch merging), pre-norm, no CLS token.
    # Blocks are numbered across stages (swin-tiny: 0..11). MoSA's second backbone (their swin_mosa.py).
    "swin": replace(VIT, name="swin", blocks="encoder.layers.*.blocks", leading_tokens=0),
    "wav2vec2": WAV2VEC2,
    "hubert": replace(WAV2VEC2, name="hubert"),
}

LOGICAL_PROJECTIONS = ("q", "k", "v", "o", "up", "gate", "down")
SUBLAYERS = ("attn", "mlp")
# Logical groups of projections: each names those of the group that the family has (the MLP's input
# projections are up, and gate where the MLP is gated; LLM-Adapters' "mh_adapter" layers).
GROUPS = {"mlp_in": ("gate", "up")}
