"""Batch-1 greedy decode of SmolLM2-135M with unmerged adapters: adapterlab's hook path against PEFT's LoRA.

Rows, timed interleaved in one process (the order rotates every repetition), one torch thread: the base model,
adapterlab LoRA unmerged, PEFT LoRA unmerged (the same r=32 on q,k,v,up,down, dropout 0), adapterlab Houlsby
unmerged (its defaults: size 256 after attention and MLP), adapterlab LoRA merged. Each row is one
`generate` call: 64 prompt tokens, then 64 new tokens (EOS ignored). Reported per row: the median over
repetitions of its CPU time (the process's, one thread: what other processes on shared cores disturb least)
divided by the base model's in the same repetition, with the min and max; `wall_*` the same for wall time.

    flock /tmp/adapterlab-heavy.lock env PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python \
        benchmarks/decode_vs_peft.py            # --quick: 3 repetitions of 64 + 16 tokens
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

import adapterlab
from adapterlab.models import load_model

RESULTS = Path(__file__).parent / "results" / "decode_vs_peft.json"
TARGETS = ["q", "k", "v", "up", "down"]
PEFT_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
TEXT = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
        "clips did Natalia sell altogether in April and May? Let us think step by step and write the answer at the "
        "end. Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much "
        "did she earn? Betty is saving money for a new wallet which costs $100.")


def build_rows(base: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The models timed, each its own copy of `base`, in eval mode."""
    from peft import LoraConfig, get_peft_model

    rows = {"base": base}
    rows["adapterlab_lora"] = adapterlab.attach(copy.deepcopy(base), "lora", r=32, alpha=64.0, targets=TARGETS)
    rows["peft_lora"] = get_peft_model(copy.deepcopy(base), LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0,
                                                                      target_modules=PEFT_TARGETS))
    rows["adapterlab_houlsby"] = adapterlab.attach(copy.deepcopy(base), "houlsby")
    merged = adapterlab.attach(copy.deepcopy(base), "lora", r=32, alpha=64.0, targets=TARGETS)
    rows["adapterlab_lora_merged"] = adapterlab.merge(merged)
    for model in rows.values():
        model.eval()
    return rows


def decoder(model: torch.nn.Module, ids: torch.Tensor, new_tokens: int) -> Callable[[], torch.Tensor]:
    """A call that decodes `new_tokens` greedily after `ids` (EOS ignored) and returns the tokens."""

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)

    return run


def decode_rows(quick: bool = False, model: str = "smollm2-135m") -> dict:
    """Time every row interleaved; {row: {"ratio": median CPU-time ratio to base, "min", "max", "cpu_ms", "wall_ratio",
    ...}} and the settings."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    reps, prompt_tokens, new_tokens = (3, 64, 16) if quick else (9, 64, 64)
    base, tokenizer = load_model(model, log=lambda _: None)
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"][:, :prompt_tokens]
    rows = build_rows(base)
    runs = {name: decoder(m, ids, new_tokens) for name, m in rows.items()}
    reference = runs["base"]()
    same = {name: bool(torch.equal(run(), reference)) for name, run in runs.items()}  # also the warm-up
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    walls: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            start, wall = time.process_time(), time.perf_counter()
            runs[name]()
            times[name].append(time.process_time() - start)
            walls[name].append(time.perf_counter() - wall)
    result = {}
    for name in names:
        ratios = [t / b for t, b in zip(times[name], times["base"])]
        wall_ratios = [t / b for t, b in zip(walls[name], walls["base"])]
        result[name] = {"ratio": round(statistics.median(ratios), 4), "min": round(min(ratios), 4),
                        "max": round(max(ratios), 4), "cpu_ms": round(1000 * statistics.median(times[name]), 1),
                        "wall_ratio": round(statistics.median(wall_ratios), 4),
                        "wall_min": round(min(wall_ratios), 4), "wall_max": round(max(wall_ratios), 4),
                        "same_tokens_as_base": same[name]}
    return {"rows": result, "repetitions": reps, "prompt_tokens": int(ids.shape[1]), "new_tokens": new_tokens,
            "model": model, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions of 64 + 16 tokens")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--label", default="", help="a note stored with the result (e.g. 'before')")
    args = parser.parse_args()
    result = decode_rows(args.quick)
    result.update(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), label=args.label,
                  machine=f"{platform.machine()} {platform.processor() or ''}".strip(), torch=torch.__version__)
    for name, row in result["rows"].items():
        print(f"{name:24s} cpu {row['ratio']:.3f}x [{row['min']:.3f}-{row['max']:.3f}] {row['cpu_ms']:.0f} ms, wall "
              f"{row['wall_ratio']:.3f}x [{row['wall_min']:.3f}-{row['wall_max']:.3f}]; same tokens: "
              f"{row['same_tokens_as_base']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
