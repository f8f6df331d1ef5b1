"""Reports of a classification evaluation: a Markdown summary (accuracy with its Wilson interval, macro-F1,
per-class precision / recall / F1) and a confusion-matrix PNG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..files import write_atomic


def confusion_png_path(output_dir: str | os.PathLike, name: str) -> Path:
    return Path(output_dir) / f"{name}.confusion.png"


def _percent(value: float | None) -> str:
    return f"{100 * value:.1f}%" if value is not None else "-"


def markdown_report(summary: dict[str, Any]) -> str:
    """One row per test set (n, accuracy, Wilson 95% interval, macro-F1), then each set's per-class table."""
    lines = ["| dataset | n | accuracy | 95% CI (Wilson) | macro-F1 |", "|---|---:|---:|---|---:|"]
    for name, s in summary["datasets"].items():
        interval = f"{100 * s['ci95'][0]:.1f}-{100 * s['ci95'][1]:.1f}%"
        f1 = f"{s['macro_f1']:.3f}" if s["macro_f1"] is not None else "-"
        lines.append(f"| {name} | {s['n']} | {_percent(s['accuracy'])} | {interval} | {f1} |")
    for name, s in summary["datasets"].items():
        lines += ["", f"Per class ({name}):", "", "| label | precision | recall | F1 | support |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {label} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
                  for label, c in s["per_class"].items()]
    described = ", ".join(f"{k}={v}" for k, v in {**summary.get("metadata", {}), **summary.get("settings", {})}.items()
                          if v is not None and k != "labels")
    return "\n".join([*lines, "", f"Settings: {described}."]) + "\n"


def plot_confusion(scores: dict[str, Any], png: str | os.PathLike, title: str = "") -> Path:
    """Draw the confusion matrix of `scores` (gold rows, predicted columns, counts written in the cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts, labels = np.asarray(scores["confusion"]), scores["labels"]
    size = min(4 + 0.4 * len(labels), 24)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90 if len(labels) > 6 else 0)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    if len(labels) <= 30:  # beyond that the numbers no longer fit in the cells
        threshold = counts.max() / 2 if counts.size else 0
        for (row, column), value in np.ndenumerate(counts):
            ax.text(column, row, str(value), ha="center", va="center",
                    color="white" if value > threshold else "black", fontsize=8)
    fig.colorbar(image, ax=ax)
    accuracy = f"accuracy {_percent(scores['accuracy'])}, n={scores['n']}"
    ax.set_title(f"{title} ({accuracy})" if title else accuracy)
    fig.tight_layout()
    try:
        write_atomic(Path(png), lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)
    return Path(png)
