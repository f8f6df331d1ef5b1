"""Image classification (task `image-cls`) with a ViT on image folders laid out as `root/<class>/*.png|jpg`.

The dev set is a separate folder of the same layout (--eval-data) or a seeded stratified share of the
training folder (--val-size); images are resized and normalised by the model's image processor.
"""

from __future__ import annotations

from transformers import default_data_collator

from ..data.image import ImageClassificationDataset, list_images
from .base import TaskOptions, TaskSetup
from .classification import accuracy, head_modules
from .labelled import load_classifier, select

# The per-task TrainConfig fields this task reads (see adapterlab.tasks); the others are refused when set.
TRAIN_FIELDS = frozenset({"few_shot", "max_train_samples"})


def _read(folders: list[str]) -> tuple[list, list[str]]:
    files, names = [], []
    for folder in folders:
        found, labels = list_images(folder)
        files += found
        names += labels
    return files, names


def prepare(options: TaskOptions) -> TaskSetup:
    """ViT classifier, image train/dev sets and accuracy for `adapterlab train --task image-cls`.

    options.options: few_shot (K training images per class, chosen by seed), max_train_samples.
    """
    files, names = _read(options.data)
    source = (f"The class sub-folders of {', '.join(options.data)}", "give each class its own sub-folder")
    chosen = select(files, names, options, source, dev=_read(options.eval_data) if options.eval_data else None)
    labels = chosen["labels"]
    model, processor, pretrained = load_classifier(options, "image-cls", labels)
    train = ImageClassificationDataset(*chosen["train"], processor)
    dev = ImageClassificationDataset(*chosen["dev"], processor) if chosen["dev"][0] else None
    return TaskSetup(
        model=model, train_dataset=train, eval_dataset=dev, data_collator=default_data_collator,
        processor=processor, compute_metrics=accuracy, metric_name="eval_accuracy", greater_is_better=True,
        info={"labels": labels, "train_records": len(train), "dev_records": len(dev) if dev else 0,
              "few_shot": options.options.get("few_shot"), "pretrained": pretrained},
        trainable_modules=head_modules(model),
    )
