"""`adapterlab export`: write a trained adapter as a merged plain transformers model, or in PEFT's format.

    adapterlab export --adapter-path runs/smol-lora --merged exports/smol-merged
    adapterlab export --model smollm2-135m --adapter-path my-adapter --peft exports/smol-peft
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import CONFIG_NAME, export_peft, read_adapter_config
from ..engine import check_mergeable
from ..errors import UsageError
from ..merging import check_new_folder, merge_and_unload, save_merged
from ..models.loading import TASKS
from ..registry import config_class


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write a trained adapter merged into its base model, or in PEFT's format",
        description="Read a training run folder (its base model, task, adapter and head) or --model with an "
                    "adapter folder, and write --merged (a plain transformers folder, adapter folded in, with the "
                    "tokenizer) and/or --peft (an adapter folder for peft.PeftModel.from_pretrained).",
    )
    parser.add_argument("--adapter-path", required=True, help="training run folder, or adapter folder (with --model)")
    parser.add_argument("--model", help="base model (hub id, folder, short name); default: the run's own")
    parser.add_argument("--task", choices=TASKS, help="model head to load; default: the run's task, else causal-lm")
    parser.add_argument("--merged", help="new folder for the merged model (loads with AutoModelFor...)")
    parser.add_argument("--peft", help="folder for the adapter in PEFT's format")
    parser.add_argument("--dtype", help="dtype to load and save the model in (float32, bfloat16, float16); "
                                        "default: transformers' choice")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the outputs and the method first, then load once, export PEFT (unmerged), then merge and save."""
    if not args.merged and not args.peft:
        raise UsageError("nothing to write: pass --merged DIR (a merged transformers model) and/or --peft DIR.")
    if args.merged:
        check_new_folder(Path(args.merged), "--merged")
    adapter = Path(args.adapter_path)
    saved = read_adapter_config(adapter) if (adapter / CONFIG_NAME).is_file() else {}
    if "method" in saved:  # refuse what cannot be written before loading the model (a PEFT folder can be)
        method = config_class(str(saved["method"]))
        if args.merged:
            check_mergeable(method)
        if args.peft and not hasattr(method, "to_peft"):
            raise UsageError(f"--peft: {method.method} has no PEFT counterpart (PEFT's format holds LoRA, IA3, "
                             "prompt tuning, P-tuning and prefix tuning); keep the adapter folder as it is.")
    from ..tasks.audio_models import hooked_pooling
    from ..train.restore import restore_run

    model, processor, task = restore_run(args.adapter_path, model=args.model, task=args.task, dtype=args.dtype)
    pooling = hooked_pooling(model)
    if pooling is not None:
        raise UsageError(f"--adapter-path {args.adapter_path}: the run's head reads --pooling {pooling} through a "
                         "hook that a transformers model or PEFT adapter does not carry (loaded elsewhere it would "
                         "pool as its class does and predict otherwise); evaluate the run folder with adapterlab.")
    if args.peft:
        export_peft(model, args.peft)
        print(f"PEFT adapter in {args.peft}/ (load with peft.PeftModel.from_pretrained(base, {args.peft!r}))")
    if args.merged:
        save_merged(merge_and_unload(model), args.merged, processor)
        auto = TASKS[task][0]
        print(f"Merged model in {args.merged}/ (load with transformers.{auto}.from_pretrained({args.merged!r}))")
    return 0
