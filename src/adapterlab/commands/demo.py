"""`adapterlab demo`: a small model before and after a few minutes of LoRA training on arithmetic word problems.

    adapterlab demo                      # what `make demo` runs: SmolLM2-135M-Instruct, about 5 minutes on 2 CPU cores
    adapterlab demo --steps 300 --output runs/demo-long
"""

from __future__ import annotations

import argparse

from ..demo import DemoConfig, run_demo

DEFAULTS = DemoConfig()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="evaluate a small model, train a LoRA adapter for a few minutes, evaluate again",
        description="Base model vs. base + LoRA on built-in arithmetic word problems (train and test disjoint): "
                    "prints a before/after table and writes the adapter, predictions and a report.",
    )
    parser.add_argument("--model", default=DEFAULTS.model, help="model spec (default %(default)s, pulled via pip)")
    parser.add_argument("--output", default=DEFAULTS.output, help="output folder, replaced if it holds an earlier "
                                                                  "demo (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output that holds no earlier demo (only a demo's own files are ever replaced)")
    parser.add_argument("--steps", type=int, default=DEFAULTS.steps, help="optimizer steps (default %(default)s)")
    parser.add_argument("--train-minutes", type=float, default=DEFAULTS.train_minutes,
                        help="also stop training after this many minutes; the result then depends on the machine's "
                             "speed (default: no limit, the fixed --steps)")
    parser.add_argument("--train-problems", type=int, default=DEFAULTS.train_problems,
                        help="training problems generated (default %(default)s)")
    parser.add_argument("--test-problems", type=int, default=DEFAULTS.test_problems,
                        help="held-out problems evaluated before and after (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="default %(default)s")
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr, help="peak learning rate (default %(default)s)")
    parser.add_argument("--r", type=int, default=DEFAULTS.r, help="LoRA rank (default %(default)s)")
    parser.add_argument("--cutoff-len", type=int, default=DEFAULTS.cutoff_len,
                        help="maximum tokens per training example (default %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens,
                        help="generation length at evaluation (default %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="problems, data order and adapter init "
                                                                        "(default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = DemoConfig(model=args.model, output=args.output, steps=args.steps, train_minutes=args.train_minutes,
                        train_problems=args.train_problems, test_problems=args.test_problems,
                        batch_size=args.batch_size, lr=args.lr, r=args.r, alpha=2 * args.r,
                        cutoff_len=args.cutoff_len,
                        max_new_tokens=args.max_new_tokens, seed=args.seed, progress=not args.no_progress,
                        overwrite=args.overwrite)
    run_demo(config)
    return 0
