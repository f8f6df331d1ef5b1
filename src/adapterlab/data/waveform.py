"""Labelled audio files as fixed-length raw waveforms, for wav2vec 2.0 / HuBERT classifiers.

Each file is read at the feature extractor's rate (`read_audio`), cut from the start or padded with zeros to
`feature_extractor.max_length` samples, so that every batch stacks, and normalised as the extractor says
(transformers' Wav2Vec2FeatureExtractor: zero mean, unit variance) over the clip's own samples, not the padding.
The attention mask comes along where the extractor returns one (models whose feature encoder uses layer norms);
the others take zero-padded input without one, as they were trained.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .audio import AudioClassificationDataset, read_audio


class WaveformClassificationDataset(AudioClassificationDataset):
    """(file, label id) pairs turned into `{"input_values", ["attention_mask",] "labels"}` on access (kept after)."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index not in self._features:
            extractor = self.feature_extractor
            rate = extractor.sampling_rate
            # with the mask asked for, transformers normalises over the clip's samples alone (else over the padding too)
            features = extractor(read_audio(self.files[index], rate), sampling_rate=rate, padding="max_length",
                                 max_length=extractor.max_length, truncation=True, return_attention_mask=True,
                                 return_tensors="np")
            example = {"input_values": features["input_values"][0].astype(np.float32)}
            if extractor.return_attention_mask:
                example["attention_mask"] = features["attention_mask"][0].astype(np.int64)
            self._features[index] = example
        return {**self._features[index], "labels": self.labels[index]}
