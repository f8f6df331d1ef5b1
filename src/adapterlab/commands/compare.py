"""`adapterlab compare`: adapters against full fine-tuning on real tasks, trained to early stopping over seeds.

    adapterlab compare --model minilm-l6 --tasks sst2,boolq --methods full,lora,pfeiffer,houlsby \\
        --seeds 3 --max-train-samples 2000 --max-steps 300 --eval-steps 25 --output compare/minilm
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..compare import compare
from ..compare.multitask import REPLAY
from ..errors import UsageError
from .measure import parse_options


def parse_lr(items: list[str]) -> dict[str, float] | float | None:
    """`--lr 1e-4` (every method) or `--lr full=3e-5 --lr lora=1e-3` (per method)."""
    per_method: dict[str, float] = {}
    for item in items:
        method, sep, value = item.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            raise UsageError(f"--lr {item!r} must be a number or METHOD=NUMBER, e.g. --lr lora=1e-3.") from None
        if number <= 0:
            raise UsageError(f"--lr {item!r} must be positive.")
        if not sep:
            if len(items) > 1:
                raise UsageError("--lr: give one plain value for every method, or METHOD=VALUE items, not both.")
            return number
        per_method[method.strip()] = number
    return per_method or None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="adapters vs full fine-tuning on real tasks: time to target, memory, storage, latency",
        description="Train each method on each task for several seeds with dev evaluation every --eval-steps "
                    "and early stopping (--patience); record training time and steps to the best dev score and "
                    "to targets set by full fine-tuning (fractions of its best), peak memory, trainable "
                    "parameters, bytes stored per task, and serving latency on real dev inputs at batch 1 and 32 "
                    "unmerged and merged. Writes results.json, results.csv, report.md (with verdicts) and "
                    "curves.png, rewritten after every run.",
        epilog="A small first run (one task, one seed, two methods, 60 steps of a small model on CPU): "
               "adapterlab data pull boolq; adapterlab compare --model minilm-l6 --tasks boolq --methods full,lora "
               "--seeds 1 --max-train-samples 500 --max-eval-samples 200 --max-steps 60 --eval-steps 20 "
               "--output compare/first. Then widen --tasks, --methods, --seeds and --max-steps.",
    )
    parser.add_argument("--model", required=True, help="model spec: known short name, folder or hub id")
    parser.add_argument("--tasks", required=True, help="comma-separated: sst2, boolq, arc-e, arc-c, piqa, siqa, obqa, "
                        "hellaswag, winogrande (read from --data-dir), or PATH / TYPE:PATH (TYPE seq-cls or "
                        "multiple-choice)")
    parser.add_argument("--methods", default="full,lora", help="comma-separated; full is full fine-tuning, "
                        "multitask-full one encoder with one head per task trained on all --tasks at once "
                        "(default %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method and task (default %(default)s)")
    parser.add_argument("--data-dir", default=None, help="folder holding sst2/ and commonsense/ "
                                                         "(default: $ADAPTERLAB_DATA, then the data cache)")
    parser.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="an adapter option, repeatable: --option lora.r=16")
    parser.add_argument("--lr", action="append", default=[], metavar="[METHOD=]LR",
                        help="learning rate for every method, or per method (default: full 3e-5, adapters 1e-3)")
    parser.add_argument("--max-train-samples", type=int, default=None, help="seeded subset of each training set")
    parser.add_argument("--max-eval-samples", type=int, default=None, help="seeded subset of each dev set")
    parser.add_argument("--max-steps", type=int, default=300, help="step budget per run (default %(default)s)")
    parser.add_argument("--eval-steps", type=int, default=25, help="dev evaluation every N steps (default %(default)s)")
    parser.add_argument("--patience", type=int, default=3, help="stop after N evaluations without a better dev "
                                                                "score (default %(default)s, theirs)")
    parser.add_argument("--batch-size", type=int, default=32, help="default %(default)s (theirs)")
    parser.add_argument("--cutoff-len", type=int, default=128, help="tokens per example (default %(default)s)")
    parser.add_argument("--targets", default="0.99,0.95", help="fractions of full fine-tuning's best dev score "
                                                               "(default %(default)s)")
    parser.add_argument("--extend", default=None, metavar="TASK",
                        help="also add TASK (one of --tasks) to a multi-task model trained on the others, with a "
                             "--replay share of their training sets, beside the adapters trained on TASK alone")
    parser.add_argument("--replay", type=float, default=None, help="with --extend: share of each old task's "
                        "training set replayed while adding TASK (default 0.2, Mundra et al.'s add_task.py)")
    parser.add_argument("--no-latency", action="store_true", help="skip the serving-latency measurement")
    parser.add_argument("--no-isolate", action="store_true", help="train in this process (faster start; peak "
                                                                  "memory is then the largest so far)")
    parser.add_argument("--output", required=True, help="folder for runs/, results.json/.csv, report.md, curves.png")
    parser.add_argument("--resume", action="store_true", help="add this comparison's rows to the earlier one in "
                        "--output (same settings; finished runs are reused) and rebuild the report from all rows")
    parser.add_argument("--overwrite", action="store_true", help="replace the earlier comparison in --output "
                        "(only what compare wrote is removed)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        targets = tuple(float(x) for x in args.targets.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--targets {args.targets!r} must be comma-separated fractions, e.g. 0.99,0.95.") from None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.replay is not None and args.extend is None:
        raise UsageError("--replay is the replay share of --extend; give --extend TASK too, or drop --replay.")
    lr = parse_lr(args.lr)
    lr = {m: lr for m in methods} if isinstance(lr, float) else lr
    for name in ("max_train_samples", "max_eval_samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")

    def progress(record: dict) -> None:
        if "refused" in record:
            print(f"{record['task']} {record['method']} seed {record['seed']}: refused: {record['refused']}", flush=True)
            return
        best = max((p["score"] for p in record["curve"]), default=float("nan"))
        print(f"{record['task']} {record['method']} seed {record['seed']}: best dev {100 * best:.1f} "
              f"after {record['steps']} steps", flush=True)

    result = compare(args.model, [t.strip() for t in args.tasks.split(",") if t.strip()], methods, args.output,
                     seeds=args.seeds, data_dir=args.data_dir, options=parse_options(args.option), lr=lr,
                     max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
                     max_steps=args.max_steps, eval_steps=args.eval_steps, patience=args.patience,
                     batch_size=args.batch_size, cutoff_len=args.cutoff_len, targets=targets,
                     latency=not args.no_latency, isolate=not args.no_isolate, extend=args.extend,
                     replay=REPLAY if args.replay is None else args.replay, done=progress, resume=args.resume,
                     overwrite=args.overwrite)
    for method, verdict in result["verdicts"].items():
        print(f"{method}: {verdict}")
    outputs = ("report.md", "results.json", "results.csv", "curves.png")
    written = [n for n in outputs if (Path(args.output) / n).is_file()]  # curves.png needs a finished run
    print(f"Written to {args.output}: {', '.join(written)}")
    return 0
