"""SpecAugment-style masking of training spectrograms (`adapterlab train --task audio-cls --freq-mask F --time-mask T`).

What Cappellazzo et al.'s PETL-for-AST code does (umbertocappellazzo/PETL_AST, dataset/esc_50.py and
urban_sound_8k.py; main.py turns it on for the ESC-50 and UrbanSound8K training sets only, with F=24, T=80):
in `__getitem__`, on the features the AST feature extractor returned, that is *after* its normalisation
((fbank - mean) / (2 * std)), torchaudio's `FrequencyMasking(F)` and then `TimeMasking(T)` each set one band
to 0, which is the normalisation's mean level. Each serving of an example draws afresh; dev and test sets are
never masked. A band is torchaudio's `mask_along_axis` draw (iid_masks off, p=1): u, v uniform in [0, 1),
width = floor(u * F), so 0 to F - 1 bins (frames), start = floor(v * (size - u * F)); F = 0 draws nothing.

The same draws are written here with torch (torchaudio is not a dependency, and its transforms draw from
torch's global RNG): a `torch.Generator` owned by the dataset makes them. In the main process it is seeded
with the run's --seed and runs on across epochs, so every serving, and every epoch, gets new masks. A
DataLoader worker holds a copy, re-seeded from (run seed, the worker's seed); PyTorch draws the workers'
seeds anew for every epoch from the loader's RNG, which the Trainer seeds with --seed. Same seed, same
masks; a resumed run draws from a restarted stream rather than the uninterrupted run's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from ..errors import UsageError

FILL = 0.0  # torchaudio's default mask_value, as their code leaves it: the mean of the normalised features


def draw_band(size: int, width_bound: int, generator: torch.Generator) -> tuple[int, int]:
    """(start, width) of one band along an axis of `size`, drawn as torchaudio's mask_along_axis draws it."""
    value = torch.rand(1, generator=generator) * width_bound
    start = (torch.rand(1, generator=generator) * (size - value)).long()
    return int(start), int(value.long())


def mask_spectrogram(features: np.ndarray, freq_mask: int, time_mask: int, generator: torch.Generator) -> np.ndarray:
    """A copy of (frames, mel bins) `features` with one frequency band, then one time band, set to FILL."""
    out = features.copy()
    if freq_mask:
        start, width = draw_band(out.shape[1], freq_mask, generator)
        out[:, start:start + width] = FILL
    if time_mask:
        start, width = draw_band(out.shape[0], time_mask, generator)
        out[start:start + width, :] = FILL
    return out


def stream_seed(*parts: int) -> int:
    """One 64-bit seed from the run seed (and a worker's seed), by numpy's SeedSequence."""
    return int(np.random.SeedSequence([p % 2 ** 64 for p in parts]).generate_state(1, np.uint64)[0])


class MaskedSpectrograms(Dataset):
    """A spectrogram training set served with fresh SpecAugment masks; the wrapped set and its cache are untouched."""

    def __init__(self, dataset: Any, freq_mask: int, time_mask: int, seed: int) -> None:
        self.dataset, self.freq_mask, self.time_mask, self.seed = dataset, freq_mask, time_mask, seed
        self.files, self.labels = dataset.files, dataset.labels
        self._stream: tuple[int, ...] | None = None
        self._generator: torch.Generator | None = None
        check_widths(np.asarray(dataset[0]["input_values"]).shape, freq_mask, time_mask)

    def __len__(self) -> int:
        return len(self.dataset)

    def generator(self) -> torch.Generator:
        """This process's generator: seeded from the run seed, or from (run seed, worker seed) in a worker."""
        worker = get_worker_info()
        stream = (self.seed,) if worker is None else (self.seed, worker.seed)
        if stream != self._stream:
            self._generator = torch.Generator().manual_seed(stream_seed(*stream))
            self._stream = stream
        return self._generator

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        masked = mask_spectrogram(item["input_values"], self.freq_mask, self.time_mask, self.generator())
        return {**item, "input_values": masked}

    def __getstate__(self) -> dict[str, Any]:
        """Workers started by spawning get a copy without the generator; they seed their own."""
        return {**self.__dict__, "_generator": None, "_stream": None}


def check_widths(shape: tuple[int, ...], freq_mask: int, time_mask: int) -> None:
    """Refuse masks for inputs that are not (frames, mel bins) spectrograms, and bands wider than the axis."""
    if len(shape) != 2:
        raise UsageError(f"--freq-mask / --time-mask mask bands of (frames, mel bins) spectrograms, but this model's "
                         f"inputs have shape {shape} (a raw waveform?); drop the flags or use an AST model.")
    for name, bound, size, unit in (("--freq-mask", freq_mask, shape[1], "mel bins"),
                                    ("--time-mask", time_mask, shape[0], "frames")):
        if bound > size:
            raise UsageError(f"{name} {bound} is wider than the spectrograms' {size} {unit}; pass at most {size}.")


def masked_training_set(dataset: Any, options: dict[str, Any], seed: int) -> Any:
    """`dataset` served with the --freq-mask / --time-mask masks of `options`, or `dataset` itself when both are 0."""
    freq_mask, time_mask = int(options.get("freq_mask") or 0), int(options.get("time_mask") or 0)
    for name, value in (("--freq-mask", freq_mask), ("--time-mask", time_mask)):
        if value < 0:
            raise UsageError(f"{name} must be 0 (off) or a positive band width, got {value}.")
    if not (freq_mask or time_mask):
        return dataset
    return MaskedSpectrograms(dataset, freq_mask, time_mask, seed)


def masking_info(options: dict[str, Any]) -> dict[str, int] | None:
    """What the run summary records of the masking: the two width bounds, or None when off."""
    freq_mask, time_mask = int(options.get("freq_mask") or 0), int(options.get("time_mask") or 0)
    return {"freq_mask": freq_mask, "time_mask": time_mask} if freq_mask or time_mask else None
