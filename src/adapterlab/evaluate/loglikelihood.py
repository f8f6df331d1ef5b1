"""Log-likelihood of a continuation given a context under a causal LM, batched: the scorer of `--protocol choice`.

A (context, continuation) pair is tokenized as lm-evaluation-harness does: trailing spaces of the context move
to the continuation, the whole text and the context are tokenized, and the continuation's tokens are the whole
text's tokens past the context's. Rows are sorted by length and right-padded (a causal model's real tokens
never see the padding), so a batch scores as its rows one at a time do. The LM head runs at the continuation's
positions only (`core/head_rows.py`), not over the whole batch x length x vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..core.head_rows import logits_at
from .generate import length_order, pad_id


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], int]:
    """(token ids of context + continuation, how many of them are the continuation's)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=True)["input_ids"]
    head = tokenizer(context, add_special_tokens=True)["input_ids"]
    return whole, max(1, len(whole) - len(head))


def loglikelihood_batches(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int
                          ) -> Iterator[list[tuple[int, float, int]]]:
    """Yield, batch by batch, (index into `pairs`, sum of the continuation's token log-probabilities, its token
    count); batches hold pairs of similar length, callers restore the order by index."""
    encoded = [encode_pair(tokenizer, context, continuation) for context, continuation in pairs]
    device = next(model.parameters()).device
    pad = pad_id(model, tokenizer)
    order = length_order([len(ids) for ids, _ in encoded])
    for start in range(0, len(order), batch_size):
        indices = order[start: start + batch_size]
        width = max(len(encoded[i][0]) for i in indices)
        ids = torch.full((len(indices), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(indices):
            tokens = encoded[i][0]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        positions = torch.zeros_like(ids, dtype=torch.bool)
        targets = []
        for row, i in enumerate(indices):  # the token at position p is predicted by the logits at p - 1
            tokens, count = encoded[i]
            positions[row, len(tokens) - count - 1: len(tokens) - 1] = True
            targets.extend(tokens[-count:])
        with torch.inference_mode():
            logits, _ = logits_at(model, {"input_ids": ids.to(device), "attention_mask": mask.to(device)},
                                  positions.to(device))
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            picked = logprobs.gather(-1, torch.tensor(targets, device=logprobs.device)[:, None])[:, 0]
        counts = [encoded[i][1] for i in indices]
        yield [(i, float(part.sum()), count) for i, part, count in zip(indices, picked.split(counts), counts)]


def loglikelihoods(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 16
                   ) -> list[tuple[float, int]]:
    """(sum of log-probabilities, token count) of each pair's continuation, in the order of `pairs`."""
    out: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    for batch in loglikelihood_batches(model, tokenizer, pairs, batch_size):
        for i, total, count in batch:
            out[i] = (total, count)
    return out
