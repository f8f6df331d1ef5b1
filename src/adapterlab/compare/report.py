"""A comparison's outputs: results.json (everything), results.csv (one row per run), report.md (tables and
verdicts) and curves.png (dev score against training time per task: the plot people look at first)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..files import write_atomic

FULL = "full"


def _fmt(stat: dict[str, Any], scale: float = 1.0, digits: int = 1) -> str:
    if stat["mean"] is None:
        return f"not reached (0/{stat['of']})"
    text = f"{scale * stat['mean']:.{digits}f} ± {scale * stat['sd']:.{digits}f}"
    return text + (f" ({stat['n']}/{stat['of']})" if stat["n"] < stat["of"] else "")


def markdown(result: dict[str, Any]) -> str:
    """The report: settings, per task a table of methods, latency, verdicts."""
    names = result["target_names"]
    lines = [f"# adapterlab compare: {result['settings']['model']}", "",
             f"{len(result['records'])} runs; seeds {result['settings']['seeds']}; times are training seconds to "
             "the first dev evaluation at the mark (evaluation and checkpoint saving excluded); mean ± sd over "
             "seeds, (k/n) where only k of n runs reached it. Targets are fractions of full fine-tuning's mean "
             "best dev score on the task.", ""]
    for task in dict.fromkeys(s["task"] for s in result["summary"]):
        target = result["targets"].get(task, {})
        marks = ", ".join(f"{n} = {100 * v:.1f}" for n, v in target.items())
        lines += [f"## {task}" + (f" (targets: {marks})" if marks else ""), "",
                  "| method | best dev | s to best | steps to best | " + " | ".join(f"s to {n}" for n in names)
                  + " | trainable | stored per task | peak RSS MB |",
                  "|---|---|---|---|" + "---|" * len(names) + "---|---|---|"]
        for s in (s for s in result["summary"] if s["task"] == task):
            lines.append(f"| {s['method']} | {_fmt(s['best_dev'], 100)} | {_fmt(s['time_to_best_s'])} | "
                         f"{_fmt(s['steps_to_best'], digits=0)} | "
                         + " | ".join(_fmt(s[f'time_to_{n}_s']) for n in names)
                         + f" | {s['trainable_parameters']:,} | {s['stored_bytes'] / 2**20:.2f} MB | "
                           f"{_fmt(s['peak_rss_mb'], digits=0)} |")
        lines.append("")
    if result["latency"]:
        sizes = sorted({k for v in result["latency"].values() for k in v}, key=lambda k: int(k[1:]))
        lines += ["## Serving latency (ms per batch, median over tasks and batches of real dev inputs)", "",
                  "| method | " + " | ".join(f"batch {s[1:]} unmerged | batch {s[1:]} merged" for s in sizes) + " |",
                  "|---|" + "---|---|" * len(sizes)]
        for method, lat in result["latency"].items():
            cells = []
            for s in sizes:
                v = lat.get(s, {})
                cells += [f"{v['unmerged_ms']:.1f}" if v.get("unmerged_ms") is not None else "",
                          f"{v['merged_ms']:.1f}" if v.get("merged_ms") is not None else "n/a"]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if result.get("serving"):
        lines += ["## Serving every task at once (a mixed stream of per-task dev batches)", "",
                  "| method | examples/s | batches | adapter switches | parameter MB held |", "|---|---|---|---|---|"]
        for row in result["serving"]:
            if "refused" in row:
                lines.append(f"| {row['method']} | n/a: {row['refused']} | | | |")
            else:
                lines.append(f"| {row['method']} | {row['examples_per_s']:.1f} | {row['batches']} | "
                             f"{row['switches'] if row['method'] != FULL else 'n/a (T models)'} | "
                             f"{row['parameter_mb']:.1f} |")
        lines.append("")
    lines += ["## Verdicts (generated from the numbers above)", ""]
    lines += [f"- **{m}**: {v}" for m, v in result["verdicts"].items()]
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def plot_curves(result: dict[str, Any], path: Path) -> None:
    """One panel per task: each run's dev score against training seconds, coloured by method; targets dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in result["records"]))
    methods = list(dict.fromkeys(r["method"] for r in result["records"]))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in result["records"] if r["task"] == task):
            xs = [p["train_time_s"] for p in r["curve"]]
            ys = [100 * p["score"] for p in r["curve"]]
            ax.plot(xs, ys, marker=".", color=colours[r["method"]], alpha=0.8,
                    label=r["method"] if r["seed"] == min(x["seed"] for x in result["records"]) else None)
        for name, value in result["targets"].get(task, {}).items():
            ax.axhline(100 * value, linestyle="--", color="grey", linewidth=0.8)
            ax.annotate(name, (0, 100 * value), fontsize=7, color="grey")
        ax.set(title=task, xlabel="training seconds", ylabel="dev score (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def write_outputs(result: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1) + "\n"))
    write_atomic(folder / "results.csv", lambda tmp: Path(tmp).write_text(csv_text(result["rows"])))
    write_atomic(folder / "report.md", lambda tmp: Path(tmp).write_text(markdown(result)))
    if result["records"]:
        plot_curves(result, folder / "curves.png")
