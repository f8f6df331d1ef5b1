"""Choosing each row's next token: greedy (argmax) or a draw with temperature and nucleus (top-p) filtering from a
generator of the row's own, so a request's draws depend only on its seed and its logits, never on which other
requests share the batch (the serving command's `temperature`, `top_p` and `seed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import UsageError


@dataclass
class Sampling:
    """How one request draws tokens: `temperature` 0 is greedy; `top_p` keeps the smallest set of tokens whose
    probabilities reach it; `seed` seeds the request's own generator (None: a fresh random seed)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature or not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"temperature ({self.temperature}) must be >= 0 and top_p ({self.top_p}) in (0, 1].")
        self.generator: torch.Generator | None = None
        if self.temperature > 0:
            self.generator = torch.Generator()
            if self.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def draw(logits: torch.Tensor, sampling: Sampling) -> int:
    """One token from a row's last logits (vocab,) as `sampling` says. The draw runs on the CPU in float32, so
    the same seed gives the same tokens on any device for the same logits."""
    if sampling.greedy:
        return int(logits.argmax())
    probs = torch.softmax(logits.float().cpu() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(0) - sorted_probs  # mass of the tokens ranked above each one
        sorted_probs[before >= sampling.top_p] = 0.0  # the top token always stays (its `before` is 0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=sampling.generator))


def next_tokens(logits: torch.Tensor, samplings: Sequence[Sampling | None]) -> list[int]:
    """Each row's next token from `logits` (rows, vocab): argmax for greedy rows in one call, a draw for the rest."""
    tokens = logits.argmax(-1).tolist()
    for i, sampling in enumerate(samplings):
        if sampling is not None and not sampling.greedy:
            tokens[i] = draw(logits[i], sampling)
    return tokens
