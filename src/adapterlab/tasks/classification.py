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
from .options import ClassificationOptions

HEAD_NAMES = ("classifier", "score", "classification_head", "projector")  # wav2vec2/HuBERT: projector, classifier
# The per-task TrainConfig fields this task reads (see adapterlab.tasks); the others are refused when set.
OPTIONS = ClassificationOptions
TRAIN_FIELDS = OPTIONS.names()


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


def columns(options: TaskOptions) -> dict[str, Any]:
    """The column names the run reads (--text-column, --label-column, --text-pair-column)."""
    opts = OPTIONS.of(options.options)
    return dict(text_column=opts.text_column, label_column=opts.label_column or "label",
                text_pair_column=opts.text_pair_column)


def read_examples(paths: list[str], options: TaskOptions) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, label name of each) from labelled files, read as the run reads its training data; unless named,
    the text column is guessed per file (SST-2's train and dev files name it differently)."""
    rows = read_labelled(paths, **columns(options))[0]
    return rows, [r["label"] for r in rows]


def describe(row: dict[str, Any]) -> str | list[str]:
    """What a predictions row shows of the example: its text (and second text)."""
    return [row["text"], row["text_pair"]] if "text_pair" in row else row["text"]


def build_model(options: TaskOptions, labels: list[str]) -> tuple[Any, Any]:
    """(model with a `len(labels)`-way head, tokenizer) as the run builds them before training."""
    from ..models import load_model

    return load_model(options.model, task="seq-cls", label_names=labels,
                      dtype=OPTIONS.of(options.options).dtype or "float32", quantize=quantization(options.options))


def make_dataset(rows: list[dict[str, Any]], ids: list[int], tokenizer: Any,
                 options: TaskOptions) -> tuple[list[dict[str, Any]], Any]:
    """(tokenized examples with label ids, padding collator), cut to the run's --cutoff-len."""
    cutoff = int(OPTIONS.of(options.options).cutoff_len)

    def encode(row: dict[str, Any], label: int) -> dict[str, Any]:
        pair = (row["text_pair"],) if "text_pair" in row else ()
        return {**tokenizer(row["text"], *pair, truncation=True, max_length=cutoff), "labels": label}

    return [encode(r, i) for r, i in zip(rows, ids)], DataCollatorWithPadding(tokenizer)


def prepare(options: TaskOptions) -> TaskSetup:
    """Model with a fresh head, tokenized train/dev sets, padding collator and accuracy.

    options.options: text_column, label_column ("label"), text_pair_column, cutoff_len, max_train_samples (a
    seeded subset of the rows read, before --val-size holds dev rows out of them), few_shot (then K training
    rows per label), dtype.
    """
    opts = OPTIONS.of(options.options)
    rows, used_column = read_labelled(options.data, **columns(options))
    rows = subsample(rows, opts.max_train_samples, options.seed)
    require_two_classes([r["label"] for r in rows], f"The label column {columns(options)['label_column']!r} of "
                        f"{', '.join(map(str, options.data))}", "check --label-column, or add the other classes")
    dev_rows = read_examples(options.eval_data, options)[0] if options.eval_data else []
    train_rows, held = holdout(rows, options.val_size, options.seed)
    dev_rows = dev_rows or held
    if opts.few_shot:
        train_rows = [train_rows[i] for i in few_shot([r["label"] for r in train_rows], int(opts.few_shot),
                                                      options.seed)]
    labels = label_names(train_rows)
    unknown = sorted({r["label"] for r in dev_rows} - set(labels))
    if unknown:
        raise DataError(f"The dev data has labels {unknown} that never occur in the training data {labels}.")
    label2id = {name: i for i, name in enumerate(labels)}
    model, tokenizer = build_model(options, labels)
    train_set, collator = make_dataset(train_rows, [label2id[r["label"]] for r in train_rows], tokenizer, options)
    dev_set = make_dataset(dev_rows, [label2id[r["label"]] for r in dev_rows], tokenizer, options)[0]
    return TaskSetup(
        model=model, train_dataset=train_set, eval_dataset=dev_set or None,
        data_collator=collator, processor=tokenizer, compute_metrics=accuracy,
        metric_name="eval_accuracy", greater_is_better=True,
        num_tokens=sum(len(x["input_ids"]) for x in train_set),
        info={"labels": labels, "text_column": used_column, "train_records": len(train_rows),
              "dev_records": len(dev_rows), "few_shot": opts.few_shot},
        trainable_modules=head_modules(model),
    )
