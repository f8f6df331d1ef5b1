"""`adapterlab measure`: what each adapter costs against full fine-tuning on your model and hardware.

    adapterlab measure --model smollm2-135m --methods full,lora,ia3 --seq-len 256 --micro-batch-size 4 \\
        --option lora.r=32 --option lora.targets=q,k,v,up,down --output measure/smol
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from ..errors import UsageError
from ..measure import markdown_table, measure
from .train import parse_items


def parse_options(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """`METHOD.KEY=VALUE` strings -> {method: {key: value}}; values are YAML, lists may be comma-separated."""
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        method, dot, key = target.partition(".")
        if not sep or not dot or not method or not key:
            raise UsageError(f"--option {item!r} must look like METHOD.KEY=VALUE, e.g. lora.r=32.")
        options.setdefault(method.strip(), {})[key.strip().replace("-", "_")] = parse_items(value.strip())
    return options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "measure", help="measure trainable parameters, step time, memory and latency of adapters vs full FT",
        description="Attach each method to a fresh copy of the model and measure, on random token batches: "
                    "trainable parameters, training step time (forward+backward+AdamW), peak memory, and "
                    "prefill / per-token decode latency unmerged and merged. Writes results.json, results.csv, "
                    "results.md and costs.png.",
    )
    parser.add_argument("--model", required=True, help="model spec: known short name, folder, .gguf or hub id")
    parser.add_argument("--methods", default="full,lora", help="comma-separated; 'full' is full fine-tuning "
                                                               "(default %(default)s)")
    parser.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="an adapter option, repeatable: --option lora.r=32 --option lora.targets=q,v")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default %(default)s)")
    parser.add_argument("--micro-batch-size", type=int, default=4, help="sequences per batch (default %(default)s)")
    parser.add_argument("--steps", type=int, default=5, help="timed repetitions, median reported (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first (default %(default)s)")
    parser.add_argument("--decode-tokens", type=int, default=8, help="greedy tokens timed for the per-token decode "
                                                                     "latency (default %(default)s)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--dtype", default="float32", help="model dtype (default %(default)s)")
    parser.add_argument("--task", default="causal-lm", choices=["causal-lm", "seq-cls"], help="default %(default)s")
    parser.add_argument("--no-isolate", action="store_true", help="run every method in this process (faster; "
                                                                  "peak memory may then be understated)")
    parser.add_argument("--output", required=True, help="folder for results.json/.csv/.md and costs.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = measure(args.model, methods, options=parse_options(args.option), seq_len=args.seq_len,
                   micro_batch_size=args.micro_batch_size, steps=args.steps, warmup=args.warmup,
                   decode_tokens=args.decode_tokens, device=args.device, dtype=args.dtype, task=args.task,
                   isolate=not args.no_isolate, threads=args.threads, output=args.output,
                   progress=not args.no_progress)
    print(markdown_table(rows))
    print(f"Written to {args.output}: results.json, results.csv, results.md, costs.png")
    return 0
