"""Scores and their uncertainty: accuracy with a 95% Wilson interval per data set, as JSON and Markdown."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Z95 = 1.959963984540054  # two-sided 95% normal quantile
MATH_SETS = {"gsm8k", "svamp", "multiarith", "addsub", "singleeq", "mawps", "aqua"}
# LLM-Adapters' math training files (as `adapterlab data pull` names them): their questions overlap MATH_SETS.
MATH_TRAINING = {"train_math_3k", "math_data", "math_7k", "math_10k", "math_14k", "math_50k"}
# Metadata recorded for the overlap note, not shown among the settings.
NOT_SETTINGS = ("trained_on", "decontaminated_against")


def overlap_note(summary: dict[str, Any]) -> str | None:
    """A note that scores are inflated, only when the adapter was trained on an LLM-Adapters math training file
    and evaluated on a math test set its training data was not decontaminated against."""
    meta = summary.get("metadata", {})
    trained = sorted({Path(f).name for f in meta.get("trained_on") or [] if Path(f).stem in MATH_TRAINING})
    cleaned = {Path(f).stem for f in meta.get("decontaminated_against") or []}
    sets = sorted(set(summary["datasets"]) & MATH_SETS - cleaned)
    if not trained or not sets:
        return None
    return (f"This adapter was trained on {', '.join(trained)} (LLM-Adapters' math training data), whose questions "
            f"overlap {', '.join(sets)}: its scores there are inflated. Train with --decontaminate <test file> to "
            "drop the overlap.")


def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a proportion: sound near 0 and 1 and for small samples, unlike p ± z·se."""
    if total <= 0:
        return (0.0, 1.0)
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def score(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, its 95% interval, the count of generations with no readable answer, and the other mode's accuracy."""
    rows = list(rows)
    n = len(rows)
    correct = sum(bool(r["correct"]) for r in rows)
    low, high = wilson_interval(correct, n)
    result = {
        "n": n, "correct": correct, "accuracy": correct / n if n else None, "ci95": [low, high],
        "no_answer": sum(r["extracted"] is None for r in rows),
    }
    if rows and "alt_correct" in rows[0]:
        result["alt_mode"] = rows[0]["alt_mode"]
        result["alt_accuracy"] = sum(bool(r["alt_correct"]) for r in rows) / n
    return result


def markdown_table(summary: dict[str, Any]) -> str:
    """A Markdown table of the summary: one row per data set, accuracy with its Wilson 95% interval."""
    settings = summary.get("settings", {})
    if settings.get("protocol") == "choice":
        return choice_table(summary)
    mode = settings.get("mode", "default")
    lines = [
        f"| dataset | n | accuracy ({mode} extraction) | 95% CI (Wilson) | no answer | other extraction |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for name, s in summary["datasets"].items():
        accuracy = f"{100 * s['accuracy']:.1f}%" if s["accuracy"] is not None else "-"
        interval = f"{100 * s['ci95'][0]:.1f}-{100 * s['ci95'][1]:.1f}%"
        other = f"{100 * s['alt_accuracy']:.1f}% ({s['alt_mode']})" if "alt_accuracy" in s else "-"
        lines.append(f"| {name} | {s['n']} | {accuracy} | {interval} | {s['no_answer']} | {other} |")
    meta = summary.get("metadata", {})
    shown = {k: v for k, v in {**meta, **settings}.items() if v is not None and k not in NOT_SETTINGS}
    described = ", ".join(f"{k}={v}" for k, v in shown.items())
    lines += ["", f"Settings: {described}."]
    note = overlap_note(summary)
    if note:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def _percent(value: float | None, interval: list[float]) -> tuple[str, str]:
    shown = f"{100 * value:.1f}%" if value is not None else "-"
    return shown, f"{100 * interval[0]:.1f}-{100 * interval[1]:.1f}%"


def choice_table(summary: dict[str, Any]) -> str:
    """The table of a `--protocol choice` run: acc and acc_norm with counts and Wilson 95% intervals."""
    lines = ["| dataset | n | acc | 95% CI | acc_norm | 95% CI |", "|---|---:|---:|---|---:|---|"]
    for name, s in summary["datasets"].items():
        acc, acc_ci = _percent(s["acc"], s["acc_ci95"])
        norm, norm_ci = _percent(s["acc_norm"], s["acc_norm_ci95"])
        lines.append(f"| {name} | {s['n']} | {acc} ({s['acc_correct']}) | {acc_ci} | {norm} ({s['acc_norm_correct']}) "
                     f"| {norm_ci} |")
    settings = summary.get("settings", {})
    described = ", ".join(f"{k}={v!r}" for k, v in {**summary.get("metadata", {}), **settings}.items() if v is not None)
    return "\n".join(lines + ["", f"Settings: {described}."]) + "\n"
