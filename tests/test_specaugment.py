"""SpecAugment (--freq-mask / --time-mask): PETL-for-AST's bands, train set only, seeded, cache untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_audio import fsdd_like, tiny_ast_config  # noqa: F401 (fixtures)
from torch.utils.data import DataLoader

from adapterlab.cli import main
from adapterlab.data.specaugment import MaskedSpectrograms, mask_spectrogram
from adapterlab.tasks import TASKS, audio, task_module
from adapterlab.tasks.base import TaskOptions

FRAMES, BINS = 32, 16  # the tiny AST's spectrograms (max_length x num_mel_bins)


def their_masks(features: np.ndarray, freq_mask: int, time_mask: int, generator: torch.Generator) -> np.ndarray:
    """Reference from PETL_AST's dataset __getitem__: (frames, bins) -> (1, bins, frames), torchaudio 0.13's
    FrequencyMasking(F) (axis 1) then TimeMasking(T) (axis 2), each mask_along_axis with p=1 and mask_value 0
    (a parameter below 1 returns the input without drawing), back to (frames, bins); torch.rand -> generator."""
    fbank = torch.from_numpy(features.copy()).transpose(0, 1).unsqueeze(0)
    for axis, param in ((1, freq_mask), (2, time_mask)):
        if param < 1:
            continue
        value = torch.rand(1, generator=generator) * param
        min_value = torch.rand(1, generator=generator) * (fbank.size(axis) - value)
        start, end = min_value.long().squeeze(), (min_value.long() + value.long()).squeeze()
        positions = torch.arange(0, fbank.shape[axis], dtype=fbank.dtype)
        mask = (positions >= start) & (positions < end)
        fbank = fbank.masked_fill(mask.unsqueeze(-1) if axis == 1 else mask, 0.0)
    return fbank.squeeze(0).transpose(0, 1).numpy()


def bands(masked: np.ndarray, original: np.ndarray) -> tuple[list[int], list[int]]:
    """(masked mel bins, masked frames), checking that nothing else changed and each band is one run."""
    bins = [b for b in range(masked.shape[1]) if not masked[:, b].any()]
    frames = [t for t in range(masked.shape[0]) if not masked[t].any()]
    expected = original.copy()
    expected[:, bins] = 0.0
    expected[frames, :] = 0.0
    assert np.array_equal(masked, expected), "only whole mel-bin and frame bands are zeroed"
    for run in (bins, frames):
        assert run == list(range(run[0], run[0] + len(run))) if run else True, run
    return bins, frames


class Spectrograms(torch.utils.data.Dataset):
    """An in-memory stand-in for AudioClassificationDataset (files, labels, cached (frames, bins) features)."""

    def __init__(self, count: int = 6) -> None:
        rng = np.random.default_rng(0)
        self.features = [rng.normal(size=(FRAMES, BINS)).astype(np.float32) + 3 for _ in range(count)]
        self.files, self.labels = [f"{i}.wav" for i in range(count)], [i % 2 for i in range(count)]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict:
        return {"input_values": self.features[index], "labels": self.labels[index]}


@pytest.mark.parametrize("freq_mask, time_mask", [(24, 80), (8, 12), (0, 12), (8, 0), (16, 32)])
def test_masks_are_the_bands_their_torchaudio_calls_zero(freq_mask, time_mask):
    features = np.random.default_rng(1).normal(size=(100, 128)).astype(np.float32)  # 1 s of AST features
    for seed in range(50):
        ours = mask_spectrogram(features, freq_mask, time_mask, torch.Generator().manual_seed(seed))
        theirs = their_masks(features, freq_mask, time_mask, torch.Generator().manual_seed(seed))
        assert np.array_equal(ours, theirs)


def test_with_torchaudio_installed_its_transforms_give_the_same_masks():
    torchaudio = pytest.importorskip("torchaudio")
    features = np.random.default_rng(2).normal(size=(100, 128)).astype(np.float32)
    for seed in range(20):
        torch.manual_seed(seed)  # torchaudio draws from the global RNG
        fbank = torch.from_numpy(features.copy()).transpose(0, 1).unsqueeze(0)
        fbank = torchaudio.transforms.TimeMasking(80)(torchaudio.transforms.FrequencyMasking(24)(fbank))
        ours = mask_spectrogram(features, 24, 80, torch.Generator().manual_seed(seed))
        assert np.array_equal(ours, fbank.squeeze(0).transpose(0, 1).numpy())


def test_widths_stay_below_the_bounds_and_bands_inside_the_axis():
    features = np.random.default_rng(3).normal(size=(FRAMES, BINS)).astype(np.float32) + 3
    generator = torch.Generator().manual_seed(0)
    widths = {"bins": set(), "frames": set()}
    for _ in range(400):
        bins, frames = bands(mask_spectrogram(features, 6, 10, generator), features)
        widths["bins"].add(len(bins))
        widths["frames"].add(len(frames))
    assert widths == {"bins": set(range(6)), "frames": set(range(10))}  # 0 .. F-1, every width drawn


def test_train_set_is_masked_dev_set_and_feature_cache_untouched(fsdd_like, tiny_ast_config):
    options = TaskOptions(model=tiny_ast_config, data=[str(fsdd_like)], seed=5,
                          options={"split": "fsdd", "freq_mask": 6, "time_mask": 10})
    setup = audio.prepare(options)
    train, dev = setup.train_dataset, setup.eval_dataset
    assert setup.info["spec_augment"] == {"freq_mask": 6, "time_mask": 10}
    assert isinstance(train, MaskedSpectrograms) and not isinstance(dev, MaskedSpectrograms)
    plain = audio.prepare(TaskOptions(model=tiny_ast_config, data=[str(fsdd_like)], seed=5,
                                      options={"split": "fsdd"}))
    assert plain.info["spec_augment"] is None and train.files == plain.train_dataset.files
    for i in range(len(dev)):  # dev examples are served unmasked, every time
        assert np.array_equal(dev[i]["input_values"], plain.eval_dataset[i]["input_values"])
    cache = train.dataset._features
    masked = [train[i]["input_values"] for i in range(len(train))]
    for i, served in enumerate(masked):
        original = plain.train_dataset[i]["input_values"]
        assert np.array_equal(cache[i], original), "the cached features are never masked"
        bins, frames = bands(served, original)
        assert len(bins) < 6 and len(frames) < 10
    assert sum(not np.array_equal(m, cache[i]) for i, m in enumerate(masked)) >= len(masked) // 2


def test_same_seed_same_masks_and_each_serving_draws_anew():
    def servings(seed: int) -> list[np.ndarray]:
        masked = MaskedSpectrograms(Spectrograms(), 8, 12, seed)
        return [masked[i]["input_values"] for _ in range(2) for i in range(len(masked))]  # two epochs

    first, again, other = servings(7), servings(7), servings(8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    epoch1, epoch2 = first[:6], first[6:]
    assert sum(np.array_equal(a, b) for a, b in zip(epoch1, epoch2)) <= 1


def test_loader_workers_draw_new_masks_each_epoch_and_reproduce_under_the_seed():
    """Workers hold copies of the dataset; each epoch's workers get new seeds from the loader's seeded RNG."""
    def epochs(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)  # as the Trainer's set_seed(--seed)
        loader = DataLoader(MaskedSpectrograms(Spectrograms(), 8, 12, seed), batch_size=3, num_workers=1)
        return [torch.cat([batch["input_values"] for batch in loader]) for _ in range(2)]

    (first, second), (again, _) = epochs(3), epochs(3)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)


def test_raw_waveforms_and_too_wide_bands_are_refused_by_flag():
    class Waveforms(Spectrograms):
        def __getitem__(self, index: int) -> dict:
            return {"input_values": np.zeros(16000, np.float32), "labels": 0}

    with pytest.raises(ValueError, match="--freq-mask / --time-mask.*raw waveform"):
        MaskedSpectrograms(Waveforms(), 8, 0, 0)
    with pytest.raises(ValueError, match=f"--freq-mask 24 is wider than the spectrograms' {BINS} mel bins"):
        MaskedSpectrograms(Spectrograms(), 24, 0, 0)
    with pytest.raises(ValueError, match=f"--time-mask 80 is wider than the spectrograms' {FRAMES} frames"):
        MaskedSpectrograms(Spectrograms(), 0, 80, 0)


@pytest.mark.parametrize("task", [t for t in TASKS if "freq_mask" not in task_module(t).TRAIN_FIELDS])
@pytest.mark.parametrize("flag", ["--freq-mask", "--time-mask"])
def test_the_flags_are_refused_by_name_for_other_tasks(task, flag, tmp_path, capsys):
    code = main(["train", "--task", task, "--model", "m", "--data", "d", "--output", str(tmp_path / "run"), flag, "4"])
    errors = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(errors) == 1 and f"{flag} does not apply to --task {task}" in errors[0]
    assert not (tmp_path / "run").exists()


def test_a_negative_width_is_refused_naming_the_flag(fsdd_like, tiny_ast_config, tmp_path, capsys):
    code = main(["train", "--task", "audio-cls", "--model", tiny_ast_config, "--data", str(fsdd_like),
                 "--output", str(tmp_path / "run"), "--time-mask", "-3"])
    errors = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and errors == ["adapterlab train: error: --time-mask must be 0 (off) or a positive band width, "
                                    "got -3."]
    assert not (tmp_path / "run").exists()


def test_train_cli_records_the_masks_in_the_summary(fsdd_like, tiny_ast_config, tmp_path, single_thread):
    run = tmp_path / "run"
    assert main(["train", "--task", "audio-cls", "--model", tiny_ast_config, "--data", str(fsdd_like),
                 "--split", "fsdd", "--freq-mask", "4", "--time-mask", "8", "--adapter", "lora", "--r", "2",
                 "--max-steps", "2", "--batch-size", "4", "--micro-batch-size", "4", "--warmup-steps", "0",
                 "--output", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["spec_augment"] == {"freq_mask": 4, "time_mask": 8}
    assert summary["data"]["train_records"] == 3 * 2 * 2
