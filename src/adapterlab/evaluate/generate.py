"""Batched generation for evaluation: prompts sorted by length, KV cache, greedy decoding in continuous batches
(evaluate.scheduler) or beam search in fixed left-padded batches; each sequence stops at EOS or at a stop string,
which is cut from the text.

This is what LLM-Adapters' evaluate.py does one example at a time, with 4 beams and the cache off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import GenerationConfig, StoppingCriteriaList

from ..errors import UsageError
from .scheduler import ContinuousBatcher, Request
from .stopping import STOP_STRINGS, StopOnText, cut_at_stop, stop_forms


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices sorted longest first, so each batch holds prompts of similar length (little padding) and a
    batch that runs out of memory does so at the start."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The token ids that end a generation: the generation config's and the tokenizer's EOS ids, each once."""
    ids = []
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and token not in ids:
                ids.append(int(token))
    return ids


def pad_id(model: Any, tokenizer: Any) -> int:
    """The id that fills left padding and finished rows: the pad token, else EOS, else 0. Its value never matters
    (padding is masked, text after a row's end is cut), so a tokenizer without pad or EOS token works too."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    eos = eos_ids(model, tokenizer)
    return eos[0] if eos else 0


def generation_config(
    model: Any, tokenizer: Any, *, max_new_tokens: int, num_beams: int = 1, use_cache: bool = True,
) -> GenerationConfig:
    """Deterministic decoding settings: greedy (num_beams=1) or beam search, stopping at any EOS."""
    if max_new_tokens < 1 or num_beams < 1:
        raise UsageError(f"max_new_tokens ({max_new_tokens}) and num_beams ({num_beams}) must be at least 1.")
    eos = eos_ids(model, tokenizer)
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams, use_cache=use_cache,
        eos_token_id=eos or None, pad_token_id=pad_id(model, tokenizer),
    )


def left_padded(token_ids: Sequence[Sequence[int]], pad: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask for token id lists of different lengths, padded on the left."""
    rows = [torch.tensor(ids, dtype=torch.long) for ids in token_ids]
    return {
        "input_ids": pad_sequence(rows, batch_first=True, padding_value=pad, padding_side="left"),
        "attention_mask": pad_sequence([torch.ones_like(r) for r in rows], batch_first=True, padding_side="left"),
    }


def check_batching(batch_tokens: int | None, num_beams: int, use_cache: bool = True,
                   spell: Callable[[str], str] = str) -> None:
    """Refuse a token budget where fixed batches run: beam search and decoding without the KV cache."""
    if batch_tokens is None:
        return
    if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int) or batch_tokens < 1:
        raise UsageError(f"{spell('batch_tokens')} must be a whole number of at least 1, got {batch_tokens!r}.")
    if num_beams > 1 or not use_cache:
        why = f"{spell('num_beams')} {num_beams}" if num_beams > 1 else "decoding without the KV cache"
        raise UsageError(f"{spell('batch_tokens')} sizes the continuous batches of greedy decoding; {why} runs fixed "
                         f"batches of {spell('batch_size')} rows. Drop {spell('batch_tokens')}.")


def generate_batches(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    batch_tokens: int | None = None,
    max_new_tokens: int = 256,
    num_beams: int = 1,
    stop_strings: Sequence[str] = STOP_STRINGS,
    use_cache: bool = True,
    continuous: bool = True,
) -> Iterator[list[tuple[int, str]]]:
    """Yield (index into `prompts`, generated text) pairs as items finish; texts end before any stop string.

    Greedy decoding with the cache runs continuous batches (evaluate.scheduler): at most `batch_size` rows, and with
    `batch_tokens` at most that many padded cache positions, a finished row's place taken by the next prompt at once.
    Beam search (or `continuous=False`) runs fixed batches of `batch_size` prompts of similar length. Either way the
    prompts go longest first; callers restore the order by index.
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}.")
    check_batching(batch_tokens, num_beams, use_cache)
    if not prompts:
        return
    model.eval()
    config = generation_config(model, tokenizer, max_new_tokens=max_new_tokens, num_beams=num_beams,
                               use_cache=use_cache)
    forms = stop_forms(tokenizer, stop_strings)
    token_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    order = length_order([len(ids) for ids in token_ids])
    window = getattr(model.config.get_text_config(decoder=True), "sliding_window", None)
    fits = not isinstance(window, int) or len(token_ids[order[0]]) + max_new_tokens <= window
    if continuous and num_beams == 1 and use_cache and fits:
        yield from _continuous(model, tokenizer, token_ids, order, forms, config, batch_size, batch_tokens)
    else:
        yield from _fixed(model, tokenizer, token_ids, order, forms, config, batch_size)


def _continuous(model: Any, tokenizer: Any, token_ids: list[list[int]], order: list[int], forms: tuple[str, ...],
                config: GenerationConfig, batch_size: int, batch_tokens: int | None) -> Iterator[list[tuple[int, str]]]:
    """Greedy decoding with rows leaving and joining the batch as they finish (evaluate.scheduler)."""
    batcher = ContinuousBatcher(model, eos_ids=eos_ids(model, tokenizer), max_rows=batch_size, max_tokens=batch_tokens)
    stop = StopOnText(tokenizer, forms, 0).stops if forms else None
    for i in order:
        batcher.add(Request(i, list(token_ids[i]), config.max_new_tokens, stop))
    for done in batcher.run():
        texts = tokenizer.batch_decode([r.out for r in done], skip_special_tokens=True)
        yield [(r.key, cut_at_stop(text, forms)) for r, text in zip(done, texts)]


def _fixed(model: Any, tokenizer: Any, token_ids: list[list[int]], order: list[int], forms: tuple[str, ...],
           config: GenerationConfig, batch_size: int) -> Iterator[list[tuple[int, str]]]:
    """generate() on fixed batches of `batch_size` prompts: a batch decodes until its last row stops."""
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in left_padded([token_ids[i] for i in indices], config.pad_token_id).items()}
        prompt_length = batch["input_ids"].shape[1]
        stop = StoppingCriteriaList([StopOnText(tokenizer, forms, prompt_length)] if forms else [])
        with torch.inference_mode():
            sequences = model.generate(**batch, generation_config=config, stopping_criteria=stop)
        texts = tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)
        yield [(i, cut_at_stop(text, forms)) for i, text in zip(indices, texts)]


def generate(model: Any, tokenizer: Any, prompts: Sequence[str], **options: Any) -> list[str]:
    """The generated text for each prompt, in the order of `prompts` (options as in `generate_batches`)."""
    out: list[str] = [""] * len(prompts)
    for pairs in generate_batches(model, tokenizer, prompts, **options):
        for i, text in pairs:
            out[i] = text
    return out
