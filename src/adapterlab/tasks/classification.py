"""Sequence classification: text (+ label) columns from CSV/TSV/JSON for encoder or decoder models.

Labels are mapped to ids in sorted order and written into the model config (id2label / label2id), so the
saved run knows them; the new classification head is trained in full beside the adapter and saved with it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers import DataCollatorWithPadding

from ..data.classification import label_names, read_labelled
from ..data.sampling import few_shot, require_two_classes
from ..data.splits import holdout, subsample
from ..errors import DataError
from .base import TaskOptions, TaskSetup, quantization

HEAD_NAMES = ("classifier", "score", "classification_head")
# The per-task TrainConfig fields this task reads (see adapterlab.tasks); the others are refused when set.
TRAIN_FIELDS = frozenset({"text_column", "text_pair_column", "label_column", "cutoff_len", "max_train_samples",
                          "few_shot", "dtype", "load_8bit", "load_4bit"})


def head_modules(model: Any) -> list[str]:
    """Paths of the task head of a transformers classification model (classifier / score)."""
    names = [n for n, _ in model.named_children() if n in HEAD_NAMES]
    if not names:
        raise DataError(f"{type(model).__name__} has no classification head named one of {HEAD_NAMES}.")
    return names


def accuracy(eval_pred: Any) -> dict[str, float]:
    """Accuracy of argmax predictions, the dev metric."""
    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def prepare(options: TaskOptions) -> TaskSetup:
    """Model with a fresh head, tokenized train/dev sets, padding collator and accuracy.

    options.options: text_column, label_column ("label"), text_pair_column, cutoff_len, max_train_samples (a
    seeded subset of the rows read, before --val-size holds dev rows out of them), few_shot (then K training
    rows per label), dtype.
    """
    from ..models import load_model

    opts = options.options
    columns = dict(text_column=opts.get("text_column"), label_column=opts.get("label_column") or "label",
                   text_pair_column=opts.get("text_pair_column"))
    rows, text_column = read_labelled(options.data, **columns)
    rows = subsample(rows, opts.get("max_train_samples"), options.seed)
    require_two_classes([r["label"] for r in rows], f"The label column {columns['label_column']!r} of "
                        f"{', '.join(map(str, options.data))}", "check --label-column, or add the other classes")
    # Unless named, the text column is guessed per file (SST-2's train and dev files name it differently).
    dev_rows = read_labelled(options.eval_data, **columns)[0] if options.eval_data else []
    train_rows, held = holdout(rows, options.val_size, options.seed)
    dev_rows = dev_rows or held
    if opts.get("few_shot"):
        train_rows = [train_rows[i] for i in few_shot([r["label"] for r in train_rows], int(opts["few_shot"]),
                                                      options.seed)]
    labels = label_names(train_rows)
    unknown = sorted({r["label"] for r in dev_rows} - set(labels))
    if unknown:
        raise DataError(f"The dev data has labels {unknown} that never occur in the training data {labels}.")
    label2id = {name: i for i, name in enumerate(labels)}

    model, tokenizer = load_model(options.model, task="seq-cls", label_names=labels, dtype=opts.get("dtype") or "float32",
                                  quantize=quantization(opts))
    cutoff = int(opts.get("cutoff_len", 256))

    def encode(row: dict[str, Any]) -> dict[str, Any]:
        pair = (row["text_pair"],) if "text_pair" in row else ()
        item = dict(tokenizer(row["text"], *pair, truncation=True, max_length=cutoff))
        item["labels"] = label2id[row["label"]]
        return item

    train_set = [encode(r) for r in train_rows]
    return TaskSetup(
        model=model, train_dataset=train_set, eval_dataset=[encode(r) for r in dev_rows] or None,
        data_collator=DataCollatorWithPadding(tokenizer), processor=tokenizer, compute_metrics=accuracy,
        metric_name="eval_accuracy", greater_is_better=True,
        num_tokens=sum(len(x["input_ids"]) for x in train_set),
        info={"labels": labels, "text_column": text_column, "train_records": len(train_rows),
              "dev_records": len(dev_rows), "few_shot": opts.get("few_shot")},
        trainable_modules=head_modules(model),
    )
