"""Causal-LM instruction tuning: LLM-Adapters JSON/JSONL records, Alpaca or chat prompt, loss on responses."""

from __future__ import annotations

import warnings
from typing import Any

from transformers import DataCollatorForSeq2Seq

from ..data.packing import PackedCollator
from ..data.decontaminate import decontaminate, overlap_counts
from ..data.instruction import read_instructions, tokenize_example
from ..data.splits import holdout, subsample
from .base import TaskOptions, TaskSetup, quantization
from .options import CausalLMOptions

# The per-task TrainConfig fields this task reads (see adapterlab.tasks); the others are refused when set.
OPTIONS = CausalLMOptions
TRAIN_FIELDS = OPTIONS.names()
NOT_APPLICABLE = {
    "few_shot": "instruction records have free-text outputs, not classes to draw K of each from; "
                "use --max-train-samples N for a seeded subset",
}


def _load(options: TaskOptions) -> tuple[Any, Any]:
    from ..models import load_model

    return load_model(options.model, task="causal-lm", dtype=OPTIONS.of(options.options).dtype or "float32",
                      quantize=quantization(options.options))


def prepare(options: TaskOptions) -> TaskSetup:
    """Model, tokenized train/dev sets and a collator for instruction tuning: padding, or packing (--packing).

    options.options: template ("alpaca"|"chat"), cutoff_len, train_on_inputs, add_eos, decontaminate
    (eval files whose questions are dropped from training), max_train_samples, group_by_length, packing.
    """
    opts = OPTIONS.of(options.options)
    records = read_instructions(options.data)
    info: dict[str, Any] = {"records_read": len(records)}
    contamination_files = list(opts.decontaminate or [])
    if contamination_files:
        records, dropped = decontaminate(records, contamination_files)
        info["decontaminated"] = dropped
        info["records_after_decontamination"] = len(records)
        print(f"decontamination: dropped {sum(dropped.values())} training records "
              f"({', '.join(f'{k}: {v}' for k, v in dropped.items())}); {len(records)} remain")
    records = subsample(records, opts.max_train_samples, options.seed)
    eval_records = read_instructions(options.eval_data) if options.eval_data else []
    if options.eval_data and not contamination_files:
        overlap = {k: v for k, v in overlap_counts(records, options.eval_data).items() if v}
        if overlap:
            warnings.warn(f"training data shares questions with the eval data ({overlap}); "
                          "pass --decontaminate FILE to drop them.", stacklevel=2)
    train_records, dev_records = holdout(records, options.val_size, options.seed)
    dev_records = eval_records or dev_records
    info["train_records"], info["dev_records"] = len(train_records), len(dev_records)

    model, tokenizer = _load(options)
    tokenize = dict(template=opts.template, cutoff_len=int(opts.cutoff_len), train_on_inputs=bool(opts.train_on_inputs),
                    add_eos=bool(opts.add_eos))
    train_set = [tokenize_example(r, tokenizer, **tokenize) for r in train_records]
    dev_set = [tokenize_example(r, tokenizer, **tokenize) for r in dev_records] or None
    empty = sum(all(label == -100 for label in x["labels"]) for x in train_set)
    if empty:
        info["examples_cut_before_response"] = empty
        warnings.warn(f"{empty} of {len(train_set)} training examples have no response tokens left within "
                      f"--cutoff-len {tokenize['cutoff_len']}; they add nothing to the loss. Raise --cutoff-len.",
                      stacklevel=2)
    collator = PackedCollator() if opts.packing else \
        DataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=8, return_tensors="pt")
    return TaskSetup(
        model=model, train_dataset=train_set, eval_dataset=dev_set, data_collator=collator, processor=tokenizer,
        metric_name="eval_loss", greater_is_better=False,
        num_tokens=sum(len(x["input_ids"]) for x in train_set), info=info, group_by_length=opts.group_by_length,
    )
