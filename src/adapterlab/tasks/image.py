"""Image classification (task `image-cls`) with a ViT on image folders laid out as `root/<class>/*.png|jpg`.

The dev set is a separate folder of the same layout (--eval-data) or a seeded stratified share of the
training folder (--val-size); images are resized and normalised by the model's image processor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import default_data_collator

from ..data.image import ImageClassificationDataset, list_images
from .base import TaskOptions, TaskSetup
from .classification import accuracy, head_modules
from .labelled import load_classifier, select
from .scratch import is_config_spec

# The per-task TrainConfig fields this task reads (see adapterlab.tasks); the others are refused when set.
TRAIN_FIELDS = frozenset({"few_shot", "max_train_samples"})


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


def prepare(options: TaskOptions) -> TaskSetup:
    """ViT classifier, image train/dev sets and accuracy for `adapterlab train --task image-cls`.

    options.options: few_shot (K training images per class, chosen by seed), max_train_samples.
    """
    files, names = read_examples(options.data, options)
    source = (f"The class sub-folders of {', '.join(options.data)}", "give each class its own sub-folder")
    chosen = select(files, names, options, source,
                    dev=read_examples(options.eval_data, options) if options.eval_data else None)
    labels = chosen["labels"]
    model, processor = build_model(options, labels)
    train = make_dataset(*chosen["train"], processor, options)[0]
    dev = make_dataset(*chosen["dev"], processor, options)[0] if chosen["dev"][0] else None
    return TaskSetup(
        model=model, train_dataset=train, eval_dataset=dev, data_collator=default_data_collator,
        processor=processor, compute_metrics=accuracy, metric_name="eval_accuracy", greater_is_better=True,
        info={"labels": labels, "train_records": len(train), "dev_records": len(dev) if dev else 0,
              "few_shot": options.options.get("few_shot"), "pretrained": not is_config_spec(options.model)},
        trainable_modules=head_modules(model),
    )
