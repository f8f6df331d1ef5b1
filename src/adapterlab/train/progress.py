"""One readable line per logging step beside the Trainer's progress bar, instead of its raw log dicts.

    step 40/80  loss 1.234  lr 8.00e-04  612 tokens/s  1m 48s left
    step 40/80  dev  accuracy 0.8120  loss 0.4530

metrics.jsonl (callbacks.MetricsLog) keeps every number as it was; this only changes what the terminal shows.
"""

from __future__ import annotations

import time
from typing import Any

from transformers import Trainer
from transformers.trainer_callback import PrinterCallback, ProgressCallback

# In metrics.jsonl; too noisy (or shown another way: tokens/s since this process began) for a line per step.
HIDDEN = ("total_flos", "epoch", "grad_norm", "num_input_tokens_seen", "train_runtime", "train_tokens_per_second")


def duration(seconds: float) -> str:
    """'1h 02m', '3m 05s' or '42s'."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def number(value: Any) -> str:
    """A metric as a person reads it: 4 decimals for values in [0.001, 1000), else 3 significant digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4f}" if 1e-3 <= abs(value) < 1e3 else f"{value:.3g}"


class ReadableProgress(ProgressCallback):
    """The Trainer's progress bar (when `bar`), writing one line per log record: training step, loss, learning
    rate, throughput and time left; dev metrics; the end-of-training summary."""

    def __init__(self, bar: bool = True) -> None:
        super().__init__()
        self.bar = bar
        self.start, self.first_step, self.first_tokens = 0.0, 0, 0

    def on_train_begin(self, args, state, control, **kwargs):
        if self.bar:
            super().on_train_begin(args, state, control, **kwargs)
        self.start, self.first_step = time.perf_counter(), state.global_step  # a resumed run counts from here
        self.first_tokens = state.num_input_tokens_seen or 0

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar:
            super().on_step_end(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar and self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            line = self.line(args, state, logs)
            (self.training_bar.write if self.bar and self.training_bar is not None else print)(line)

    def line(self, args: Any, state: Any, logs: dict[str, Any]) -> str:
        """The one line for log record `logs` at the state's current step."""
        step = f"step {state.global_step}/{state.max_steps}"
        if "train_loss" in logs and "loss" not in logs:  # the end-of-training summary
            loss = f", mean loss {number(logs['train_loss'])}"
            return f"{step}  done in {duration(logs.get('train_runtime', 0))}{loss}"
        if any(key.startswith("eval_") for key in logs):
            shown = [f"{key[5:]} {number(v)}" for key, v in logs.items()
                     if key.startswith("eval_") and not key.endswith(("_runtime", "_per_second"))]
            return f"{step}  dev  " + "  ".join(shown)
        parts = [step]
        if "loss" in logs:
            parts.append(f"loss {number(logs['loss'])}")
        if "learning_rate" in logs:
            lr = logs["learning_rate"]
            warming = lr == 0 and state.global_step <= max(args.warmup_steps, 1)
            parts.append("lr 0 (warmup starts at 0)" if warming else f"lr {lr:.2e}")
        parts += self.speed(args, state)
        parts += [f"{key} {number(v)}" for key, v in logs.items()
                  if key not in ("loss", "learning_rate", *HIDDEN)]
        return "  ".join(parts)

    def speed(self, args: Any, state: Any) -> list[str]:
        """['612 tokens/s', '1m 48s left'] since training (or its resumption) began; [] before the first step."""
        elapsed, done = time.perf_counter() - self.start, state.global_step - self.first_step
        if done <= 0 or elapsed <= 0:
            return []
        tokens = (state.num_input_tokens_seen or 0) - self.first_tokens
        if tokens > 0:
            rate = f"{tokens / elapsed:,.0f} tokens/s"
        else:
            examples = done * args.train_batch_size * args.gradient_accumulation_steps * args.world_size
            rate = f"{examples / elapsed:.1f} examples/s"
        return [rate, f"{duration(elapsed / done * max(0, state.max_steps - state.global_step))} left"]


def use_readable_progress(trainer: Trainer) -> None:
    """Swap the Trainer's raw-dict printer (its progress bar's, or PrinterCallback without a bar) for ReadableProgress."""
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(ReadableProgress(bar=True))
    elif trainer.pop_callback(PrinterCallback) is not None:
        trainer.add_callback(ReadableProgress(bar=False))
