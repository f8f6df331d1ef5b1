"""Batched generation for evaluation: prompts sorted by length, left padding with attention masks, KV cache,
greedy (or beam) decoding that stops per sequence at EOS or at a stop string, which is cut from the text.

This is what LLM-Adapters' evaluate.py does one example at a time, with 4 beams and the cache off.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import GenerationConfig

from ..errors import UsageError
from ..data.templates import STOP_STRINGS


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to the first stop string (the start of a new '### Instruction'), stripped."""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=len(text))
    return text[:cut].strip()


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices sorted longest first, so each batch holds prompts of similar length (little padding) and a
    batch that runs out of memory does so at the start."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = []
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and token not in ids:
                ids.append(int(token))
    return ids


def generation_config(
    model: Any, tokenizer: Any, *, max_new_tokens: int, num_beams: int = 1, use_cache: bool = True,
    stop_strings: Sequence[str] = STOP_STRINGS,
) -> GenerationConfig:
    """Deterministic decoding settings: greedy (num_beams=1) or beam search, stopping at any EOS or stop string."""
    if max_new_tokens < 1 or num_beams < 1:
        raise UsageError(f"max_new_tokens ({max_new_tokens}) and num_beams ({num_beams}) must be at least 1.")
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams, use_cache=use_cache,
        eos_token_id=eos or None, pad_token_id=pad, stop_strings=list(stop_strings) or None,
    )


def generate_batches(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    num_beams: int = 1,
    stop_strings: Sequence[str] = STOP_STRINGS,
    use_cache: bool = True,
) -> Iterator[list[tuple[int, str]]]:
    """Yield, batch by batch, (index into `prompts`, generated text) pairs; texts end before any stop string.

    Batches are formed from prompts of similar length; callers restore the order by index.
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}.")
    if not prompts:
        return
    model.eval()
    if tokenizer.pad_token_id is None:  # left padding needs a pad token; its value is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    config = generation_config(model, tokenizer, max_new_tokens=max_new_tokens, num_beams=num_beams,
                               use_cache=use_cache, stop_strings=stop_strings)
    device = next(model.parameters()).device
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]
    order = length_order(lengths)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = tokenizer([prompts[i] for i in indices], return_tensors="pt", padding=True, padding_side="left")
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            sequences = model.generate(**batch, generation_config=config, tokenizer=tokenizer)
        new_tokens = sequences[:, batch["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        yield [(i, cut_at_stop(text, stop_strings)) for i, text in zip(indices, texts)]


def generate(model: Any, tokenizer: Any, prompts: Sequence[str], **options: Any) -> list[str]:
    """The generated text for each prompt, in the order of `prompts` (options as in `generate_batches`)."""
    out: list[str] = [""] * len(prompts)
    for pairs in generate_batches(model, tokenizer, prompts, **options):
        for i, text in pairs:
            out[i] = text
    return out
