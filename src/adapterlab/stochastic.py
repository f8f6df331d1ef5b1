"""Per-forward random draws for stochastic adapter modules (MoSA's module choice, and any later method's).

A draw is a pure function of (seed, optimizer step, forward group, module key): the same on every torchrun
rank, the same for every micro-batch of one optimizer step (so gradient accumulation does not change it), the
same when activation checkpointing recomputes a block, and it continues exactly after `--resume` (the step is
the Trainer's). `draw_context(model, step=...)` sets the draws for one training step; the training recipe
holds it around each step. A batch may carry `groups` copies of the inputs (a consistency loss compares two
forwards with independent draws in one pass); each copy gets its own draw.

Outside a context (your own training loop), a stochastic module counts its own calls as the step, which is
reproducible for a fixed sequence of calls but not under activation-checkpointing recomputation: wrap the
forward and backward of each step in `draw_context` there.
"""

from __future__ import annotations

import contextlib
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Draws:
    """What decides every draw of one training step."""

    seed: int
    step: int
    groups: int = 1

    def choice(self, key: str, n: int, group: int = 0) -> int:
        """One of `n` options for module `key` in forward group `group` (uniform, reproducible)."""
        mixed = zlib.crc32(f"{self.seed}|{self.step}|{group}|{key}".encode())
        return random.Random(mixed).randrange(n)


class Stochastic(nn.Module):
    """Base of modules that draw at random in training; `draw_context` hands them the step's `Draws`."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.draw_key = key
        self.draws: Draws | None = None
        self._calls = 0  # the step when no context is set (see the module docstring)

    def current_draws(self, seed: int) -> Draws:
        """The context's draws, or a fresh step of this module's own count outside a context."""
        if self.draws is not None:
            return self.draws
        self._calls += 1
        return Draws(seed, self._calls)


def stochastic_modules(model: nn.Module) -> list[Stochastic]:
    return [m for m in model.modules() if isinstance(m, Stochastic)]


@contextlib.contextmanager
def draw_context(model: nn.Module, step: int, groups: int = 1, seed: int = 0) -> Iterator[None]:
    """Draws of training step `step` for every stochastic module of `model`, with `groups` forward groups.

    Hold it around the forward and the backward of the step (recomputation under activation checkpointing
    happens in the backward and must see the same draws).
    """
    modules = stochastic_modules(model)
    previous = [m.draws for m in modules]
    draws = Draws(int(seed), int(step), int(groups))
    for m in modules:
        m.draws = draws
    try:
        yield
    finally:
        for m, old in zip(modules, previous):
            m.draws = old


__all__ = ["Draws", "Stochastic", "draw_context", "stochastic_modules"]
