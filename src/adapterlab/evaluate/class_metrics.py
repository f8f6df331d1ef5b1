"""Classification scores from gold and predicted label ids: confusion matrix, per-class precision / recall / F1,
macro-F1, and accuracy with its 95% Wilson interval.

A ratio with a zero denominator (precision of a class never predicted, recall of a class absent from the gold
labels) counts as 0, as scikit-learn's `zero_division=0` does; macro-F1 averages over the classes that occur in
the gold or the predicted labels (scikit-learn's default `labels`), so classes the data never touches do not
pull it down.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .report import wilson_interval


def confusion_matrix(gold: Sequence[int], predicted: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts[g, p]: how many examples of gold class g were predicted as class p."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(gold, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return counts


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def per_class_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of every class of a confusion matrix (0 where undefined)."""
    true_positive = np.diag(counts).astype(float)
    predicted, support = counts.sum(axis=0), counts.sum(axis=1)
    precision, recall = _ratio(true_positive, predicted), _ratio(true_positive, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support, "predicted": predicted}


def macro_f1(counts: np.ndarray) -> float | None:
    """The mean F1 over the classes present in the gold or predicted labels; None for no examples."""
    scores = per_class_scores(counts)
    present = (scores["support"] + scores["predicted"]) > 0
    return float(scores["f1"][present].mean()) if present.any() else None


def classification_scores(gold: Sequence[int], predicted: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy with its 95% Wilson interval, macro-F1, per-class scores (by label name) and the confusion matrix."""
    counts = confusion_matrix(gold, predicted, len(labels))
    n, correct = int(counts.sum()), int(np.trace(counts))
    scores = per_class_scores(counts)
    low, high = wilson_interval(correct, n)
    return {
        "n": n, "correct": correct, "accuracy": correct / n if n else None, "ci95": [low, high],
        "macro_f1": macro_f1(counts),
        "per_class": {name: {"precision": float(scores["precision"][i]), "recall": float(scores["recall"][i]),
                             "f1": float(scores["f1"][i]), "support": int(scores["support"][i])}
                      for i, name in enumerate(labels)},
        "labels": list(labels), "confusion": counts.tolist(),
    }
