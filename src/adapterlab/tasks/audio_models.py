"""The classifiers `--task audio-cls` trains, and what the run decides about them beyond their weights.

Audio Spectrogram Transformers read log-mel spectrograms of `--max-length` frames (a checkpoint's position
embeddings are interpolated to that length); wav2vec 2.0 and HuBERT read raw 16 kHz waveforms of
`--max-length` samples (default: the `max_length` of the checkpoint's feature extractor, which a run folder
saves, else 16,000 = 1 s) through their convolutional feature encoder, which stays frozen in every run
(transformers' `freeze_feature_encoder`, as its audio-classification example and Cappellazzo et al.'s wav2vec
2.0 code do; full fine-tuning too).

They train as transformers runs them in train mode: dropout, LayerDrop and the config's time masking
(`mask_time_prob`, SpecAugment on the feature frames) stay on. (Cappellazzo et al.'s wav2vec 2.0 adapter code
keeps the frozen encoder in eval mode, without them.)

`--pooling` picks what the head reads of the encoder's output. The default is the transformers class's own:
AST's `cls`, the mean of its CLS and distillation tokens; wav2vec2/HuBERT's `mean`, the mean over the frames
(over the unpadded frames where the model takes an attention mask), after their `projector` layer. `mean` on an
AST is the mean over all its tokens, what Cappellazzo et al.'s AST code classifies from (`final_output: ALL`,
their default): a forward hook on the base model replaces its pooled output, so transformers' forward code
and classes stay as they are. The run's train_config.yaml keeps the setting, and `fit` applies it again
wherever the run's model is rebuilt (eval, export).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from transformers import Wav2Vec2FeatureExtractor

from ..data.audio import AudioClassificationDataset
from ..data.waveform import WaveformClassificationDataset
from ..errors import UsageError
from ..models.posembed import resize_ast_positions
from .options import AudioOptions
from .scratch import SAMPLING_RATE

POOLINGS = ("cls", "mean")
DEFAULT_SAMPLES = SAMPLING_RATE  # 1 s of 16 kHz audio when neither --max-length nor the checkpoint says
POOLING_ATTR = "adapterlab_pooling"  # set on a model whose head reads a pooling its transformers class lacks


@dataclass(frozen=True)
class AudioFamily:
    """How one model family takes audio ("spectrogram" or "waveform") and what its transformers head pools."""

    input: str
    pooling: str


FAMILIES: dict[str, AudioFamily] = {
    "audio-spectrogram-transformer": AudioFamily("spectrogram", "cls"),
    "wav2vec2": AudioFamily("waveform", "mean"),
    "hubert": AudioFamily("waveform", "mean"),
}


def check_pooling(pooling: str | None) -> None:
    """Refuse a --pooling other than cls or mean (None: the model's own)."""
    if pooling is not None and pooling not in POOLINGS:
        raise UsageError(f"--pooling must be one of {POOLINGS}, got {pooling!r}.")


def family_of(model: nn.Module, spec: str) -> AudioFamily:
    """The audio family of `model` (loaded from `spec`); another model type is refused, naming those it trains."""
    model_type = model.config.model_type
    if model_type not in FAMILIES:
        raise UsageError(f"audio-cls trains {', '.join(FAMILIES)} models; {spec!r} is a {model_type!r} model. Pass "
                         "such a checkpoint or a preset (config:ast-small, config:wav2vec2-small, config:hubert-small).")
    return FAMILIES[model_type]


def fit(model: nn.Module, extractor: Any, settings: dict[str, Any] | AudioOptions, spec: str) -> nn.Module:
    """Make a freshly loaded classifier compute as the run says: `settings` holds its max_length and pooling
    (the run's AudioOptions, or TrainConfig fields as train_config.yaml saves them). Sets `extractor.max_length`,
    the input length."""
    options = AudioOptions.of(settings)
    check_pooling(options.pooling)
    family = family_of(model, spec)
    max_length = options.max_length
    if family.input == "spectrogram":
        if max_length and int(max_length) != model.config.max_length:
            resize_ast_positions(model, int(max_length))  # checkpoint grid -> new grid, by interpolation
        extractor.max_length = model.config.max_length
    else:
        if getattr(model.config, "use_weighted_layer_sum", False):
            raise UsageError(f"{spec!r} sets use_weighted_layer_sum: its head's layer_weights are a bare parameter "
                             "that adapterlab neither trains nor saves with the head; set it to false in the config.")
        extractor.max_length = int(max_length or getattr(extractor, "max_length", None) or DEFAULT_SAMPLES)
        check_waveform_length(model.config, extractor.max_length, spec)
        model.freeze_feature_encoder()  # also stops the backward pass at the frozen convolutions
    set_pooling(model, options.pooling or family.pooling, family)
    return model


def encoder_min_samples(config: Any, frames: int = 1) -> int:
    """The fewest input samples from which a wav2vec2/HuBERT convolutional feature encoder yields `frames` frames:
    a layer of kernel k and stride s turns n samples into floor((n - k) / s) + 1, so needs (frames - 1) * s + k."""
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
        frames = (frames - 1) * stride + kernel
    return frames


def check_waveform_length(config: Any, samples: int, spec: str) -> None:
    """Refuse an input length (--max-length, in samples) too short for the feature encoder to give one frame, or
    for the time masking that training applies (`mask_time_length` frames, when `mask_time_prob` > 0)."""
    encoder = encoder_min_samples(config)
    masking = getattr(config, "apply_spec_augment", True) and config.mask_time_prob > 0
    needed = max(encoder, encoder_min_samples(config, config.mask_time_length)) if masking else encoder
    if samples >= needed:
        return
    convs = f"kernels {tuple(config.conv_kernel)}, strides {tuple(config.conv_stride)}"
    why = f"its feature encoder ({convs}) needs at least {encoder:,} samples for one frame"
    if needed > encoder:
        why += f", and its training-time masking (mask_time_length {config.mask_time_length}) {needed:,} samples"
    raise UsageError(f"--max-length {samples}: {spec!r} reads that many samples of audio, but {why}; pass "
                     f"--max-length {needed} or more.")


def set_pooling(model: nn.Module, pooling: str, family: AudioFamily) -> None:
    """Make the head read `pooling` of the encoder's output: the class's own needs nothing, AST's mean a hook."""
    if pooling == family.pooling:
        return
    if family.input == "waveform":
        raise UsageError(f"--pooling {pooling}: {model.config.model_type} has no class token; its head mean-pools "
                         "the frames (--pooling mean, the default). Drop --pooling or pass mean.")
    model.base_model.register_forward_hook(mean_over_tokens)
    setattr(model, POOLING_ATTR, pooling)


def mean_over_tokens(module: nn.Module, args: tuple, output: Any) -> Any:
    """Forward hook on an AST base model: its pooled output becomes the mean of its last hidden states over all
    tokens (CLS and distillation included)."""
    if isinstance(output, tuple):  # return_dict=False in transformers < 5
        return (output[0], output[0].mean(dim=1), *output[2:])
    output["pooler_output"] = output["last_hidden_state"].mean(dim=1)
    return output


def hooked_pooling(model: nn.Module) -> str | None:
    """The pooling a model's head reads through adapterlab's hook (None: its transformers class's own)."""
    return getattr(model, POOLING_ATTR, None)


def pooling_of(model: nn.Module) -> str:
    """The pooling the model's head reads: the hooked one, else its family's own."""
    return hooked_pooling(model) or FAMILIES[model.config.model_type].pooling


def audio_dataset(files: list[Path], ids: list[int], extractor: Any) -> AudioClassificationDataset:
    """Labelled examples as the extractor's model takes them: raw waveforms for a Wav2Vec2FeatureExtractor (wav2vec2,
    HuBERT), else the extractor's features (AST's spectrograms)."""
    waveform = isinstance(extractor, Wav2Vec2FeatureExtractor)
    return (WaveformClassificationDataset if waveform else AudioClassificationDataset)(files, ids, extractor)


def frozen_modules(model: nn.Module) -> list[str]:
    """Paths of the base modules kept frozen in full fine-tuning too: a waveform model's feature encoder."""
    encoder = getattr(model.base_model, "feature_extractor", None)  # wav2vec2's and HuBERT's convolutions
    return [name for name, module in model.named_modules() if module is encoder] if encoder is not None else []

