"""Randomly initialised AST / wav2vec 2.0 / HuBERT / ViT classifiers built from a config, for runs without
pretrained weights.

A model spec `config:NAME` picks a preset below; `config:PATH.json` reads a transformers config file
(`model_type` "audio-spectrogram-transformer", "wav2vec2", "hubert" or "vit"). The matching feature extractor or
image processor is built from the same config, so its input size always fits the model: wav2vec2 and HuBERT take
16 kHz waveforms, normalised per clip, with an attention mask where their feature encoder uses layer norms
(`feat_extract_norm="layer"`), as the pretrained checkpoints' feature extractors are set up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import transformers as T
from torch import nn
from ..errors import ModelError

PREFIX = "config:"

PRESETS: dict[str, dict[str, Any]] = {
    # ~0.8M parameters; 64 mel bins x 128 frames (1.28 s at the 10 ms hop) -> 5 x 12 patches.
    "ast-small": dict(model_type="audio-spectrogram-transformer", hidden_size=128, num_hidden_layers=4,
                      num_attention_heads=4, intermediate_size=512, num_mel_bins=64, max_length=128,
                      patch_size=16, frequency_stride=10, time_stride=10),
    # ~0.9M parameters; 7 convolutions of 32 channels (strides 5,2,2,2,2,2,2: one frame per 20 ms, as the base
    # models) into 4 post-norm layers; transformers' training defaults kept (dropout, LayerDrop, time masking).
    "wav2vec2-small": dict(model_type="wav2vec2", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                           intermediate_size=512, conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
                           num_conv_pos_embedding_groups=4, classifier_proj_size=64),
    "hubert-small": dict(model_type="hubert", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=512, conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=4, classifier_proj_size=64),
    # ~0.8M parameters; 32 x 32 RGB images in 4 x 4 patches -> 8 x 8 patches.
    "vit-small": dict(model_type="vit", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=512, image_size=32, patch_size=4),
}

TASK_MODEL_TYPES = {"audio-cls": ("audio-spectrogram-transformer", "wav2vec2", "hubert"), "image-cls": ("vit",)}
WAVEFORM_TYPES = ("wav2vec2", "hubert")  # take raw waveforms through a Wav2Vec2FeatureExtractor
SAMPLING_RATE = 16000  # wav2vec2's and HuBERT's


def is_config_spec(spec: str) -> bool:
    """True for `config:NAME` / `config:PATH.json` specs (a fresh model rather than a checkpoint)."""
    return spec.startswith(PREFIX)


def config_from_spec(spec: str, task: str) -> T.PretrainedConfig:
    """The transformers config named by `spec` (a preset or a JSON file), checked to suit `task`."""
    name = spec[len(PREFIX):]
    if name in PRESETS:
        values = dict(PRESETS[name])
    elif Path(name).is_file():
        values = json.loads(Path(name).read_text())
    else:
        raise ModelError(f"Model spec {spec!r}: {name!r} is neither a preset ({', '.join(PRESETS)}) nor a "
                         "config .json file.")
    model_type = values.pop("model_type", None)
    if model_type not in TASK_MODEL_TYPES[task]:
        raise ModelError(f"Model spec {spec!r} has model_type {model_type!r}; task {task} builds "
                         f"{' or '.join(map(repr, TASK_MODEL_TYPES[task]))} models from configs.")
    return T.AutoConfig.for_model(model_type, **values)


def _draw_ast_tokens(model: nn.Module) -> None:
    """Give a fresh AST random CLS/distillation tokens and positions, as a fresh ViT has.

    transformers zero-initialises them (checkpoints overwrite them); from scratch a zero CLS token meets the
    first LayerNorm with zero variance, which divides by sqrt(eps) and gives gradient norms of ~1e4.
    """
    embeddings = model.base_model.embeddings
    with torch.no_grad():
        for table in (embeddings.cls_token, embeddings.distillation_token, embeddings.position_embeddings):
            nn.init.trunc_normal_(table, std=model.config.initializer_range)


def waveform_extractor(config: T.PretrainedConfig) -> T.Wav2Vec2FeatureExtractor:
    """The feature extractor of a wav2vec2 / HuBERT config: 16 kHz, zero-mean unit-variance per clip, zero padding,
    an attention mask only where the feature encoder uses layer norms (group-norm models were trained without)."""
    return T.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLING_RATE, padding_value=0.0,
                                      do_normalize=True, return_attention_mask=config.feat_extract_norm == "layer")


def build_classifier(spec: str, task: str, label_names: list[str], seed: int,
                     **overrides: Any) -> tuple[nn.Module, Any]:
    """(randomly initialised classifier with `len(label_names)` outputs, its feature extractor / processor).

    `overrides` set config fields before the model is built (e.g. `max_length` for AST); a waveform model's
    `max_length` (samples) goes to its feature extractor, which pads and cuts to it.
    """
    config = config_from_spec(spec, task)
    length = overrides.pop("max_length", None) if config.model_type in WAVEFORM_TYPES else None
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    config.num_labels = len(label_names)
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: i for i, name in enumerate(label_names)}
    torch.manual_seed(seed)
    if config.model_type in WAVEFORM_TYPES:
        model = T.AutoModelForAudioClassification.from_config(config)
        processor = waveform_extractor(config)
        if length is not None:
            processor.max_length = int(length)
    elif task == "audio-cls":
        model = T.ASTForAudioClassification(config)
        _draw_ast_tokens(model)
        processor = T.ASTFeatureExtractor(num_mel_bins=config.num_mel_bins, max_length=config.max_length)
    else:
        model = T.ViTForImageClassification(config)
        size = config.image_size
        # The Pillow backend (transformers >= 5) needs no torchvision; older versions only have ViTImageProcessor.
        processor_class = T.ViTImageProcessorPil if hasattr(T, "ViTImageProcessorPil") else T.ViTImageProcessor
        processor = processor_class(size={"height": size, "width": size})
    return model, processor
