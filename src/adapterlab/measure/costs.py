"""Measure one method's costs on one model: parameters, training step time and memory, inference latency.

Everything runs on random token batches of a fixed shape, so methods are compared on identical work.
`measure_method` is self-contained (it builds the model from a picklable factory) so that it can run in
a fresh process per method: memory freed by one method then cannot be reused by, and flatter, the next.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.engine import attach, count_parameters, get_config, merge
from ..errors import NotMergeableError, UsageError
from ..core.objectives import training_objective
from ..core.stochastic import draw_context
from ..train.trainable import FULL

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class Settings:
    """The shape of the work every method is measured on, and how often it is repeated."""

    seq_len: int = 256
    micro_batch_size: int = 4
    steps: int = 5
    warmup: int = 2
    decode_tokens: int = 8
    lr: float = 1e-4
    seed: int = 0

    def validate(self) -> None:
        """Raise a clear error for settings no measurement can run with."""
        for name in ("seq_len", "micro_batch_size", "steps", "decode_tokens"):
            if getattr(self, name) < 1:
                raise UsageError(f"measure setting {name} must be at least 1, got {getattr(self, name)}.")
        if self.warmup < 0:
            raise UsageError(f"measure setting warmup must be 0 or more, got {self.warmup}.")


def memory_method(device: torch.device) -> str:
    """What `peak_memory_mb` means on `device`, written into every result so nobody has to guess."""
    if device.type == "cuda":
        return "cuda: torch.cuda.max_memory_allocated over warmup+timed training steps (weights included)"
    if _CLEAR_REFS.exists():
        return "cpu: peak resident set size (VmHWM, reset via /proc/self/clear_refs) over warmup+timed training steps"
    return "unavailable: no CUDA device and no /proc/self/clear_refs to reset the peak RSS"


class _Memory:
    """Peak memory of a block of work, and the growth over what was held when it began (both in MiB)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = self.peak = None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif _CLEAR_REFS.exists():
            _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.base = _status_kib("VmRSS") * 1024

    def stop(self) -> None:
        if self.base is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = _status_kib("VmHWM") * 1024

    def result(self) -> dict[str, float | None]:
        if self.peak is None:
            return {"peak_memory_mb": None, "train_memory_mb": None}
        return {"peak_memory_mb": round(self.peak / 2**20, 1),
                "train_memory_mb": round((self.peak - self.base) / 2**20, 1)}


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{_STATUS} has no {field} line.")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _median_ms(fn: Callable[[], Any], settings: Settings, device: torch.device) -> float:
    for _ in range(settings.warmup):
        fn()
    return round(1000 * statistics.median(_timed(fn, device) for _ in range(settings.steps)), 3)


def random_batch(model: nn.Module, settings: Settings, device: torch.device) -> dict[str, torch.Tensor]:
    """Random token ids of shape (micro_batch_size, seq_len) with the labels the model's loss needs."""
    g = torch.Generator().manual_seed(settings.seed)
    vocab = model.get_input_embeddings().num_embeddings
    shape = (settings.micro_batch_size, settings.seq_len)
    ids = torch.randint(0, vocab, shape, generator=g)
    if model.can_generate():
        labels = ids
    elif getattr(model.config, "num_labels", None):
        labels = torch.randint(0, model.config.num_labels, (settings.micro_batch_size,), generator=g)
    else:
        raise UsageError(f"{type(model).__name__} is neither a causal LM nor a classifier; measure needs a loss.")
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


def _train_costs(model: nn.Module, batch: dict[str, torch.Tensor], settings: Settings,
                 device: torch.device) -> dict[str, Any]:
    """Median time of forward + backward + AdamW step over the trainable parameters, and its memory."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr)
    model.train()
    objective = training_objective(model)  # e.g. MoSA's consistency loss: two copies of the batch per step
    steps = itertools.count()

    def step() -> None:
        with draw_context(model, step=next(steps), groups=objective.groups if objective else 1):
            loss = objective.loss(model, batch)[0] if objective else model(**batch).loss
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    memory = _Memory(device)
    memory.start()  # before warmup: the optimizer's state is created on the first step and counts
    step_ms = _median_ms(step, settings, device)
    memory.stop()
    model.eval()
    return {"step_time_ms": step_ms, **memory.result()}


def _latency(model: nn.Module, batch: dict[str, torch.Tensor], settings: Settings, device: torch.device,
             prefix: str = "") -> dict[str, float | None]:
    """Prefill time (one forward over the batch, logits at every position) and per-token greedy decode time.

    Decode time is (generate 1 + k tokens - generate 1 token) / k, so the prefill inside generate cancels;
    None when noise swamps it (the longer generation was not slower).
    """
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.inference_mode():
        prefill = _median_ms(lambda: model(**inputs), settings, device)
        decode = None
        if model.can_generate():
            pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0

            def generate(n: int) -> Callable[[], Any]:
                return lambda: model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                              pad_token_id=pad, use_cache=True)

            one, many = generate(1), generate(1 + settings.decode_tokens)
            for _ in range(settings.warmup):
                one(), many()
            # paired, interleaved runs: a burst of load on a shared machine hits both halves of a pair
            extra = statistics.median(_timed(many, device) - _timed(one, device) for _ in range(settings.steps))
            decode = round(1000 * extra / settings.decode_tokens, 3) if extra > 0 else None
    return {f"{prefix}prefill_ms": prefill, f"{prefix}decode_ms_per_token": decode}


def measure_method(factory: Callable[[], nn.Module], method: str, options: dict[str, Any], settings: Settings,
                   device: str, threads: int | None = None) -> dict[str, Any]:
    """All costs of `method` ("full" or a registered adapter with `options`) on a fresh model from `factory`.

    `threads` sets torch's intra-op CPU threads for the measurement (restored afterwards).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return _measure(factory, method, options, settings, torch.device(device))
    finally:
        torch.set_num_threads(before)


def _measure(factory: Callable[[], nn.Module], method: str, options: dict[str, Any], settings: Settings,
             dev: torch.device) -> dict[str, Any]:
    torch.manual_seed(settings.seed)
    model = factory().to(dev)
    if method == FULL:
        model.requires_grad_(True)
        mergeable = False
    else:
        attach(model, method, **options)
        mergeable = get_config(model).mergeable
    trainable, total = count_parameters(model)
    batch = random_batch(model, settings, dev)
    row: dict[str, Any] = {
        "method": method, "status": "ok", "options": dict(options), "mergeable": mergeable,
        "trainable_params": trainable, "total_params": total,
        "trainable_percent": round(100 * trainable / total, 4), "threads": torch.get_num_threads(),
    }
    row.update(_train_costs(model, batch, settings, dev))
    row["memory_method"] = memory_method(dev)
    row.update(_latency(model, batch, settings, dev))
    row.update({"merged_prefill_ms": None, "merged_decode_ms_per_token": None, "note": None})
    if mergeable:
        try:
            merge(model)
        except NotMergeableError as exc:  # e.g. bitfit on bias-free layers: mergeable in general, not here
            row["note"] = f"not merged: {exc}"
        else:
            row.update(_latency(model, batch, settings, dev, prefix="merged_"))
    return row
