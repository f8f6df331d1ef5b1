"""Labelled WAV folders for audio classification: listing, reading, resampling, spectrogram features.

Audio is read with soundfile and resampled with `scipy.signal.resample_poly` (no torchaudio needed);
features come from the model's feature extractor (e.g. transformers' ASTFeatureExtractor, which pads or
truncates log-mel frames to its `max_length`).
"""

from __future__ import annotations

import csv
import io
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
from ..errors import DataError
from .reading import check_folder, read_text

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
# Sample formats that can store NaN or inf (integer PCM cannot): such a clip is read whole when it is listed.
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
DEFAULT_LABEL_PATTERN = r"^([^_]+)_"  # label = file-name prefix before the first "_", e.g. FSDD "7_theo_12.wav"


def unusable_samples(path: str | Path, waveform: np.ndarray, listed_in: str | None = None) -> DataError | None:
    """The error for a clip whose samples cannot be scored (none at all, or NaN / inf ones); None if they can."""
    where = f"{path}, listed in {listed_in}," if listed_in else str(path)
    if waveform.size == 0:
        return DataError(f"{where} holds no samples (0 frames), so it has no features; replace or remove it.")
    bad = int(np.count_nonzero(~np.isfinite(waveform)))
    if bad:
        return DataError(f"{where} holds {bad} NaN or infinite sample(s), which would train the adapter to NaN; "
                         "replace or remove it.")
    return None


def check_clip(path: str | Path, listed_in: str | None = None) -> None:
    """Refuse a clip that cannot be scored: not readable audio, no samples, or NaN / inf samples (read whole only
    for float formats, the ones that can hold them; ~0.1 ms for the header of the others). `listed_in` names the
    metadata that listed the file, for the message."""
    where = f"{path}, listed in {listed_in}," if listed_in else str(path)
    try:
        info = soundfile.info(str(path))
        if info.frames == 0:
            samples = np.zeros(0, dtype=np.float32)
        elif info.subtype in FLOAT_SUBTYPES:
            samples = soundfile.read(str(path), dtype="float32")[0]
        else:
            return  # integer samples are finite
    except soundfile.SoundFileError as exc:
        raise DataError(f"{where} is not a readable audio file ({exc}); replace or remove it.") from exc
    error = unusable_samples(path, samples, listed_in)
    if error is not None:
        raise error


def read_audio(path: str | Path, sampling_rate: int) -> np.ndarray:
    """A mono float32 waveform in [-1, 1] at `sampling_rate` Hz (channels averaged, polyphase resampling); a clip
    without samples or with NaN / inf ones is refused (`check_clip` names it before a run; this, if it changed)."""
    try:
        waveform, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except soundfile.SoundFileError as exc:
        raise DataError(f"{path} cannot be read as audio ({exc}); replace or remove it.") from exc
    error = unusable_samples(path, waveform)
    if error is not None:
        raise error
    waveform = waveform.mean(axis=1)
    if rate != sampling_rate:
        from scipy.signal import resample_poly  # ~0.4 s to import; the CLI lists the tasks without it

        ratio = Fraction(sampling_rate, rate)
        waveform = resample_poly(waveform, ratio.numerator, ratio.denominator).astype(np.float32)
    return waveform


def list_audio(root: str | Path) -> list[Path]:
    """Audio files under `root` (recursively), sorted by path; each is checked (`check_clip`), so a file that is not
    audio, is empty or holds NaN / inf samples is named now rather than mid-training, after the run folder was
    written."""
    root = check_folder(root, "Audio folder", "pass a folder of .wav files")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise DataError(f"No {'/'.join(AUDIO_SUFFIXES)} files under {root}.")
    for path in files:
        check_clip(path)
    return files


def labels_from_names(files: list[Path], pattern: str = DEFAULT_LABEL_PATTERN) -> list[str]:
    """The label of each file: the first group of regex `pattern` matched against its file name (no suffix)."""
    regex = re.compile(pattern)
    labels = []
    for path in files:
        match = regex.search(path.stem)
        if match is None or not match.groups():
            raise DataError(f"Label pattern {pattern!r} (needs one group) does not match file name {path.name!r}; "
                             "pass --label-pattern or a --labels-csv with file,label columns.")
        labels.append(match.group(1))
    return labels


def labels_from_csv(files: list[Path], root: str | Path, csv_path: str | Path) -> list[str]:
    """The label of each file from a CSV with `file,label` columns, `file` relative to `root`.

    Rows for files that are not in `files` are ignored, so one CSV can label several folders.
    """
    reader = csv.DictReader(io.StringIO(read_text(csv_path, "Labels CSV"), newline=""))
    if not reader.fieldnames or not {"file", "label"} <= set(reader.fieldnames):
        raise DataError(f"{csv_path} needs a header with 'file' and 'label' columns; found {reader.fieldnames}.")
    table = {}
    for number, row in enumerate(reader, 2):
        label = (row["label"] or "").strip()
        if not row["file"] or not label:
            raise DataError(f"{csv_path}, line {number}: empty 'file' or 'label' ({row}); fill it in or drop the row.")
        table[Path(row["file"]).as_posix()] = label
    labels = []
    for path in files:
        key = path.relative_to(root).as_posix()
        if key not in table:
            raise DataError(f"{csv_path} has no row for {key!r} (file names are relative to {root}); "
                             "add it or remove the file.")
        labels.append(table[key])
    return labels


def fsdd_test_files(files: list[Path]) -> list[bool]:
    """Free Spoken Digit Dataset convention: `{digit}_{speaker}_{index}.wav` with index 0-4 is the test set."""
    marks = []
    for path in files:
        parts = path.stem.split("_")
        if len(parts) != 3 or not parts[2].isdigit():
            raise DataError(f"{path.name!r} is not named {{digit}}_{{speaker}}_{{index}}.wav as the FSDD split "
                             "needs; use --split random with --val-size instead.")
        marks.append(int(parts[2]) < 5)
    return marks


class AudioClassificationDataset(torch.utils.data.Dataset):
    """(file, label id) pairs turned into `{"input_values", "labels"}` by a feature extractor on access.

    Features are computed once per example and kept (they are deterministic), so later epochs are cheap.
    """

    def __init__(self, files: list[Path], labels: list[int], feature_extractor: Any) -> None:
        if len(files) != len(labels):
            raise DataError(f"{len(files)} files but {len(labels)} labels.")
        self.files, self.labels, self.feature_extractor = list(files), list(labels), feature_extractor
        self._features: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index not in self._features:
            rate = self.feature_extractor.sampling_rate
            waveform = read_audio(self.files[index], rate)
            features = self.feature_extractor(waveform, sampling_rate=rate, return_tensors="np")
            self._features[index] = features["input_values"][0].astype(np.float32)
        return {"input_values": self._features[index], "labels": self.labels[index]}
