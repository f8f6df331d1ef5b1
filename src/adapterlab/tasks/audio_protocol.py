"""audio-cls on a dataset's own protocol (`--split esc50 | urbansound8k | speech-commands | fluent-speech |
fsdd-speakers`): the examples, dev marks and test set of one fold, and the folds `--cross-validate` runs."""

from __future__ import annotations

from pathlib import Path

from ..data.audio_protocols import DEV, PROTOCOLS, TEST, fold_names, split_roles
from ..errors import UsageError
from .base import TaskOptions
from .options import AudioOptions

Examples = tuple[list[Path], list[str]]


def protocol_examples(split: str, options: TaskOptions) -> tuple[list[Path], list[str], tuple[str, str], list[bool],
                                                                  Examples]:
    """(train + dev files, their label names, where the labels come from, dev mark of each, test examples)."""
    given = [f"--{name.replace('_', '-')}" for name in ("labels_csv", "label_pattern")
             if getattr(AudioOptions.of(options.options), name)]
    if given:
        raise UsageError(f"{' and '.join(given)}: --split {split} takes the labels from the dataset's own metadata; "
                         "drop the flag, or use --split random on a folder.")
    catalog, roles = split_roles(split, options.data, AudioOptions.of(options.options).fold)
    pool = [i for i, role in enumerate(roles) if role != TEST]
    test = [i for i, role in enumerate(roles) if role == TEST]
    source = (f"The {PROTOCOLS[split].dataset} metadata in {options.data[0]}", "check that --data is the whole dataset")
    return ([catalog.files[i] for i in pool], [catalog.labels[i] for i in pool], source,
            [roles[i] == DEV for i in pool], ([catalog.files[i] for i in test], [catalog.labels[i] for i in test]))


def folds(options: TaskOptions) -> list[str]:
    """The folds of the run's --split, one training each under --cross-validate; a split without folds is refused."""
    split = AudioOptions.of(options.options).split or "random"
    if split not in PROTOCOLS:
        raise UsageError(f"--cross-validate runs the folds of a dataset protocol (--split "
                         f"{', '.join(n for n, p in PROTOCOLS.items() if p.folds)}); --split {split} has none.")
    return fold_names(split, options.data)
