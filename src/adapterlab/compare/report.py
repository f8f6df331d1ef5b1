"""A comparison's outputs: results.json (everything), results.csv (one row per run), report.md (tables and
verdicts) and curves.png (dev score against training time per task: the plot people look at first)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..files import write_atomic
from .latency_summary import ratio_cell
from ..train.trainable import FULL

MULTITASK = "multitask-full"


def _fmt(stat: dict[str, Any], scale: float = 1.0, digits: int = 1) -> str:
    if stat["mean"] is None:
        return f"not reached (0/{stat['of']})"
    text = f"{scale * stat['mean']:.{digits}f} ± {scale * stat['sd']:.{digits}f}"
    return text + (f" ({stat['n']}/{stat['of']})" if stat["n"] < stat["of"] else "")


def _ms(latency: dict[str, Any], kind: str) -> str:
    """Milliseconds, with the median and range of the per-repeat ratios to full fine-tuning's model where timed."""
    ms, ratio = latency.get(f"{kind}_ms"), latency.get(f"{kind}_vs_full")
    return "" if ms is None else f"{ms:.1f}" + (f" ({ratio_cell(ratio)})" if ratio else "")


def baseline_lines(result: dict[str, Any], task: str) -> list[str]:
    """Under a task's heading: its majority-class and chance scores, and "no signal" where full fine-tuning did
    not beat the majority class (no verdict is drawn from that task)."""
    b = result.get("baselines", {}).get(task)
    if not b:
        return []
    line = (f"Without learning: majority class ({b['majority_label']!r} from training) {100 * b['majority']:.1f}, "
            f"chance {100 * b['chance']:.1f} ({b['dev_records']} dev records).")
    if b["signal"] is False:
        line += (f" **No signal**: full fine-tuning's best {100 * b['full_best']:.1f} does not beat the majority class "
                 f"by more than {100 * b['margin']:.1f} points (two standard errors), so no verdict is drawn from "
                 "this task.")
    return [line, ""]


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
        signal = result.get("baselines", {}).get(task, {}).get("signal")
        lines += [f"## {task}" + (f" (targets: {marks})" if marks else "") + (" - no signal" if signal is False
                                                                             else ""), "", *baseline_lines(result, task),
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
    lines += multitask_sections(result)
    if result["latency"]:
        sizes = sorted({k for v in result["latency"].values() for k in v}, key=lambda k: int(k[1:]))
        lines += ["## Serving latency (ms per batch, median over tasks of each task's median over repeats; in brackets "
                  "the ratio to full fine-tuning's model timed interleaved with it on the same dev batches: median, "
                  "then min-max over every task's repeats)", "",
                  "| method | " + " | ".join(f"batch {s[1:]} unmerged | batch {s[1:]} merged" for s in sizes) + " |",
                  "|---|" + "---|---|" * len(sizes)]
        for method, lat in result["latency"].items():
            cells = []
            for s in sizes:
                v = lat.get(s, {})
                cells += [_ms(v, "unmerged"), _ms(v, "merged") if v.get("merged_ms") is not None else "n/a"]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if result.get("serving"):
        lines += serving_section(result["serving"])
    if result.get("refused"):
        lines += ["## Runs refused", ""] + [f"- {r['method']} on {r['task']} (seed {r['seed']}): {r['refused']}"
                                            for r in result["refused"]] + [""]
    lines += ["## Verdicts (generated from the numbers above)", ""]
    lines += [f"- **{m}**: {v}" for m, v in result["verdicts"].items()]
    return "\n".join(lines) + "\n"


def serving_section(serving: list[dict[str, Any]]) -> list[str]:
    """The table of serving every task at once: per adapter method its adapters switched per batch and in mixed
    batches, and full fine-tuning's T models."""
    lines = ["## Serving every task at once (the same dev examples of every task, one stream)", "",
             "Switched: per-task batches in a mixed order, the task's adapter made active before each batch. Mixed: "
             "the same examples batched regardless of task, one base forward per batch with each row's own adapter, "
             "then each task's head on its rows (tasks whose inputs cannot share a tensor, such as sequence "
             "classification beside multiple choice, are batched apart). Full: the per-task batches, each to its task's fine-tuned model.", "",
             "| method | served as | examples/s | batches | adapter switches | parameter MB held |",
             "|---|---|---|---|---|---|"]
    for row in serving:
        if "refused" in row:
            lines.append(f"| {row['method']} | | n/a: {row['refused']} | | | |")
            continue
        if row["method"] == FULL:
            lines.append(f"| {FULL} | {row['tasks']} full models | {row['examples_per_s']:.1f} | {row['batches']} | "
                         f"n/a | {row['parameter_mb']:.1f} |")
            continue
        lines.append(f"| {row['method']} | switched per batch | {row['examples_per_s']:.1f} | {row['batches']} | "
                     f"{row['switches']} | {row['parameter_mb']:.1f} |")
        mixed = row.get("mixed")
        if mixed is None:  # a row written before mixed batches were measured
            continue
        if "refused" in mixed:
            lines.append(f"| {row['method']} | mixed batches | n/a: {mixed['refused']} | | | |")
        else:
            apart = mixed.get("input_kinds", 1)
            kinds = f", {apart} input kinds batched apart" if apart > 1 else ""
            lines.append(f"| {row['method']} | mixed batches ({mixed['tasks_per_batch']:.1f} tasks per batch{kinds}) | "
                         f"{mixed['examples_per_s']:.1f} | {mixed['batches']} | none (an adapter per row) | "
                         f"{row['parameter_mb']:.1f} |")
    return lines + [""]


def multitask_sections(result: dict[str, Any]) -> list[str]:
    """What only multi-task runs need said: their shared clock and storage, time until every task reached each
    mark per method, and the extension experiment (adding a task) beside the adapters trained on that task."""
    names, records = result["target_names"], result["records"]
    shared = [r for r in records if r.get("shared_run") and not r.get("extension")]
    lines: list[str] = []
    if shared:
        count = len(shared[0]["shared_run"]["tasks"])
        lines += [f"**{shared[0]['method']}**: one run trains one encoder with one head per task and serves all "
                  f"{count} tasks, so its times are on that run's one shared clock (the same seconds count for every "
                  f"task); its trainable count is the whole multi-task model, and its bytes stored per task are the "
                  f"shared encoder divided by {count} plus the task's head. Serving it costs what full fine-tuning's "
                  "model does (the same encoder and a head per task), so it has no latency row of its own.", ""]
    if result.get("all_tasks") and shared:
        lines += ["## All tasks (training seconds until every task reached the mark)", "",
                  "A run that trains all tasks: its latest task on its one clock. One run per task: the sum over the "
                  "runs.", "", "| method | runs | s until all at best | " + " | ".join(f"s until all at {n}" for n in names)
                  + " |", "|---|---|---|" + "---|" * len(names)]
        for e in result["all_tasks"]:
            lines.append(f"| {e['method']} | {'one for all tasks' if e['one_run_for_all'] else 'one per task'} | "
                         f"{_fmt(e['time_to_best_s'])} | " + " | ".join(_fmt(e[f'time_to_{n}_s']) for n in names) + " |")
        lines.append("")
    added = [r for r in records if r.get("extension")]
    if added:
        ext = added[0]["extension"]
        task, method = ext["added_task"], added[0]["method"]
        lines += [f"## Adding a task: {task}", "",
                  f"**{method}**: a multi-task model trained on {', '.join(ext['base_tasks'])} gains a fresh {task} head "
                  f"and trains on {task}'s training set plus {100 * ext['replay']:g}% of each old task's (replay, "
                  f"as Mundra et al.'s add_task.py); only this step is timed. The adapters train on {task} alone "
                  "beside a frozen base.", "",
                  "| method | best dev | s to best | " + " | ".join(f"s to {n}" for n in names) + " | stored per task |",
                  "|---|---|---|" + "---|" * len(names) + "---|"]
        for s in (s for s in result["summary"] if s["task"] == task and s["method"] not in (FULL, MULTITASK)):
            lines.append(f"| {s['method']} | {_fmt(s['best_dev'], 100)} | {_fmt(s['time_to_best_s'])} | "
                         + " | ".join(_fmt(s[f'time_to_{n}_s']) for n in names) + f" | {s['stored_bytes'] / 2**20:.2f} MB |")
        lines += ["", "Old tasks' dev score (%) before and after adding it, per seed:", ""]
        for r in added:
            cells = [f"{t} {100 * v['before']:.1f} -> {100 * v['after']:.1f}"
                     for t, v in r["extension"]["old_tasks_dev"].items() if v["before"] is not None and v["after"] is not None]
            lines.append(f"- seed {r['seed']}: " + "; ".join(cells))
        lines.append("")
    return lines


def csv_text(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def curves_figure(result: dict[str, Any]) -> Any:
    """One panel per task: each run's dev score against training seconds, coloured by method; full's targets
    dashed and the majority class dotted, each labelled; the score axis runs from below chance to 100, so that a
    flat line stays flat."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in result["records"]))
    methods = list(dict.fromkeys(r["method"] for r in result["records"]))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    first_seed = min(x["seed"] for x in result["records"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        lowest = 100.0
        for r in (r for r in result["records"] if r["task"] == task):
            xs = [p["train_time_s"] for p in r["curve"]]
            ys = [100 * p["score"] for p in r["curve"]]
            lowest = min([lowest, *ys])
            ax.plot(xs, ys, marker=".", color=colours[r["method"]], alpha=0.8,
                    label=r["method"] if r["seed"] == first_seed else None)
        for name, value in result["targets"].get(task, {}).items():
            ax.axhline(100 * value, linestyle="--", color="grey", linewidth=0.8,
                       label=f"{name} of full's best ({100 * value:.1f})")
        baseline = result.get("baselines", {}).get(task)
        if baseline:
            ax.axhline(100 * baseline["majority"], linestyle=":", color="black", linewidth=1.2,
                       label=f"majority class ({100 * baseline['majority']:.1f})")
            lowest = min(lowest, 100 * baseline["chance"])
        title = task + (" (no signal)" if baseline and baseline["signal"] is False else "")
        ax.set(title=title, xlabel="training seconds", ylabel="dev score (%)", ylim=(max(0.0, lowest - 5), 100))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_curves(result: dict[str, Any], path: Path) -> None:
    """curves.png: the curves figure, written atomically."""
    fig = curves_figure(result)  # sets the Agg backend before pyplot is imported
    import matplotlib.pyplot as plt

    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def write_outputs(result: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1) + "\n"))
    write_atomic(folder / "results.csv", lambda tmp: Path(tmp).write_text(csv_text(result["rows"])))
    write_atomic(folder / "report.md", lambda tmp: Path(tmp).write_text(markdown(result)))
    if result["records"]:
        plot_curves(result, folder / "curves.png")
