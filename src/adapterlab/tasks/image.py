"""Image classification (task `image-cls`) with a ViT on image folders laid out as `root/<class>/*.png|jpg`.

The dev set is a separate folder of the same layout (--eval-data) or a seeded stratified share of the
training folder (--val-size); images are resized and normalised by the model's image processor. `--split` may
instead name a benchmark's own protocol (FGVC, VTAB-1k; see `adapterlab.data.image_protocols`), --data then
being the dataset folder, whose lists fix the train, dev and test sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import default_data_collator

from ..data.image import ImageClassificationDataset, list_images
from ..data.image_protocols import PROTOCOLS, read_protocol
from ..errors import UsageError
from .base import TaskOptions, TaskSetup
from .options import ImageOptions
from .classification import accuracy, head_modules
from .labelled import label_test, load_classifier, select
from .scratch import is_config_spec

# The per-task TrainConfig fields this task reads (see adapterlab.tasks); the others are refused when set.
OPTIONS = ImageOptions
TRAIN_FIELDS = OPTIONS.names()
SPLITS = ("random", *PROTOCOLS)
Examples = tuple[list[Path], list[str]]


def read_examples(paths: list[str], options: TaskOptions) -> tuple[list[Path], list[str]]:
    """(image files, class name of each) from folders laid out as `root/<class>/*.png`."""
    files, names = [], []
    for folder in paths:
        found, labels = list_images(folder)
        files += found
        names += labels
    return files, names


def describe(file: Path) -> str:
    """What a predictions row shows of the example: its file."""
    return str(file)


def build_model(options: TaskOptions, labels: list[str]) -> tuple[Any, Any]:
    """(ViT classifier with a `len(labels)`-way head, its image processor) as the run builds them."""
    return load_classifier(options, "image-cls", labels)[:2]


def make_dataset(files: list[Path], ids: list[int], processor: Any,
                 options: TaskOptions) -> tuple[ImageClassificationDataset, Any]:
    """(image examples with label ids, collator)."""
    return ImageClassificationDataset(files, ids, processor), default_data_collator


def protocol_examples(split: str, options: TaskOptions) -> tuple[Examples, tuple[str, str], list[bool] | None,
                                                                  Examples | None, Examples]:
    """(training pool, where its labels come from, dev mark of each, separate dev set, test set) of --split NAME:
    a dev set that is part of the training set (vtab-1k's val200) stays whole and apart; else it joins the pool
    marked, so that --max-train-samples subsets train and dev together, as for the audio protocols."""
    sets = read_protocol(split, options.data)
    source = (f"The {PROTOCOLS[split].dataset} lists in {options.data[0]}", "check that --data is the whole dataset")
    if sets.dev_in_train:
        return sets.train, source, None, sets.dev, sets.test
    pool = (sets.train[0] + sets.dev[0], sets.train[1] + sets.dev[1])
    return pool, source, [False] * len(sets.train[0]) + [True] * len(sets.dev[0]), None, sets.test


def folder_examples(options: TaskOptions) -> tuple[Examples, tuple[str, str], None, Examples | None, Examples]:
    """(class-folder examples of --data, where their labels come from, no marks, --eval-data's, no test set)."""
    source = (f"The class sub-folders of {', '.join(options.data)}", "give each class its own sub-folder")
    examples = read_examples(options.data, options)
    dev = read_examples(options.eval_data, options) if options.eval_data else None
    return examples, source, None, dev, ([], [])


def prepare(options: TaskOptions) -> TaskSetup:
    """ViT classifier, image train/dev (and test) sets and accuracy for `adapterlab train --task image-cls`.

    options.options: split ("random": --eval-data or --val-size of every class, by seed; a benchmark protocol:
    its lists), few_shot (K training images per class, chosen by seed), max_train_samples.
    """
    split = OPTIONS.of(options.options).split or "random"
    if split not in SPLITS:
        raise UsageError(f"--split {split} is not an image-cls split; pass one of {', '.join(SPLITS)}.")
    if split != "random" and (options.eval_data or options.val_size):
        raise UsageError(f"--split {split} fixes the dev set ({PROTOCOLS[split].choice}); drop --eval-data and "
                         "--val-size, or use --split random.")
    pool, source, dev_mask, dev, test = protocol_examples(split, options) if split in PROTOCOLS else \
        folder_examples(options)
    chosen = select(*pool, options, source, dev_mask=dev_mask, dev=dev)
    labels = chosen["labels"]
    model, processor = build_model(options, labels)
    train = make_dataset(*chosen["train"], processor, options)[0]
    dev_set = make_dataset(*chosen["dev"], processor, options)[0] if chosen["dev"][0] else None
    tested = make_dataset(*label_test(test, labels), processor, options)[0] if test[0] else None
    return TaskSetup(
        model=model, train_dataset=train, eval_dataset=dev_set, data_collator=default_data_collator,
        test_dataset=tested, processor=processor, compute_metrics=accuracy, metric_name="eval_accuracy",
        greater_is_better=True,
        info={"labels": labels, "train_records": len(train), "dev_records": len(dev_set) if dev_set else 0,
              "test_records": len(tested) if tested else 0, "split": "eval-data" if options.eval_data else split,
              "few_shot": OPTIONS.of(options.options).few_shot, "pretrained": not is_config_spec(options.model)},
        trainable_modules=head_modules(model),
    )
