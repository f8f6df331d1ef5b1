"""From the records' interleaved latency repeats to what the report and verdicts may say: per method and batch
size, the median and range of the per-repeat ratios to full fine-tuning's model timed beside it, and the words
for a ratio, which say "no measurable difference" wherever that range covers 1.

A ratio is formed within one repeat (the two models ran interleaved on the same batches), so machine load and
order cancel; the range over every task's repeats is the noise a difference must clear. Records without repeats
(written before the interleaved timing) give milliseconds but no ratio, hence no latency verdict.
"""

from __future__ import annotations

import statistics
from typing import Any

PAIRS = {"unmerged_vs_full": ("unmerged", "full"), "merged_vs_full": ("merged", "full"),
         "merged_vs_unmerged": ("merged", "unmerged")}


def repeat_ratios(timing: dict[str, Any], pair: tuple[str, str]) -> list[float]:
    """The ratio a/b of each repeat of one task's timing at one batch size ([] where either was not timed)."""
    repeats = timing.get("repeats") or {}
    a, b = repeats.get(pair[0]), repeats.get(pair[1])
    return [x / y for x, y in zip(a, b) if y] if a and b else []


def ratio_stats(ratios: list[float]) -> dict[str, Any] | None:
    """Median, min and max of per-repeat ratios, and how many repeats they come from (None without any)."""
    if not ratios:
        return None
    return {"median": statistics.median(ratios), "low": min(ratios), "high": max(ratios), "repeats": len(ratios)}


def method_latency(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method and batch size: the median over tasks of unmerged and merged ms per batch, and for each pair
    (unmerged or merged against full, merged against unmerged) the ratio stats over every task's repeats pooled
    (each ratio compares two models on the same task's inputs in the same repeat)."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        for size, timing in (r.get("latency") or {}).items():
            row = out.setdefault(r["method"], {}).setdefault(size, {"unmerged": [], "merged": [],
                                                                     **{k: [] for k in PAIRS}})
            for kind in ("unmerged", "merged"):
                if timing.get(f"{kind}_ms") is not None:
                    row[kind].append(timing[f"{kind}_ms"])
            for key, pair in PAIRS.items():
                row[key] += repeat_ratios(timing, pair)
    return {method: {size: {"unmerged_ms": statistics.median(row["unmerged"]) if row["unmerged"] else None,
                            "merged_ms": statistics.median(row["merged"]) if row["merged"] else None,
                            **{key: ratio_stats(row[key]) for key in PAIRS}}
                     for size, row in sizes.items()} for method, sizes in out.items()}


def within_noise(stats: dict[str, Any]) -> bool:
    """Whether the range of the per-repeat ratios covers 1 (no difference the repeats can tell from noise)."""
    return stats["low"] <= 1 <= stats["high"]


def percent_words(stats: dict[str, Any]) -> str:
    """A ratio as a verdict says it: "+11% (+8% to +14% over 10 repeats)", or "no measurable difference (...)"."""
    spread = f"{100 * (stats['low'] - 1):+.0f}% to {100 * (stats['high'] - 1):+.0f}% over {stats['repeats']} repeats"
    if within_noise(stats):
        return f"no measurable difference ({spread})"
    return f"{100 * (stats['median'] - 1):+.0f}% ({spread})"


def ratio_cell(stats: dict[str, Any] | None) -> str:
    """A ratio as a table shows it: "1.11x, 1.08-1.14"; empty without one."""
    return "" if stats is None else f"{stats['median']:.2f}x, {stats['low']:.2f}-{stats['high']:.2f}"
