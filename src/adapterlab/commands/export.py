"""`adapterlab export`: write a trained adapter as a merged plain transformers model, or in PEFT's format.

    adapterlab export --adapter-path runs/smol-lora --merged exports/smol-merged
    adapterlab export --model smollm2-135m --adapter-path my-adapter --peft exports/smol-peft
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch

from ..core.checkpoint import CONFIG_NAME, read_adapter_config
from ..core.engine import check_mergeable
from ..errors import UsageError
from ..files import PENDING
from ..core.merging import merge_and_unload, save_merged_into
from ..models import model_folder
from ..models.loading import TASKS, parse_dtype
from ..output_folder import OutputFolder, relation
from ..interop.peft import export_peft, exports_to_peft
from ..interop.peft.files import PEFT_WEIGHTS_NAME
from ..core.registry import config_class

PEFT_FILES = (CONFIG_NAME, PEFT_WEIGHTS_NAME, PENDING)  # what --peft writes (the pending folder while replacing)


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
    parser.add_argument("--dtype", help="dtype to load and save the model in (float32, bfloat16, float16; the "
                                        "--peft adapter's tensors too); default: transformers' choice")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --merged/--peft "
                        "(only what it wrote is removed); without it a non-empty folder is refused")
    parser.set_defaults(func=run)


def output_folders(args: argparse.Namespace, adapter: Path, base: str | None) -> list[OutputFolder]:
    """The --merged and --peft folders, refused where they would write over the base model, the adapter read or a
    training run, or over each other."""
    folders = [OutputFolder(getattr(args, flag[2:]), "export", flag) for flag in ("--merged", "--peft")
               if getattr(args, flag[2:])]
    protected = [("the --adapter-path folder", adapter.resolve()),
                 ("the base model's folder", model_folder(base) if base else None)]
    for folder in folders:
        folder.check_place(protected)
    if len(folders) == 2 and relation(folders[0].path.resolve(), folders[1].path.resolve()):
        raise UsageError(f"--merged {args.merged} and --peft {args.peft} overlap; give two separate folders.")
    return folders


def run(args: argparse.Namespace) -> int:
    """Check the outputs and the method first, then load once, export PEFT (unmerged), then merge and save."""
    if not args.merged and not args.peft:
        raise UsageError("nothing to write: pass --merged DIR (a merged transformers model) and/or --peft DIR.")
    from ..train.run_folder import RunFolder

    adapter = Path(args.adapter_path)
    folders = output_folders(args, adapter, args.model or RunFolder(adapter).model)
    saved = read_adapter_config(adapter) if (adapter / CONFIG_NAME).is_file() else {}
    if "method" in saved:  # refuse what cannot be written before loading the model (a PEFT folder can be)
        method = config_class(str(saved["method"]))
        if args.merged:
            check_mergeable(method)
        if args.peft and not exports_to_peft(method):
            raise UsageError(f"--peft: {method.method} has no PEFT counterpart (PEFT's format holds LoRA, IA3, "
                             "prompt tuning, P-tuning and prefix tuning); keep the adapter folder as it is.")
    dtype = parse_dtype(args.dtype)
    with contextlib.ExitStack() as stack:
        for folder in folders:  # each locked for the export's life; an earlier export's files go with --overwrite
            stack.enter_context(folder.claim(args.overwrite, None if folder.flag == "--merged" else PEFT_FILES))
        return write(args, folders, None if dtype == "auto" else dtype)


def write(args: argparse.Namespace, folders: list[OutputFolder], dtype: torch.dtype | None) -> int:
    """Load the run once, then write the claimed folders: PEFT's unmerged adapter first, then the merged model."""
    from ..tasks.audio_models import hooked_pooling
    from ..train.restore import restore_run

    model, processor, task = restore_run(args.adapter_path, model=args.model, task=args.task, dtype=args.dtype)
    pooling = hooked_pooling(model)
    if pooling is not None:
        raise UsageError(f"--adapter-path {args.adapter_path}: the run's head reads --pooling {pooling} through a "
                         "hook that a transformers model or PEFT adapter does not carry (loaded elsewhere it would "
                         "pool as its class does and predict otherwise); evaluate the run folder with adapterlab.")
    for folder in folders:
        if args.overwrite:
            folder.clear()
        if folder.flag == "--peft":
            folder.record(PEFT_FILES)
            export_peft(model, folder.path, dtype=dtype)
            print(f"PEFT adapter in {args.peft}/ (load with peft.PeftModel.from_pretrained(base, {args.peft!r}))")
    merged = next((f for f in folders if f.flag == "--merged"), None)
    if merged is not None:
        save_merged_into(merge_and_unload(model), merged.path, processor, merged.record)
        auto = TASKS[task][0]
        print(f"Merged model in {args.merged}/ (load with transformers.{auto}.from_pretrained({args.merged!r}))")
    return 0
