"""GSM8K generation speed of base SmolLM2-135M: fixed batches (a batch decodes until its longest row stops) against
continuous batching (a finished row leaves at once and the next item takes its place), at the default settings.

The two paths run on the same chunks of the first --n items, interleaved chunk by chunk so that a change in the
shared machine's load falls on both; their texts are compared item by item. With --full the continuous path then
runs every item. GSM8K's test questions overlap the math training data: this is a speed figure of the base model.

    PYTHONPATH=src OMP_NUM_THREADS=2 .venv/bin/python benchmarks/eval_gsm8k.py --n 96 --chunk 32 --full
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from adapterlab.data.templates import build_prompt
from adapterlab.evaluate import extract_answer, is_correct, load_dataset
from adapterlab.evaluate.generate import generate
from adapterlab.models import load_model


def timed(fn: Any) -> tuple[list[str], float]:
    """The texts `fn` returns and the seconds it took."""
    start = time.perf_counter()
    texts = fn()
    return texts, time.perf_counter() - start


def accuracy(texts: list[str], records: list[dict[str, Any]]) -> float:
    """Share of items whose answer (default extraction) is right."""
    right = sum(is_correct(extract_answer(t, "number"), r["answer"], "number") for t, r in zip(texts, records))
    return round(right / max(len(texts), 1), 4)


def main() -> None:
    """Time both paths on the first --n items, compare their texts, and with --full run every item continuously."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=os.environ.get("ADAPTERLAB_DATA", "../shared/datasets") + "/math")
    parser.add_argument("--n", type=int, default=96, help="items timed on both paths")
    parser.add_argument("--chunk", type=int, default=32, help="items per interleaved chunk")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batch-tokens", type=int, help="token budget of the continuous path (default: none)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--full", action="store_true", help="then run all items with the continuous path")
    parser.add_argument("--output", default="benchmarks/results/eval_gsm8k.json")
    args = parser.parse_args()

    model, tokenizer = load_model(args.model, dtype="float32", device="cpu", log=lambda *_: None)
    data = load_dataset("gsm8k", [args.data_dir])
    records = data.records
    prompts = [build_prompt(r, "alpaca", tokenizer) for r in records]
    common = {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens}
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "args": vars(args),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
                   f"threads, torch {torch.__version__}"}
    seconds = {"fixed": 0.0, "continuous": 0.0}
    texts: dict[str, list[str]] = {"fixed": [], "continuous": []}
    for start in range(0, args.n, args.chunk):
        chunk = prompts[start : min(start + args.chunk, args.n)]
        for name, options in (("fixed", {"continuous": False}), ("continuous", {"batch_tokens": args.batch_tokens})):
            out, took = timed(lambda chunk=chunk, options=options: generate(model, tokenizer, chunk, **common, **options))
            texts[name] += out
            seconds[name] += took
            print(f"items {start}-{start + len(chunk)} {name}: {took:.1f} s", flush=True)
    n = len(texts["fixed"])
    for name in seconds:
        result[name] = {"items": n, "seconds": round(seconds[name], 1),
                        "seconds_per_item": round(seconds[name] / n, 3), "items_per_second": round(n / seconds[name], 3),
                        "extrapolated_1319_minutes": round(seconds[name] / n * len(records) / 60, 1),
                        "accuracy": accuracy(texts[name], records)}
    result["speedup"] = round(seconds["fixed"] / seconds["continuous"], 2)
    result["same_text"] = sum(a == b for a, b in zip(texts["fixed"], texts["continuous"]))
    result["generated_tokens_mean"] = round(sum(len(tokenizer(t)["input_ids"]) for t in texts["continuous"]) / n, 1)
    print(json.dumps(result, indent=2), flush=True)
    if args.full:
        out, took = timed(lambda: generate(model, tokenizer, prompts, **common, batch_tokens=args.batch_tokens))
        result["continuous_all"] = {"items": len(out), "seconds": round(took, 1), "minutes": round(took / 60, 1),
                                    "items_per_second": round(len(out) / took, 3), "accuracy": accuracy(out, records),
                                    "same_text_as_timed_part": sum(a == b for a, b in zip(out, texts["continuous"]))}
        print(json.dumps(result["continuous_all"]), flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
