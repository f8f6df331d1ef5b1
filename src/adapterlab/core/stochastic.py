"""Per-forward random draws for stochastic adapter modules (MoSA's module choice, and any later method's).

A draw is a pure function of (seed, optimizer step, forward group, module key): the same on every torchrun
rank, the same for every micro-batch of one optimizer step (so gradient accumulation does not change it), the
same when activation checkpointing recomputes a block, and it continues exactly after `--resume` (the step is
the Trainer's). `draw_context(model, step=...)` sets the draws for one training step; the training recipe
holds it around each step. A batch may carry `groups` copies of the inputs (a consistency loss compares two
forwards with independent draws in one pass); each copy gets its own draw.

Outside a context (your own training loop), each call of the model in training mode is a new step: a forward
pre-hook that `attach` installs counts the calls, and the draws stay set until the next call, so the
recomputation in the backward sees the forward's draws. Two forwards per optimizer step are then two steps;
use `draw_context` to say what a step is.
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
        self.model_calls = 0  # counted by the model's forward pre-hook: the step outside a context

    def current_draws(self, seed: int) -> Draws:
        """The context's draws, else those of the model call this forward belongs to."""
        return self.draws if self.draws is not None else Draws(seed, self.model_calls)


def count_model_calls(model: nn.Module, args: tuple) -> None:
    """Forward pre-hook: outside a draw_context, a training call of the model is a new step for its draws."""
    if model.training:
        for m in stochastic_modules(model):
            m.model_calls += 1


def track_model_calls(model: nn.Module) -> None:
    """Install `count_model_calls` while the model has stochastic modules, remove it when none are left."""
    wanted, handle = bool(stochastic_modules(model)), getattr(model, "adapterlab_calls", None)
    if wanted and handle is None:
        model.adapterlab_calls = model.register_forward_pre_hook(count_model_calls)
    elif not wanted and handle is not None:
        handle.remove()
        del model.adapterlab_calls


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


__all__ = ["Draws", "Stochastic", "count_model_calls", "draw_context", "stochastic_modules", "track_model_calls"]
