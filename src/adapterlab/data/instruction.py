"""Instruction data in the LLM-Adapters format (JSON list or JSONL of {instruction, input, output, answer})
and its tokenization for causal-LM training: prompt + response, cutoff, EOS, loss on the response only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError
from .reading import read_json_records
from .templates import build_prompt

REQUIRED_FIELDS = ("instruction", "output")
TEXT_FIELDS = ("instruction", "input", "output")  # trained on as text: a null or a number would become "None", "3"


def read_instructions(paths: list[str] | str) -> list[dict[str, Any]]:
    """Instruction records from one or more files, each checked for a string `instruction`, `output` (and `input`)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    records: list[dict[str, Any]] = []
    for path in paths:
        for index, record in enumerate(read_json_records(path)):
            for name in REQUIRED_FIELDS:
                if name not in record:
                    raise DataError(
                        f"{path}, record {index}: missing field {name!r} (it has {sorted(record)}); "
                        "instruction records need 'instruction' and 'output' ('input' is optional)."
                    )
            for name in TEXT_FIELDS:
                if name in record and not isinstance(record[name], str):
                    raise DataError(
                        f"{path}, record {index}: field {name!r} must be a string, got "
                        f"{json.dumps(record[name])[:40]}; write the text in quotes (\"\" for none)."
                    )
            records.append(record)
    if not records:
        raise DataError(f"No training records in {', '.join(map(str, paths))}.")
    return records


def tokenize_example(
    record: dict[str, Any],
    tokenizer: Any,
    *,
    template: str = "alpaca",
    cutoff_len: int = 256,
    train_on_inputs: bool = False,
    add_eos: bool = True,
) -> dict[str, list[int]]:
    """input_ids / attention_mask / labels for prompt + response, truncated to `cutoff_len`.

    As in LLM-Adapters, EOS is appended only when the text did not fill the cutoff, and unless
    `train_on_inputs` the prompt tokens get label -100 so the loss covers the response alone.
    """
    prompt = build_prompt(record, template, tokenizer)
    # A chat template already writes the special tokens; the plain prompt gets the tokenizer's own (e.g. BOS).
    special = template != "chat"
    ids = tokenizer(prompt + str(record["output"]), truncation=True, max_length=cutoff_len,
                    add_special_tokens=special)["input_ids"]
    eos = tokenizer.eos_token_id
    if add_eos and eos is not None and len(ids) < cutoff_len and (not ids or ids[-1] != eos):
        ids = ids + [eos]
    labels = list(ids)
    if not train_on_inputs:
        n_prompt = len(tokenizer(prompt, truncation=True, max_length=cutoff_len, add_special_tokens=special)["input_ids"])
        labels[:n_prompt] = [-100] * min(n_prompt, len(labels))
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
