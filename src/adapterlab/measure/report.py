"""Write measured costs as results.json, results.csv, results.md and costs.png; all rendered from the same rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..train.trainable import FULL

# Columns of results.csv, in order; `options` is written as JSON.
COLUMNS = [
    "method", "status", "options", "mergeable", "trainable_params", "total_params", "trainable_percent", "threads",
    "step_time_ms", "peak_memory_mb", "train_memory_mb", "prefill_ms", "decode_ms_per_token",
    "merged_prefill_ms", "merged_decode_ms_per_token", "step_time_vs_full_pct", "train_memory_vs_full_pct",
    "prefill_vs_full_pct", "merged_prefill_vs_full_pct", "decode_vs_full_pct", "merged_decode_vs_full_pct",
    "memory_method", "note",
]
# measured field -> its percentage of full fine-tuning's value
RELATIVE = {
    "step_time_ms": "step_time_vs_full_pct", "train_memory_mb": "train_memory_vs_full_pct",
    "prefill_ms": "prefill_vs_full_pct", "merged_prefill_ms": "merged_prefill_vs_full_pct",
    "decode_ms_per_token": "decode_vs_full_pct", "merged_decode_ms_per_token": "merged_decode_vs_full_pct",
}


def refused_row(method: str, options: dict[str, Any], reason: str) -> dict[str, Any]:
    """The row of a method that refused this model (e.g. the conformer on a causal model): every cost empty, the reason kept."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(method=method, status="refused", options=dict(options), note=reason)
    return row


def measured(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows that hold measurements (not refusals)."""
    return [r for r in rows if r["status"] == "ok"]


def add_relative(rows: list[dict[str, Any]]) -> None:
    """Add each cost as a percentage of full fine-tuning's (None without a `full` row or a value to compare).

    Merged latencies are compared with full FT's (that is, the base model's) unmerged latency.
    """
    full = next((r for r in measured(rows) if r["method"] == FULL), None)
    for row in rows:
        for field, rel in RELATIVE.items():
            reference = full and full[field.removeprefix("merged_")]
            value = row[field]
            row[rel] = round(100 * value / reference, 1) if reference and value is not None else None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _cell(row[c]) for c in COLUMNS})


def _with_pct(value: float | None, pct: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f} ({pct:.0f}%)" if pct is not None else f"{value:,.1f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per method; time and memory cells carry their percentage of full fine-tuning in brackets."""
    lines = [
        "| method | trainable params | % of total | train step ms | peak mem MiB | train mem MiB | "
        "prefill ms | prefill ms merged | decode ms/token | decode ms/token merged |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | {r['status']} (see note) |" + " |" * 8)
            continue
        cells = [
            r["method"], f"{r['trainable_params']:,}", f"{r['trainable_percent']:.2f}",
            _with_pct(r["step_time_ms"], r["step_time_vs_full_pct"]),
            _with_pct(r["peak_memory_mb"], None),
            _with_pct(r["train_memory_mb"], r["train_memory_vs_full_pct"]),
            _with_pct(r["prefill_ms"], r["prefill_vs_full_pct"]),
            _with_pct(r["merged_prefill_ms"], r["merged_prefill_vs_full_pct"]),
            _with_pct(r["decode_ms_per_token"], r["decode_vs_full_pct"]),
            _with_pct(r["merged_decode_ms_per_token"], r["merged_decode_vs_full_pct"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r['method']}: {r['note']}" for r in rows if r["note"]]
    return "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")


def markdown_report(summary: dict[str, Any]) -> str:
    """results.md: the table, then what was measured and how, so the numbers can be read without the code."""
    s, env = summary["settings"], summary["environment"]
    memory = sorted({r["memory_method"] for r in measured(summary["results"])})
    return "\n".join([
        f"# Adapter costs on {summary['model']}", "",
        markdown_table(summary["results"]),
        "Percentages in brackets are of full fine-tuning (merged latency: of the base model, which is full FT's). "
        "Train mem = peak during the training steps minus what was held before them (gradients, optimizer state, "
        "activations); peak mem includes the weights.", "",
        f"Work: random token batches of {s['micro_batch_size']} x {s['seq_len']} tokens; medians of {s['steps']} "
        f"runs after {s['warmup']} warm-up runs; decode = greedy generate with the KV cache, "
        f"({s['decode_tokens']} + 1 tokens - 1 token) / {s['decode_tokens']}. "
        f"Each method ran {'in its own fresh process' if summary['isolated'] else 'in one shared process'}.", "",
        f"Memory: {'; '.join(memory)}.", "",
        f"Device: {env['device']} ({env['device_name']}), torch {env['torch']}, transformers {env['transformers']}, "
        f"dtype {summary['dtype']}, {env['threads']} threads; measured {summary['date']}.", "",
        *(["![costs](costs.png)", ""] if measured(summary["results"]) else []),
    ])


def plot_costs(rows: list[dict[str, Any]], png: Path, title: str) -> None:
    """Bars per method: trainable parameters (log scale), training step time, and prefill latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = measured(rows)
    if not rows:
        return
    names = [r["method"] for r in rows]
    x = range(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    axes[0].bar(x, [max(r["trainable_params"], 1) for r in rows], color="tab:blue")
    axes[0].set_yscale("log")
    axes[0].set_title("trainable parameters")
    axes[1].bar(x, [r["step_time_ms"] for r in rows], color="tab:orange")
    axes[1].set_title("training step time (ms)")
    width = 0.4
    axes[2].bar([i - width / 2 for i in x], [r["prefill_ms"] for r in rows], width, label="unmerged")
    axes[2].bar([i + width / 2 for i in x], [r["merged_prefill_ms"] or 0 for r in rows], width, label="merged")
    axes[2].set_title("prefill latency (ms)")
    axes[2].legend()
    for ax in axes:
        ax.set_xticks(list(x), names, rotation=30, ha="right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def write_outputs(summary: dict[str, Any], output: Path) -> dict[str, Path]:
    """Write the four result files into `output`; returns their paths by kind."""
    output.mkdir(parents=True, exist_ok=True)
    paths = {kind: output / name for kind, name in
             (("json", "results.json"), ("csv", "results.csv"), ("markdown", "results.md"), ("plot", "costs.png"))}
    paths["json"].write_text(json.dumps(summary, indent=2) + "\n")
    write_csv(summary["results"], paths["csv"])
    paths["markdown"].write_text(markdown_report(summary))
    title = f"Adapter costs on {summary['model']} ({summary['environment']['device']})"
    plot_costs(summary["results"], paths["plot"], title)
    if not measured(summary["results"]):
        paths.pop("plot")
    return paths
