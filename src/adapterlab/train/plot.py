"""The loss curve of a run (training loss, and dev loss or metric) drawn from its metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from .callbacks import read_log


def plot_metrics(metrics: str | Path, png: str | Path, title: str = "") -> Path:
    """Draw training loss per step (and dev metrics on a second axis) from a JSONL metrics log into `png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(Path(metrics))  # the one tolerant reader of metrics.jsonl (a torn line is dropped, with a warning)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    dev = {k: [(r["step"], r[k]) for r in rows if k in r] for k in {k for r in rows for k in r}
           if k.startswith("eval_") and k not in ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")}
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
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return Path(png)
