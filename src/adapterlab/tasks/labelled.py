"""Steps shared by the audio and image classification tasks: label ids, train/dev selection, the model.

Examples are (file, label name) pairs. Label ids follow natural sort order of the names ("2" before
"10") and are written into the model config. The dev set is a separate folder, a named convention
(e.g. FSDD) or a seeded stratified share of the training folder; `few_shot` then keeps K training
examples per class, chosen by seed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import DataError
from ..data.sampling import few_shot, require_two_classes, stratified_split
from ..data.splits import subsample
from .base import TaskOptions
from .options import FewShot, Subset
from .scratch import build_classifier, is_config_spec


def natural_key(name: str) -> list[Any]:
    """Sort key that orders digit runs by value: "2" < "10", "cat2" < "cat10"."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


def label_ids(names: list[str]) -> tuple[list[str], dict[str, int]]:
    """(sorted label names, name -> id)."""
    ordered = sorted(set(names), key=natural_key)
    return ordered, {name: i for i, name in enumerate(ordered)}


def select(files: list[Path], names: list[str], options: TaskOptions, source: tuple[str, str],
           dev_mask: list[bool] | None = None, dev: tuple[list[Path], list[str]] | None = None) -> dict[str, Any]:
    """Train/dev examples with label ids: `dev` is a separate (files, names) set; else `dev_mask` marks the
    dev examples; else `options.val_size` of every class is held out by seed. `max_train_samples` first keeps a
    seeded subset of the examples (as for text tasks, before any dev examples are held out of them); `few_shot`
    then keeps K training examples per class. `source` (where the labels come from, how to fix them) names
    the labels in the error for single-class data."""
    keep = subsample(list(range(len(files))), Subset.of(options.options).max_train_samples, options.seed)
    files, names = [files[i] for i in keep], [names[i] for i in keep]
    dev_mask = [dev_mask[i] for i in keep] if dev_mask is not None else None
    require_two_classes(names, *source)
    labels, to_id = label_ids(names)
    ids = [to_id[n] for n in names]
    if dev is not None:
        unknown = sorted(set(dev[1]) - set(labels), key=natural_key)
        if unknown:
            raise DataError(f"The dev data has labels {unknown} that never occur in the training data {labels}.")
        train, dev_files, dev_ids = list(range(len(files))), dev[0], [to_id[n] for n in dev[1]]
    else:
        if dev_mask is not None:
            train = [i for i, d in enumerate(dev_mask) if not d]
            held = [i for i, d in enumerate(dev_mask) if d]
        else:
            train, held = stratified_split(ids, options.val_size, options.seed)
        dev_files, dev_ids = [files[i] for i in held], [ids[i] for i in held]
    shots = FewShot.of(options.options).few_shot
    if shots:
        train = [train[i] for i in few_shot([ids[i] for i in train], int(shots), options.seed)]
    return {"labels": labels, "train": ([files[i] for i in train], [ids[i] for i in train]),
            "dev": (dev_files, dev_ids)}


def label_test(test: tuple[list[Path], list[str]], labels: list[str]) -> tuple[list[Path], list[int]]:
    """The test files with the label ids of the training labels; a test label never trained on is refused."""
    to_id = {name: i for i, name in enumerate(labels)}
    unknown = sorted(set(test[1]) - set(to_id), key=natural_key)
    if unknown:
        raise DataError(f"The test set has labels {unknown} that never occur in the training and dev data {labels}; "
                        "check that --data is the whole dataset.")
    return test[0], [to_id[name] for name in test[1]]


def load_classifier(options: TaskOptions, task: str, labels: list[str],
                    **overrides: Any) -> tuple[nn.Module, Any, bool]:
    """(model with a fresh `len(labels)`-way head, its processor, whether it came from pretrained weights).

    `config:` specs build a random model (overrides apply to its config); other specs load a checkpoint
    through `adapterlab.models.load_model`.
    """
    if is_config_spec(options.model):
        model, processor = build_classifier(options.model, task, labels, options.seed, **overrides)
        return model, processor, False
    from ..models import load_model

    model, processor = load_model(options.model, task=task, label_names=labels)  # writes id2label / label2id
    return model, processor, True
