"""Trainer callbacks of the recipe: the JSONL metrics log and the best-checkpoint keeper with early stopping."""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..errors import UsageError
from ..files import write_atomic


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL log; torn lines (a kill or a full disk mid-write) are dropped with a warning."""
    records, torn = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            torn += 1
    if torn:
        warnings.warn(f"{path}: dropped {torn} torn line(s) that an interrupted write left.", stacklevel=2)
    return records


class MetricsLog(TrainerCallback):
    """Append every log record (training loss, learning rate, dev metrics) to a JSONL file.

    Each record carries `train_time_s`: wall time spent training in this process up to the last step, without
    the time spent evaluating and saving checkpoints (what time-to-target comparisons need). On resume, lines
    written after the checkpoint's step by the interrupted run are dropped first (and torn ones), so the file
    reads as one uninterrupted run; the clock then counts the resumed process only.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.train_time, self.mark, self.at_last_step = 0.0, 0.0, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_time, self.mark, self.at_last_step = 0.0, time.perf_counter(), 0.0
        if state.is_world_process_zero and self.path.is_file():
            keep = [r for r in read_log(self.path) if r.get("step", 0) <= state.global_step]
            text = "".join(json.dumps(r) + "\n" for r in keep)
            write_atomic(self.path, lambda tmp: Path(tmp).write_text(text))

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.train_time += now - self.mark
        self.mark, self.at_last_step = now, self.train_time

    def _pause(self) -> None:
        """Evaluation and saving run after a step's end: restart the clock after them."""
        self.mark = time.perf_counter()

    def on_evaluate(self, args, state, control, **kwargs):
        self._pause()

    def on_save(self, args, state, control, **kwargs):
        self._pause()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, "epoch": state.epoch, "train_time_s": round(self.at_last_step, 3),
                      **logs}
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


class BestKeeper(TrainerCallback):
    """Save a copy of the trained parameters whenever the dev metric improves; stop after `patience` misses.

    The best so far is read from the trainer state's log history, so a resumed run continues the count. `save` is
    called on every process (a sharded engine gathers the parameters on all of them); it writes on the main one.
    """

    def __init__(self, metric: str, greater_is_better: bool, save: Callable[[Any, int, float], None],
                 patience: int | None = None) -> None:
        self.metric, self.greater, self.save, self.patience = metric, greater_is_better, save, patience

    def _better(self, a: float, b: float) -> bool:
        if math.isnan(a):
            return False
        return math.isnan(b) or (a > b if self.greater else a < b)

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if not metrics or self.metric not in metrics:
            raise UsageError(f"The dev metric {self.metric!r} is not among the evaluation results {sorted(metrics or {})}.")
        values = [(h["step"], h[self.metric]) for h in state.log_history if self.metric in h]
        value, earlier = metrics[self.metric], values[:-1]  # the last entry is this evaluation
        best_step, best = None, None
        for step, v in earlier:
            if best is None or self._better(v, best):
                best_step, best = step, v
        if best is None or self._better(value, best):
            self.save(model, state.global_step, value)
            return
        misses = sum(1 for step, _ in earlier if step > best_step) + 1
        if self.patience and misses >= self.patience:
            control.should_training_stop = True
