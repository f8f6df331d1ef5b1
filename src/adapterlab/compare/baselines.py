"""What a task scores without learning anything, and whether full fine-tuning beat it: a task where it did not
carries no signal, so a comparison reports it but draws no verdict from it.

The majority-class score is the dev accuracy of always answering the training set's most frequent label (for
multiple choice: its most frequent gold position); chance is the mean over dev records of 1 / number of choices.
Full fine-tuning beats the majority class when its mean best dev score clears it by more than two standard errors
of an accuracy at that rate on the dev set (a best-of-several-evaluations score drifts above it by chance alone).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any

from ..data.choices import read_choice_items
from ..data.classification import read_labelled
from .tasks import CompareTask
from ..train.trainable import FULL


def is_accuracy(metric: str | None) -> bool:
    """Whether a run's dev metric is an accuracy (eval_accuracy, or eval_<task>_accuracy in a multi-task run),
    the score these floors are in; None (not recorded) is taken as accuracy."""
    return metric is None or metric.endswith("accuracy")


def task_baselines(task: CompareTask) -> dict[str, Any]:
    """{majority, majority_label, chance, dev_records} of a task's dev set, its majority label from training."""
    if task.task == "multiple-choice":
        train_items = read_choice_items([task.train])
        dev_items = read_choice_items([task.dev or task.train])
        train = [item.gold for item in train_items]
        dev = [item.gold for item in dev_items]
        chance = statistics.mean(1 / len(item.choices) for item in dev_items)
    else:
        train = [row["label"] for row in read_labelled([str(task.train)])[0]]
        dev = [row["label"] for row in read_labelled([str(task.dev or task.train)])[0]]
        chance = 1 / len(set(train) | set(dev))
    label = Counter(train).most_common(1)[0][0]
    return {"majority": dev.count(label) / len(dev), "majority_label": str(label), "chance": chance,
            "dev_records": len(dev)}


def margin(baseline: dict[str, Any]) -> float:
    """Two standard errors of a dev accuracy at the majority rate: what full fine-tuning must clear it by."""
    p, n = baseline["majority"], baseline["dev_records"]
    return 2 * math.sqrt(p * (1 - p) / n) if n else 0.0


def task_signal(summary: list[dict[str, Any]], baselines: dict[str, dict[str, Any]],
                metrics: dict[str, str | None]) -> dict[str, dict[str, Any]]:
    """Per task with a baseline: the baseline plus full fine-tuning's mean best dev, the margin, and `signal`
    (False where full did not beat the majority class by the margin; None where it cannot be told: no full
    run, or full's dev metric, `metrics[task]`, is not an accuracy)."""
    full = {s["task"]: s["best_dev"]["mean"] for s in summary if s["method"] == FULL}
    out = {}
    for task, baseline in baselines.items():
        best = full.get(task)
        known = best is not None and is_accuracy(metrics.get(task))
        out[task] = {**baseline, "full_best": best, "margin": margin(baseline),
                     "signal": best > baseline["majority"] + margin(baseline) if known else None}
    return out


def no_signal(signals: dict[str, dict[str, Any]]) -> list[str]:
    """The tasks where full fine-tuning did not beat the majority class."""
    return [task for task, s in signals.items() if s["signal"] is False]
