"""Multiple choice (PIQA, ARC, OBQA, SIQA, WinoGrande, HellaSwag, COPA): one score per (question, choice) pair,
a softmax over the choices, cross entropy; dev accuracy.

Encoders use transformers' multiple-choice head; decoders a one-output classifier per pair (see
`models.choices`); either head is new, trained in full beside the adapter and saved with it. Questions may have
different numbers of choices: every batch is padded to the data's largest count with empty choices, which the
model masks out of the softmax. `--few-shot K` keeps K training questions per gold position (K whose answer is
the first choice, K the second, ...), as classification keeps K per class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..data.choices import ChoiceItem, read_choice_items
from ..data.sampling import few_shot
from ..data.splits import holdout, subsample
from ..models.choices import choice_loss
from .base import TaskOptions, TaskSetup
from .options import MultipleChoiceOptions
from .classification import accuracy, head_modules

# The per-task TrainConfig fields this task reads (see adapterlab.tasks); the others are refused when set.
OPTIONS = MultipleChoiceOptions
TRAIN_FIELDS = OPTIONS.names()
NOT_APPLICABLE = {"text_pair_column": "the choices are the second text of every pair"}


@dataclass
class ChoiceCollator:
    """Pads a batch of encoded questions to (batch, num_choices, tokens); missing choices get an all-zero mask."""

    tokenizer: Any
    num_choices: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = []
        for feature in features:
            keys = [k for k in feature if k != "labels"]
            pairs = [{k: feature[k][c] for k in keys} for c in range(len(feature["input_ids"]))]
            blank = {k: [self.tokenizer.pad_token_id if k == "input_ids" else 0] for k in keys}
            rows += pairs + [blank] * (self.num_choices - len(pairs))
        batch = self.tokenizer.pad(rows, return_tensors="pt")
        out = {k: v.view(len(features), self.num_choices, -1) for k, v in batch.items()}
        out["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return out


def encode(tokenizer: Any, item: ChoiceItem, cutoff: int) -> dict[str, Any]:
    """Each (question, choice) pair tokenized (the longer text cut first when a pair exceeds `cutoff`), as
    {input_ids: [one list per choice], attention_mask: [...], ..., labels: gold index}: the model's input names,
    which the Trainer keeps."""
    pairs = [tokenizer(item.question, choice, truncation="longest_first", max_length=cutoff) for choice in item.choices]
    return {**{k: [p[k] for p in pairs] for k in pairs[0]}, "labels": item.gold}


def prepare(options: TaskOptions) -> TaskSetup:
    """Model with a fresh choice head, encoded train/dev questions, the padding collator, loss and accuracy.

    options.options: text_column (the question column of plain tables), label_column, cutoff_len,
    max_train_samples (a seeded subset of the questions read, before --val-size holds dev ones out),
    few_shot (K training questions per gold position), dtype.
    """
    from ..models import load_model

    opts = OPTIONS.of(options.options)
    columns = dict(question_column=opts.text_column, label_column=opts.label_column or "label")
    items = subsample(read_choice_items(options.data, **columns), opts.max_train_samples, options.seed)
    dev_items = read_choice_items(options.eval_data, **columns) if options.eval_data else []
    train_items, held = holdout(items, options.val_size, options.seed)
    dev_items = dev_items or held
    if opts.few_shot:
        train_items = [train_items[i] for i in few_shot([it.gold for it in train_items], int(opts.few_shot),
                                                        options.seed)]
    model, tokenizer = load_model(options.model, task="multiple-choice", dtype=opts.dtype or "float32")
    cutoff = int(opts.cutoff_len)
    train_set = [encode(tokenizer, it, cutoff) for it in train_items]
    dev_set = [encode(tokenizer, it, cutoff) for it in dev_items]
    num_choices = max(len(it.choices) for it in [*train_items, *dev_items])
    return TaskSetup(
        model=model, train_dataset=train_set, eval_dataset=dev_set or None,
        data_collator=ChoiceCollator(tokenizer, num_choices), processor=tokenizer, compute_metrics=accuracy,
        metric_name="eval_accuracy", greater_is_better=True, compute_loss=choice_loss,
        num_tokens=sum(len(ids) for x in train_set for ids in x["input_ids"]),
        info={"train_records": len(train_items), "dev_records": len(dev_items), "num_choices": num_choices,
              "few_shot": opts.few_shot, "few_shot_unit": "questions per gold position"},
        trainable_modules=head_modules(model),
    )
