"""The loss curve of a run (training loss, and dev loss or metric) drawn from its metrics.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .callbacks import read_log

# label -> (accuracy, (low, high) of its 95% interval), e.g. {"base model": (0.1, (0.05, 0.17)), ...}
Accuracies = dict[str, tuple[float, tuple[float, float]]]


def plot_metrics(metrics: str | Path, png: str | Path, title: str = "", accuracy: Accuracies | None = None) -> Path:
    """Draw training loss per step (and dev metrics on a second axis) from a JSONL metrics log into `png`; with
    `accuracy`, a panel beside it with those test accuracies as bars with their 95% intervals (the demo's
    before/after: what the loss curve is about)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(Path(metrics))  # the one tolerant reader of metrics.jsonl (a torn line is dropped, with a warning)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    dev = {k: [(r["step"], r[k]) for r in rows if k in r] for k in {k for r in rows for k in r}
           if k.startswith("eval_") and k not in ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")}
    if accuracy:
        fig, (ax, bars) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [2.2, 1]})
        _accuracy_bars(bars, accuracy)
    else:
        fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if dev.get("eval_loss"):
        ax.plot(*zip(*dev.pop("eval_loss")), "o-", label="dev loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    other = [(k, v) for k, v in dev.items() if v]
    if other:
        right = ax.twinx()
        for name, values in other:
            right.plot(*zip(*values), "s--", color="tab:green", label=name.removeprefix("eval_"))
        right.set_ylabel(", ".join(k.removeprefix("eval_") for k, _ in other))
        right.legend(loc="center right")
    ax.legend(loc="upper right")
    if accuracy:
        ax.set_title("training loss")
        fig.suptitle(title)
    else:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return Path(png)


def _accuracy_bars(ax: Any, accuracy: Accuracies) -> None:
    """Bars of test accuracy (%) with their 95% intervals, each labelled with its value."""
    labels = list(accuracy)
    values = [100 * accuracy[k][0] for k in labels]
    errors = [[max(0.0, v - 100 * accuracy[k][1][0]) for k, v in zip(labels, values)],  # float noise at 0 and 1
              [max(0.0, 100 * accuracy[k][1][1] - v) for k, v in zip(labels, values)]]
    drawn = ax.bar(labels, values, yerr=errors, capsize=6, color=["tab:gray", "tab:blue"][: len(labels)] or None)
    ax.bar_label(drawn, labels=[f"{v:.0f}%" for v in values], label_type="center", color="white", fontweight="bold")
    ax.set_ylim(0, 100)
    ax.set_ylabel("test accuracy, % (95% interval)")
    ax.set_title("held-out accuracy")
