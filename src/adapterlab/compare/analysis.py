"""From run records to the comparison's answers: each run's time and steps to its best dev score and to targets
set by full fine-tuning, summaries per method and task over seeds, and a verdict per method in plain words.

A target is a fraction of full fine-tuning's best dev score on the task (the mean over its seeds); a run reaches
it at its first evaluation at or above it. Times are training seconds (evaluation and checkpoint saving left out).
A multi-task run (multitask-full) gives one record per task on its one clock, so beside the per-task times
`all_tasks` says how long each method took until every task reached a mark: the multi-task run's latest task,
against the sum over a single-task method's separate runs.
"""

from __future__ import annotations

import statistics
from typing import Any

from .latency_summary import percent_words
from ..train.trainable import FULL

MULTITASK = "multitask-full"


def best_point(curve: list[dict[str, float]]) -> dict[str, float] | None:
    """The first evaluation with the highest dev score."""
    return max(curve, key=lambda p: p["score"], default=None) if curve else None


def first_reaching(curve: list[dict[str, float]], target: float) -> dict[str, float] | None:
    return next((p for p in curve if p["score"] >= target), None)


def full_targets(records: list[dict[str, Any]], fractions: list[float]) -> dict[str, dict[str, float]]:
    """task -> {fraction label: target score}, from full fine-tuning's mean best dev score per task."""
    targets: dict[str, dict[str, float]] = {}
    for task in sorted({r["task"] for r in records}):
        bests = [best_point(r["curve"])["score"] for r in records
                 if r["task"] == task and r["method"] == FULL and r["curve"]]
        if bests:
            reference = statistics.mean(bests)
            targets[task] = {label(f): f * reference for f in fractions}
    return targets


def label(fraction: float) -> str:
    return f"{round(100 * fraction, 1):g}%"


def per_run(records: list[dict[str, Any]], targets: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """One flat row per run: best dev score, time/steps to it, and time/steps to each target (None: not reached)."""
    rows = []
    for r in records:
        best = best_point(r["curve"])
        row = {"method": r["method"], "task": r["task"], "seed": r["seed"],
               "best_dev": best["score"] if best else None,
               "time_to_best_s": best["train_time_s"] if best else None, "steps_to_best": best["step"] if best else None,
               "steps": r["steps"], "train_tokens": r.get("train_tokens"),
               "tasks_in_run": len(r["shared_run"]["tasks"]) if r.get("shared_run") else 1,
               "trainable_parameters": r["trainable_parameters"], "stored_bytes": r["stored_bytes"],
               "peak_rss_mb": r["peak_rss_mb"], "peak_cuda_mb": r.get("peak_cuda_mb")}
        for name, target in targets.get(r["task"], {}).items():
            hit = first_reaching(r["curve"], target)
            row[f"time_to_{name}_s"] = hit["train_time_s"] if hit else None
            row[f"steps_to_{name}"] = hit["step"] if hit else None
        rows.append(row)
    return rows


def _stats(values: list[float | None]) -> dict[str, Any]:
    got = [v for v in values if v is not None]
    return {"mean": statistics.mean(got) if got else None, "sd": statistics.stdev(got) if len(got) > 1 else 0.0,
            "n": len(got), "of": len(values)}


def summarise(rows: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Per method and task: mean, sd and count (reached / runs) of best dev and of each time-to-target."""
    out = []
    keys = ["best_dev", "time_to_best_s", "steps_to_best", *[f"time_to_{n}_s" for n in names],
            *[f"steps_to_{n}" for n in names], "peak_rss_mb"]
    for method in dict.fromkeys(r["method"] for r in rows):
        for task in dict.fromkeys(r["task"] for r in rows):
            mine = [r for r in rows if r["method"] == method and r["task"] == task]
            if mine:
                out.append({"method": method, "task": task, "trainable_parameters": mine[0]["trainable_parameters"],
                            "stored_bytes": mine[0]["stored_bytes"],
                            **{k: _stats([r.get(k) for r in mine]) for k in keys}})
    return out


def all_tasks(rows: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Per method covering every task: training seconds until all tasks reached their best and each target,
    per seed (a run that trains all tasks: its latest task on its one clock; one run per task: the sum of the
    runs' times; None where a task never got there), then mean and sd over seeds."""
    tasks = {r["task"] for r in rows}
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        if len(tasks) < 2 or {r["task"] for r in mine} != tasks:
            continue
        shared = mine[0]["tasks_in_run"] > 1
        entry: dict[str, Any] = {"method": method, "one_run_for_all": shared}
        for key in ["time_to_best_s", *[f"time_to_{n}_s" for n in names]]:
            per_seed = []
            for seed in dict.fromkeys(r["seed"] for r in mine):
                values = [r.get(key) for r in mine if r["seed"] == seed]
                complete = None not in values and len(values) == len(tasks)
                per_seed.append((max(values) if shared else sum(values)) if complete else None)
            entry[key] = _stats(per_seed)
        out.append(entry)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def verdicts(summary: list[dict[str, Any]], latency: dict[str, dict[str, Any]], names: list[str],
             every_task: list[dict[str, Any]] | None = None, serving: list[dict[str, Any]] | None = None,
             without: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """A sentence or two per method, built only from the numbers: score against full, time to the first target
    against full (and, for a run that trains all tasks at once, until every task reached it), serving latency
    against full (within the spread of its interleaved repeats: no measurable difference), throughput serving
    every task, storage per task. Tasks in `without` (full fine-tuning never beat the majority class there)
    give no score or time verdict."""
    joint = {e["method"]: e for e in every_task or []}
    served = {row["method"]: row for row in serving or [] if "examples_per_s" in row}
    full = {s["task"]: s for s in summary if s["method"] == FULL}
    text = {}
    for method in dict.fromkeys(s["method"] for s in summary):
        if method == FULL:
            continue
        every = [s for s in summary if s["method"] == method]
        mine = [s for s in every if s["task"] not in without]
        parts = learning_parts(mine, full, names)
        if without and any(s["task"] in without for s in every):
            skipped = sorted({s["task"] for s in every if s["task"] in without})
            parts.append(f"no verdict from {', '.join(skipped)} (no signal: full fine-tuning did not beat the "
                         "majority class)")
        for name in names[:1]:
            key = f"time_to_{name}_s"
            mine_all, full_all = joint.get(method, {}).get(key), joint.get(FULL, {}).get(key)
            if mine_all and mine_all["mean"] is not None and joint[method]["one_run_for_all"] and not without:
                words = (f"one run serves all {len(every)} tasks: every task reached {name} after "
                         f"{mine_all['mean']:.3g} s of its shared clock")
                if full_all and full_all["mean"]:
                    words += f", {mine_all['mean'] / full_all['mean']:.2f}x the sum over full's {len(every)} runs"
                parts.append(words)
        for size, lat in sorted(latency.get(method, {}).items(), key=lambda item: int(item[0][1:])):
            if lat.get("unmerged_vs_full"):
                merged = lat.get("merged_vs_full")
                parts.append(f"latency at batch {size[1:]} against full's model timed interleaved: unmerged "
                             f"{percent_words(lat['unmerged_vs_full'])}, "
                             + (f"merged {percent_words(merged)}" if merged else "cannot merge"))
        if method in served and FULL in served:
            parts.append(serving_words(served[method], served[FULL]))
        stored = [_ratio(s["stored_bytes"], full[s["task"]]["stored_bytes"]) for s in every if s["task"] in full]
        stored = [r for r in stored if r is not None]
        if stored:
            parts.append(f"stores {100 * statistics.median(stored):.2g}% of full's bytes per task")
        text[method] = "; ".join(parts) + "." if parts else "no comparable numbers (was full fine-tuning run?)."
    return text


def serving_words(mine: dict[str, Any], full: dict[str, Any]) -> str:
    """The verdict's words on serving every task from one base, switched per batch and (where measured) in mixed
    batches, against the T full models."""
    words = (f"serving all {mine['tasks']} tasks from one base: "
             f"{_ratio(mine['examples_per_s'], full['examples_per_s']):.2f}x the throughput of {full['tasks']} full "
             f"models switched per batch")
    mixed = mine.get("mixed") or {}
    if "examples_per_s" in mixed:
        words += f", {_ratio(mixed['examples_per_s'], full['examples_per_s']):.2f}x in mixed batches"
    elif "refused" in mixed:
        words += " (no mixed batches: " + mixed["refused"] + ")"
    return words + f", in {_ratio(mine['parameter_mb'], full['parameter_mb']):.2f}x their parameter memory"


def learning_parts(mine: list[dict[str, Any]], full: dict[str, dict[str, Any]], names: list[str]) -> list[str]:
    """The verdict's words on learning: best dev score against full, and time to full's first target."""
    parts = []
    gaps = [100 * (s["best_dev"]["mean"] - full[s["task"]]["best_dev"]["mean"]) for s in mine
            if s["task"] in full and s["best_dev"]["mean"] is not None and full[s["task"]]["best_dev"]["mean"]]
    if gaps:
        parts.append(f"best dev score {statistics.median(gaps):+.1f} points against full fine-tuning "
                     f"(median over {len(gaps)} task(s))")
    for name in names[:1] if mine else []:
        key = f"time_to_{name}_s"
        reached = [s for s in mine if s[key]["n"]]
        ratios = [_ratio(s[key]["mean"], full[s["task"]][key]["mean"]) for s in reached if s["task"] in full]
        ratios = [r for r in ratios if r is not None]
        runs, hits = sum(s[key]["of"] for s in mine), sum(s[key]["n"] for s in mine)
        if ratios:
            median = statistics.median(ratios)
            pace = "faster than" if median < 0.95 else "slower than" if median > 1.05 else "as fast as"
            parts.append(f"reached {name} of full's score in {hits}/{runs} runs, {median:.2f}x full's training "
                         f"time when it did ({pace} full)")
        else:
            parts.append(f"reached {name} of full's score in {hits}/{runs} runs")
    return parts
