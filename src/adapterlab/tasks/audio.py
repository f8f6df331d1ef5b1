"""Audio classification (task `audio-cls`) with an Audio Spectrogram Transformer, wav2vec 2.0 or HuBERT
(`audio_models`) on folders of audio files.

Labels come from a `file,label` CSV or from a regex on the file names (default: the prefix before the
first "_", which is the digit in the Free Spoken Digit Dataset). Audio is resampled to the feature
extractor's rate and cut or padded to `max_length` frames; a checkpoint used at another length gets its
position embeddings interpolated to the new patch grid (`adapterlab.models.posembed`). `--split` may instead name a
dataset's own protocol (ESC-50, UrbanSound8K, Speech Commands, Fluent Speech Commands, FSDD speakers; see
`adapterlab.data.audio_protocols`), --data then being the dataset's root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import default_data_collator

from ..errors import UsageError
from ..data.audio import (
    DEFAULT_LABEL_PATTERN,
    AudioClassificationDataset,
    fsdd_test_files,
    labels_from_csv,
    labels_from_names,
    list_audio,
)
from ..data.specaugment import masked_training_set, masking_info
from ..data.audio_protocols import PROTOCOLS
from .options import AudioOptions
from .audio_protocol import folds, protocol_examples  # noqa: F401 (folds: for --cross-validate)
from .audio_models import audio_dataset, check_pooling, fit, frozen_modules, pooling_of
from .base import TaskOptions, TaskSetup
from .classification import accuracy, head_modules
from .labelled import label_test, load_classifier, select
from .scratch import is_config_spec

SPLITS = ("random", "fsdd", *PROTOCOLS)  # the protocols: --data is the dataset's root (data/audio_protocols.py)
# The per-task TrainConfig fields this task reads (see adapterlab.tasks); the others are refused when set.
OPTIONS = AudioOptions
TRAIN_FIELDS = OPTIONS.names()


def read_folders(folders: list[str], labels_csv: str | None, label_pattern: str) -> tuple[list[Path], list[str]]:
    """(audio files, label name of each) from one or more folders."""
    files, names = [], []
    for folder in folders:
        found = list_audio(folder)
        files += found
        names += labels_from_csv(found, folder, labels_csv) if labels_csv else labels_from_names(found, label_pattern)
    return files, names


def label_source(options: TaskOptions) -> tuple[str | None, str]:
    """(labels CSV, file-name pattern) the run reads labels with; both given is refused."""
    opts = OPTIONS.of(options.options)
    if opts.labels_csv and opts.label_pattern:
        raise UsageError("--labels-csv and --label-pattern both say where labels come from; pass one.")
    return opts.labels_csv, opts.label_pattern or DEFAULT_LABEL_PATTERN


def read_examples(paths: list[str], options: TaskOptions) -> tuple[list[Path], list[str]]:
    """(audio files, label name of each) from folders, labelled as the run labels its training folders."""
    return read_folders(paths, *label_source(options))


def describe(file: Path) -> str:
    """What a predictions row shows of the example: its file."""
    return str(file)


def build_model(options: TaskOptions, labels: list[str]) -> tuple[Any, Any]:
    """(AST, wav2vec2 or HuBERT classifier with a `len(labels)`-way head, its feature extractor) at the run's
    --max-length and --pooling (see `audio_models`)."""
    opts = OPTIONS.of(options.options)
    check_pooling(opts.pooling)  # before a model is loaded
    model, extractor, _ = load_classifier(options, "audio-cls", labels, max_length=opts.max_length)
    return fit(model, extractor, opts, options.model), extractor


def make_dataset(files: list[Path], ids: list[int], extractor: Any,
                 options: TaskOptions) -> tuple[AudioClassificationDataset, Any]:
    """(spectrogram or waveform examples with label ids, as the extractor's model takes them; collator)."""
    return audio_dataset(files, ids, extractor), default_data_collator


def folder_examples(split: str, options: TaskOptions) -> tuple[list[Path], list[str], tuple[str, str],
                                                               list[bool] | None, tuple[list, list]]:
    """(files, label names, where the labels come from, FSDD dev marks, no test set) of --split random / fsdd."""
    if OPTIONS.of(options.options).fold is not None:
        raise UsageError(f"--fold picks a fold of a dataset's protocol (--split {', '.join(PROTOCOLS)}); "
                         f"--split {split} has none: drop --fold.")
    labels_csv, pattern = label_source(options)
    files, names = read_examples(options.data, options)
    source = (f"The 'label' column of {labels_csv}", "check the CSV") if labels_csv else \
        (f"The labels --label-pattern {pattern!r} reads from the file names in {', '.join(options.data)}",
         "pass a --label-pattern whose first group is the class, or a --labels-csv")
    return files, names, source, fsdd_test_files(files) if split == "fsdd" else None, ([], [])


def prepare(options: TaskOptions) -> TaskSetup:
    """AST classifier, spectrogram train/dev sets and accuracy for `adapterlab train --task audio-cls`.

    options.options: labels_csv, label_pattern, split ("random": --val-size by seed, stratified; "fsdd":
    file index 0-4 is the dev set; a dataset protocol: train/dev/test of its fold `fold`), fold, few_shot (K per
    class, by seed), max_train_samples, max_length (spectrogram frames), freq_mask / time_mask (SpecAugment on
    the training set only, `adapterlab.data.specaugment`).
    """
    opts = OPTIONS.of(options.options)
    split = opts.split or "random"
    if split not in SPLITS:
        raise UsageError(f"--split must be one of {SPLITS}, got {split!r}.")
    if split != "random" and (options.eval_data or options.val_size):
        raise UsageError(f"--split {split} fixes the dev set; drop --eval-data and --val-size, or use --split random.")
    files, names, source, dev_mask, test = protocol_examples(split, options) if split in PROTOCOLS else \
        folder_examples(split, options)
    chosen = select(files, names, options, source, dev_mask=dev_mask,
                    dev=read_examples(options.eval_data, options) if options.eval_data else None)
    labels = chosen["labels"]
    model, extractor = build_model(options, labels)
    train = masked_training_set(make_dataset(*chosen["train"], extractor, options)[0], vars(opts), options.seed)
    dev = make_dataset(*chosen["dev"], extractor, options)[0] if chosen["dev"][0] else None
    tested = make_dataset(*label_test(test, labels), extractor, options)[0] if test[0] else None
    return TaskSetup(
        model=model, train_dataset=train, eval_dataset=dev, data_collator=default_data_collator, test_dataset=tested,
        processor=extractor, compute_metrics=accuracy, metric_name="eval_accuracy", greater_is_better=True,
        info={"labels": labels, "train_records": len(train), "dev_records": len(dev) if dev else 0,
              "split": "eval-data" if options.eval_data else split, "fold": opts.fold,
              "test_records": len(tested) if tested else 0, "few_shot": opts.few_shot,
              "spec_augment": masking_info(vars(opts)),
              "max_length": extractor.max_length, "sampling_rate": extractor.sampling_rate,
              "pooling": pooling_of(model),
              "pretrained": not is_config_spec(options.model)},
        trainable_modules=head_modules(model), frozen_modules=frozen_modules(model),
    )
