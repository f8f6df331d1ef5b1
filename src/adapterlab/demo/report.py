"""The demo's outputs for people: the before/after table printed at the end and the Markdown report.

Both are rendered from the demo's summary dict (the one written to summary.json), so they always agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _accuracy(scores: dict[str, Any]) -> str:
    low, high = scores["ci95"]
    return f"{100 * scores['accuracy']:5.1f}% ({scores['correct']}/{scores['n']}, 95% CI {100 * low:.0f}-{100 * high:.0f}%)"


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.2f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.1f} KiB"


def results_table(summary: dict[str, Any]) -> str:
    """A Markdown table of accuracy before and after training, with the adapter's size and training time."""
    train, config = summary["train"], summary["config"]
    adapter = (f"LoRA r={config['r']} on {','.join(config['targets'])}: {train['trainable_parameters']:,} parameters "
               f"({train['trainable_percent']}% of {train['total_parameters']:,}), {_size(summary['adapter_bytes'])}")
    rows = [
        ("base model", _accuracy(summary["before"]), str(summary["before"]["no_answer"]), "-"),
        ("base + LoRA adapter", _accuracy(summary["after"]), str(summary["after"]["no_answer"]),
         f"{train['steps']} steps, {train['wall_time_s']:.0f} s"),
    ]
    lines = [f"| {config['model']} on {summary['before']['n']} held-out arithmetic word problems | accuracy | "
             "no answer | training |", "|---|---|---:|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines) + f"\n\nAdapter: {adapter}.\n"


def _phases(times: dict[str, float]) -> str:
    lines = ["| phase | seconds |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in times.items()]
    return "\n".join(lines) + "\n"


def _number(value: Any) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _examples(test_file: Path, before_file: Path, after_file: Path, count: int = 5) -> str:
    """Up to `count` test problems the adapter turned from wrong to right (else the first ones), side by side."""
    read = lambda path: sorted((json.loads(line) for line in path.read_text().splitlines() if line.strip()),
                               key=lambda row: row["id"])
    questions = [record["instruction"] for record in json.loads(test_file.read_text())]
    pairs = list(zip(read(before_file), read(after_file)))
    fixed = [p for p in pairs if p[1]["correct"] and not p[0]["correct"]] or pairs
    blocks = []
    for old, new in fixed[:count]:
        shown = lambda row: f"{json.dumps(row['generation'][:200], ensure_ascii=False)} -> {_number(row['extracted'])}"
        blocks.append(f"**{questions[old['id']]}** (answer {old['label']})\n\n"
                      f"- base: {shown(old)}\n- with adapter: {shown(new)}\n")
    return "\n".join(blocks)


def demo_markdown(summary: dict[str, Any]) -> str:
    """The report.md of a demo run: results, what was run, phase times, the loss curve and a few examples."""
    config, files = summary["config"], summary["files"]
    settings = ", ".join(f"{k}={v}" for k, v in config.items() if k not in ("output", "progress"))
    return "\n".join([
        "# adapterlab demo: LoRA on arithmetic word problems", "",
        results_table(summary),
        "Test problems are disjoint from the training problems by construction (see `adapterlab.data.arith`). "
        "A generation is right when its answer ('The answer is N', else its last number) equals the worked answer; "
        "intervals are Wilson 95%.", "",
        f"Settings: {settings}. Training ran on {summary['train']['device']}.", "",
        "## Phase times", "", _phases(summary["phase_seconds"]),
        "## Training loss", "", "![training loss](loss.png)", "",
        "## Examples", "", _examples(Path(files["data"]) / "test.json", Path(files["predictions_before"]),
                                        Path(files["predictions_after"])),
        "## Files", "", *[f"- {name}: `{path}`" for name, path in files.items()], "",
    ])
