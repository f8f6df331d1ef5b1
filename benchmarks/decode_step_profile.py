"""What one decode step of SmolLM2-135M costs on this CPU, by rows in the batch and dtype, and where it goes.

Issue #21 asks for all 1,319 GSM8K items in under 10 minutes; this says what a step costs, so what that needs. For each
dtype (float32, bfloat16) and row count R, a cache of R rows x --context columns (random tokens: a decode step's cost
does not depend on the values) is prefilled, then --steps single-token steps are timed (the model's own forward with
the padding mask, position ids and `logits_to_keep=1`, as `evaluate/scheduler.py` calls it); the settings alternate
within each repetition and the median over --reps goes out, with tokens/s = R / step time. Then one profile of a few
float32 steps at --profile-rows (torch.profiler, operators by self CPU time) shows what the step is made of.

    flock /tmp/adapterlab-heavy.lock env PYTHONPATH=src OMP_NUM_THREADS=2 python benchmarks/decode_step_profile.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from adapterlab.models import load_model


def prefilled(model: Any, rows: int, context: int) -> tuple[DynamicCache, torch.Tensor]:
    """A cache of `rows` x `context` random tokens and its all-ones mask."""
    ids = torch.randint(100, 20000, (rows, context), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache()
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache, use_cache=True,
              logits_to_keep=1)
    return cache, torch.ones_like(ids)


def step_seconds(model: Any, rows: int, context: int, steps: int) -> float:
    """Mean seconds of one decode step over `steps` steps after one warm-up, from a fresh prefilled cache."""
    cache, mask = prefilled(model, rows, context)
    token = torch.full((rows, 1), 42)
    times = []
    with torch.inference_mode():
        for i in range(steps + 1):
            mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
            start = time.perf_counter()
            model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True,
                  position_ids=torch.full((rows, 1), context + i), logits_to_keep=1)
            if i:
                times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def profile(model: Any, rows: int, context: int, top: int = 12) -> list[dict[str, Any]]:
    """The operators of 3 decode steps at `rows` rows by self CPU time: name, share of the total, calls."""
    cache, mask = prefilled(model, rows, context)
    token = torch.full((rows, 1), 42)
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for i in range(3):
            mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
            model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True,
                  position_ids=torch.full((rows, 1), context + i), logits_to_keep=1)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "share": round(e.self_cpu_time_total / total, 3), "calls": e.count,
             "ms_per_step": round(e.self_cpu_time_total / 3 / 1000, 2)} for e in events[:top]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", default="1,16,32,64", help="comma-separated row counts")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--context", type=int, default=224, help="cached columns (GSM8K prompt + half an answer)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--profile-rows", type=int, default=16)
    parser.add_argument("--output", default="benchmarks/results/decode_step_profile.json")
    args = parser.parse_args()
    models = {d: load_model(args.model, dtype=d, device="cpu", log=lambda *_: None)[0].eval()
              for d in args.dtypes.split(",")}
    rows = [int(r) for r in args.rows.split(",")]
    times: dict[str, list[float]] = {f"{d}/{r}": [] for d in models for r in rows}
    for rep in range(args.reps):
        for key in times if rep % 2 == 0 else reversed(list(times)):
            dtype, r = key.split("/")
            times[key].append(step_seconds(models[dtype], int(r), args.context, args.steps))
            print(f"rep {rep} {key}: {times[key][-1] * 1000:.1f} ms/step", flush=True)
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "args": vars(args),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                   f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "steps": {k: {"ms_per_step": round(statistics.median(v) * 1000, 1),
                      "min_max_ms": [round(min(v) * 1000, 1), round(max(v) * 1000, 1)],
                      "tokens_per_s": round(int(k.split("/")[1]) / statistics.median(v), 1)} for k, v in times.items()},
    }
    result["profile_float32"] = profile(models.get("float32", next(iter(models.values()))), args.profile_rows,
                                        args.context)
    print(json.dumps(result, indent=2), flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
