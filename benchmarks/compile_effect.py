"""The effect of --compile (torch.compile, inductor) on SmolLM2-135M per method: a training step and greedy decoding,
eager against compiled, interleaved in one process, with the compile time apart.

Training step: the AdapterTrainer's loss for a causal LM with its prompt masked (the LM head at the labelled positions
only, `train/head_loss.py`), backward and an AdamW step, on one fixed batch; the compiled model is torch.compile(model),
as the HF Trainer's torch_compile makes it. Decoding: `evaluate.generate` (continuous batches) on fixed prompts, the
compiled copy made by `compile_for_eval` as `eval --compile` does; its texts are compared with eager's. After the
compiling warm-up (timed: compile time) the eager and compiled runs alternate, --reps times each; medians and the
spread (min-max) are reported. Run it alone and on one thread:

    flock /tmp/adapterlab-heavy.lock env PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compile_effect.py
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import adapterlab as al
from adapterlab.core.compiling import compile_for_eval
from adapterlab.evaluate.generate import generate
from adapterlab.models import load_model
from adapterlab.train.head_loss import labelled_positions_loss

OPTIONS: dict[str, dict[str, Any]] = {"lora": {}, "ia3": {}, "pfeiffer": {}, "prefix": {}, "houlsby": {}, "prompt": {},
                                      "bitfit": {}, "none": {}}
PROMPTS = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
           "clips did Natalia sell altogether in April and May?", "What is 12 times 7?",
           "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she "
           "earn?", "Write a short sentence about the sea."]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def summary(seconds: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(seconds), 4), "min_s": round(min(seconds), 4),
            "max_s": round(max(seconds), 4), "n": len(seconds)}


def train_step(model: torch.nn.Module, call: torch.nn.Module, optimizer: torch.optim.Optimizer,
               batch: dict[str, torch.Tensor]) -> float:
    """One step of the AdapterTrainer's causal-LM loss (head at the labelled positions), backward, AdamW."""
    loss, _ = labelled_positions_loss(call, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)


def training(model: torch.nn.Module, batch: dict[str, torch.Tensor], reps: int) -> dict[str, Any]:
    """Eager vs torch.compile(model) training steps, alternating, after one compiling step."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    compiled = torch.compile(model)
    train_step(model, model, optimizer, batch)  # eager warm-up (allocator, optimizer state)
    _, compile_s = timed(lambda: train_step(model, compiled, optimizer, batch))
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(reps):
        for name, call in (("eager", model), ("compiled", compiled)):
            times[name].append(timed(lambda call=call: train_step(model, call, optimizer, batch))[1])
    return {"first_compiled_step_s": round(compile_s, 2), **{k: summary(v) for k, v in times.items()},
            "speedup": round(statistics.median(times["eager"]) / statistics.median(times["compiled"]), 3)}


def decoding(model: torch.nn.Module, tokenizer: Any, reps: int, new_tokens: int, batch_size: int) -> dict[str, Any]:
    """Eager vs compile_for_eval greedy decoding of PROMPTS, alternating, after one compiling run; texts compared."""
    model.eval()
    compiled = compile_for_eval(copy.deepcopy(model))
    options = {"max_new_tokens": new_tokens, "batch_size": batch_size, "stop_strings": ()}
    eager_texts, _ = timed(lambda: generate(model, tokenizer, PROMPTS, **options))
    compiled_texts, compile_s = timed(lambda: generate(compiled, tokenizer, PROMPTS, **options))
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(reps):
        for name, m in (("eager", model), ("compiled", compiled)):
            times[name].append(timed(lambda m=m: generate(m, tokenizer, PROMPTS, **options))[1])
    return {"first_compiled_run_s": round(compile_s, 2), **{k: summary(v) for k, v in times.items()},
            "speedup": round(statistics.median(times["eager"]) / statistics.median(times["compiled"]), 3),
            "same_texts": sum(a == b for a, b in zip(eager_texts, compiled_texts)), "texts": len(PROMPTS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default="lora,ia3,pfeiffer,prefix", help=f"comma-separated, of {list(OPTIONS)}")
    parser.add_argument("--reps", type=int, default=5, help="timed runs of each path after the warm-up")
    parser.add_argument("--batch", type=int, default=4, help="training micro-batch")
    parser.add_argument("--length", type=int, default=128, help="training tokens per row (the first half masked)")
    parser.add_argument("--new-tokens", type=int, default=32, help="decoded tokens per prompt")
    parser.add_argument("--decode-batch", type=int, default=4)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: train, decode")
    parser.add_argument("--output", default="benchmarks/results/compile_effect.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    ids = torch.randint(100, 40000, (args.batch, args.length))
    labels = ids.clone()
    labels[:, : args.length // 2] = -100  # the prompt half carries no loss, as instruction tuning masks it
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "args": vars(args),
        "machine": f"{platform.node()} {platform.machine()} ({platform.processor() or 'cpu'}), {os.cpu_count()} CPUs, "
                   f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}", "methods": {}}
    skip = set(filter(None, args.skip.split(",")))
    for method in args.methods.split(","):
        torch._dynamo.reset()
        model, tokenizer = load_model(args.model, dtype="float32", device="cpu", log=lambda *_: None)
        if method != "none":
            al.attach(model, method, **OPTIONS[method])
        else:
            model.requires_grad_(False)
        row: dict[str, Any] = {}
        if "train" not in skip and method != "none":
            row["train_step"] = training(model, batch, args.reps)
            print(method, "train", row["train_step"], flush=True)
        if "decode" not in skip:
            torch._dynamo.reset()
            row["decode"] = decoding(model, tokenizer, args.reps, args.new_tokens, args.decode_batch)
            print(method, "decode", row["decode"], flush=True)
        result["methods"][method] = row
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")  # after each method: a partial run is kept


if __name__ == "__main__":
    main()
