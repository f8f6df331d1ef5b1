"""Tiny random models of every supported family, built from configs (no downloads)."""

from __future__ import annotations

import torch
import transformers as T

VOCAB = 64
WAVEFORM = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                conv_dim=(16, 16, 16), conv_kernel=(10, 4, 4), conv_stride=(5, 4, 4), num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=4, classifier_proj_size=16, layerdrop=0.0)


def tiny_config(family: str) -> T.PretrainedConfig:
    """A config of `family` with a few layers and a small hidden size."""
    common = dict(num_attention_heads=4, vocab_size=VOCAB)
    configs = {
        "llama": lambda: T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_key_value_heads=2, **common),
        "mistral": lambda: T.MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_key_value_heads=2, **common),
        "qwen2": lambda: T.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_key_value_heads=2, **common),
        "bloom": lambda: T.BloomConfig(hidden_size=32, n_layer=2, n_head=4, vocab_size=VOCAB),
        "opt": lambda: T.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, word_embed_proj_dim=32,
                                   max_position_embeddings=128, **common),
        "gptj": lambda: T.GPTJConfig(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, vocab_size=VOCAB,
                                     n_positions=128, bos_token_id=1, eos_token_id=2),
        "gpt2": lambda: T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=128,
                                     bos_token_id=1, eos_token_id=2),
        "gpt_neox": lambda: T.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            max_position_embeddings=128, **common),
        "bert": lambda: T.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, **common),
        "roberta": lambda: T.RobertaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           pad_token_id=1, **common),
        "xlm-roberta": lambda: T.XLMRobertaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                  pad_token_id=1, **common),
        "vit": lambda: T.ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   image_size=16, patch_size=8, num_labels=3),
        # two stages of one block each (16 then 32 wide after patch merging): blocks are numbered across stages
        "swin": lambda: T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                     window_size=4, num_labels=3),
        "ast": lambda: T.ASTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   max_length=32, num_mel_bins=16, num_labels=3),
        # 3 convolutions (strides 5, 4, 4): 1,600 samples -> 19 frames. No LayerDrop, so that every layer runs in
        # training; wav2vec2 post-norm (its default), HuBERT pre-norm (do_stable_layer_norm), so both layouts run.
        "wav2vec2": lambda: T.Wav2Vec2Config(**WAVEFORM, num_labels=3),
        "hubert": lambda: T.HubertConfig(**WAVEFORM, do_stable_layer_norm=True, feat_extract_norm="layer",
                                         num_labels=3),
    }
    # Tiny models run transformers' default attention (sdpa), as users' models do; a test that needs a given
    # implementation passes attn_implementation= itself (test_prefix_encoders). Setting it on the config here
    # had no effect in transformers 5.
    return configs[family]()


CAUSAL = ["llama", "mistral", "qwen2", "bloom", "opt", "gptj", "gpt2", "gpt_neox"]
ENCODERS = ["bert", "roberta", "xlm-roberta"]
VISION_AUDIO = ["vit", "swin", "ast", "wav2vec2", "hubert"]
ALL = CAUSAL + ENCODERS + VISION_AUDIO


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny model with its usual head: causal LM, sequence classifier (encoders) or image/audio classifier."""
    torch.manual_seed(seed)
    config = tiny_config(family)
    if family in CAUSAL:
        model = T.AutoModelForCausalLM.from_config(config)
    elif family in ENCODERS:
        config.num_labels = 3
        model = T.AutoModelForSequenceClassification.from_config(config)
    elif family == "vit":
        model = T.ViTForImageClassification(config)
    elif family == "swin":
        model = T.SwinForImageClassification(config)
    elif family == "ast":
        model = T.ASTForAudioClassification(config)
    else:
        model = T.AutoModelForAudioClassification.from_config(config)
    return model.eval()


def tiny_inputs(family: str, batch: int = 2, length: int = 7, seed: int = 1) -> dict[str, torch.Tensor]:
    """Inputs the tiny model of `family` accepts (token ids, pixels, spectrogram frames or waveform samples)."""
    g = torch.Generator().manual_seed(seed)
    if family == "vit":
        return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=g)}
    if family == "swin":
        return {"pixel_values": torch.randn(batch, 3, 32, 32, generator=g)}
    if family == "ast":
        return {"input_values": torch.randn(batch, 32, 16, generator=g)}
    if family in ("wav2vec2", "hubert"):
        return {"input_values": torch.randn(batch, 1600, generator=g)}
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def output_of(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**inputs).logits


def randomize_adapters(model: torch.nn.Module, std: float = 0.1, seed: int = 2) -> None:
    """Give every trainable (adapter) parameter random values so that zero-init adapters do something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * std)
