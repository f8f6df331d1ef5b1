"""`adapterlab eval`: evaluate a base model, or a base model with a saved adapter, on reasoning data sets; or a
trained classification run on labelled test data.

    adapterlab eval --model smollm2-135m --adapter-path runs/smol-lora --datasets gsm8k,aqua --output evals/smol
    adapterlab eval --adapter-path runs/sst2-lora --datasets data/sst2/test.tsv --output evals/sst2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from ..errors import MissingPathError, UsageError
from ..core.checkpoint import CONFIG_NAME, read_adapter_config
from ..core.compiling import BACKEND, chosen_backend, compile_for_eval
from ..data.templates import TEMPLATES
from ..files import check_folder_path
from ..folder_lock import claim_run_folder
from ..evaluate import KNOWN, MODES, evaluate, markdown_table
from ..evaluate.choice import Choice, evaluate_choice
from ..evaluate.fingerprint import model_files
from ..evaluate.generate import check_batching
from ..evaluate.class_run import read_classification_run
from ..interop.llm_adapters.evaluate import THEIR_ADAPTERS, check_adapter_label, check_model_label, read_their_flags
from ..evaluate.loop import check_counts
from ..evaluate.protocols import flag, protocol_options
from ..evaluate.runner import Generate
from ..models import load_model, model_folder, resolve_model
from ..models.devices import check_device
from ..models.quantize import check_bitsandbytes
from ..output_folder import OutputFolder
from ..interop.peft import load_any_adapter
from .eval_classification import run_classification

TRAIN_CONFIG_FILES = ("train_config.yaml", "train_config.json", "summary.json")
# The language-model protocols --protocol names; a classification run's folder picks the classifier's. The options
# a protocol reads default to None on the parser, so that another protocol can tell them given and refuse them.
PROTOCOLS = {p.name: p for p in (Generate, Choice)}


def find_adapter(path: str) -> Path:
    """The adapter folder in `path`: `path` itself when it holds adapter_config.json, else the one subfolder
    of a training run folder that does."""
    root = Path(path)
    if not root.is_dir():
        raise MissingPathError(f"--adapter-path {path}: no such folder; pass the run or adapter folder written by training.")
    if (root / CONFIG_NAME).is_file():
        return root
    found = sorted(p.parent for p in root.glob(f"*/{CONFIG_NAME}"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise MissingPathError(f"--adapter-path {path}: neither it nor a subfolder holds {CONFIG_NAME}; "
                                "pass the folder written by `adapterlab train` or save_adapter.")
    raise UsageError(f"--adapter-path {path}: several adapters inside ({', '.join(map(str, found))}); pass one of them.")


def run_config(adapter_dir: Path) -> dict[str, Any]:
    """The training run's config next to or above the adapter (train_config.yaml, ...), or {} when none reads."""
    for folder in (adapter_dir, adapter_dir.parent):
        for name in TRAIN_CONFIG_FILES:
            file = folder / name
            if file.is_file():
                try:
                    data: Any = yaml.safe_load(file.read_text()) if file.suffix == ".yaml" else json.loads(file.read_text())
                except (yaml.YAMLError, json.JSONDecodeError):
                    continue
                if isinstance(data, dict):
                    return data
    return {}


def training_template(adapter_dir: Path) -> str | None:
    """The prompt template the adapter was trained with, read from the run folder at or above it."""
    from ..train.run_folder import RunFolder

    run = RunFolder.around(adapter_dir)
    return run.template if run is not None else None


def training_files(adapter_dir: Path) -> dict[str, list[str]]:
    """The files the adapter was trained on and those its training data was decontaminated against (for the
    report's train/test overlap note: said only of data the adapter saw)."""
    config = run_config(adapter_dir)
    return {key: [str(f) for f in config.get(key) or [] if isinstance(f, str)] for key in ("data", "decontaminate")}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate a model (with or without an adapter) on math / commonsense reasoning sets, or a "
                     "trained classification run on labelled test data",
        description="Batched, greedy-by-default evaluation with answer extraction, Wilson intervals and resume. "
                    f"Known data sets: {', '.join(KNOWN)}; any LLM-Adapters-format JSON file also works. "
                    "A run folder of `adapterlab train --task seq-cls|audio-cls|image-cls` given as --adapter-path "
                    "is evaluated as a classifier: accuracy (Wilson 95%), macro-F1, per-class scores, predictions "
                    "and a confusion matrix.",
    )
    parser.add_argument("--model", help="hub id, local folder, .gguf file or short name (smollm2-135m); for a "
                                        "classification run, default: the base model its train_config.yaml names. "
                                        "With --base_model: LLM-Adapters' label (LLaMA-7B, BLOOM-7B, ...), checked "
                                        "against the model --base_model loads")
    parser.add_argument("--base_model", help="LLM-Adapters' evaluate.py spelling: the base model's weights (then "
                                             "their settings apply: 4 beams, their prompt and answer extraction)")
    parser.add_argument("--adapter", dest="their_adapter", choices=tuple(THEIR_ADAPTERS),
                        help="LLM-Adapters' label of the adapter (it names their output file); checked against the "
                             "adapter in --adapter-path / --lora_weights")
    parser.add_argument("--adapter-path", "--lora_weights", help="adapter or training run folder, or a PEFT adapter folder (LLM-Adapters' "
                                               "fork included: adapter_model.bin); without it the base model is evaluated")
    parser.add_argument("--datasets", "--dataset", required=True,
                        help="comma-separated known names and/or paths of LLM-Adapters-format JSON files; for a "
                             "classification run, labelled files (seq-cls) or folders (audio-cls, image-cls) in the "
                             "format the run was trained on")
    parser.add_argument("--data-dir", action="append", default=None,
                        help="folder holding the data files (repeatable); default: math/ and commonsense/ under "
                             "$ADAPTERLAB_DATA, then the cache `adapterlab data pull` fills")
    parser.add_argument("--protocol", choices=tuple(PROTOCOLS), default="generate",
                        help="generate (default): generate an answer and read it; choice: score each option of a "
                             "multiple-choice set by its log-likelihood (acc and length-normalised acc_norm)")
    parser.add_argument("--output", help="folder for predictions JSONL, summary.json and summary.md (and for a "
                                         "classification run <dataset>.confusion.png)")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=16,
                        help="rows decoded together (default %(default)s): greedy rows leave as they finish and "
                             "waiting items take their place; beam search runs fixed batches of this many items")
    parser.add_argument("--batch-tokens", type=int,
                        help="greedy decoding: admit an item only while the batch's padded prompt+generated tokens "
                             "stay within N (rows still capped by --batch-size); refused with --num-beams > 1")
    parser.add_argument("--max-new-tokens", type=int, help="generation length (default 256)")
    parser.add_argument("--num-beams", type=int, help="1 = greedy (default); LLM-Adapters used 4")
    parser.add_argument("--template", choices=TEMPLATES,
                        help="prompt template; default: the one the adapter was trained with, else alpaca")
    parser.add_argument("--mode", choices=MODES,
                        help="answer extraction: default (robust) or llm-adapters (their exact rules)")
    parser.add_argument("--answer-type", choices=("number", "letter", "label"),
                        help="override the answer type (inferred for unknown files)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N items (examples) of each data set")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    parser.add_argument("--overwrite", action="store_true", help="discard predictions already in --output")
    parser.add_argument("--dtype", help="model dtype (float32, bfloat16, float16); default: transformers' choice, or for a "
                                        "classification run the dtype it was trained in")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps; default cpu (with --load-8bit/--load-4bit: the GPU "
                                         "if there is one)")
    quantized = parser.add_mutually_exclusive_group()
    quantized.add_argument("--load-8bit", "--load_8bit", "--load-in-8bit", "--load_in_8bit", dest="quantize",
                           action="store_const", const="8bit",
                           help="load the base quantized to 8 bits with bitsandbytes (LLM-Adapters' --load_8bit)")
    quantized.add_argument("--load-4bit", "--load_4bit", "--load-in-4bit", "--load_in_4bit", dest="quantize",
                           action="store_const", const="4bit",
                           help="load the base quantized to 4 bits with bitsandbytes (NF4, double quantization, "
                                "bf16 compute), as QLoRA trains it")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model's forward (adapters included) before evaluating: compiles at the "
                             "first batches, then each forward may run faster (benchmarks/compile_effect.py measures "
                             "it per method)")
    parser.add_argument("--compile-backend",
                        help=f"torch.compile backend of --compile (default {BACKEND}: generated kernels, on CPU with a "
                             "C++ compiler; aot_eager runs the same graphs eagerly: checks tracing, no speed-up)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)



def run(args: argparse.Namespace) -> int:
    """Check --output under the one output-folder rule and hold it for the evaluation's life, then evaluate."""
    if (args.resume or args.overwrite) and not args.output:
        raise UsageError("--resume and --overwrite need --output (the folder of the run).")
    check_device(args.device)  # for a classification run too, before any model loads
    chosen_backend(args.compile, args.compile_backend, flag)
    if not args.output:
        return evaluate_run(args)
    check_folder_path(Path(args.output), "--output")
    protected = [("the base model's folder", model_folder(args.model) if args.model else None),
                 ("the adapter's folder", Path(args.adapter_path) if args.adapter_path else None)]
    OutputFolder(args.output, "eval", "--output").check_place(protected)
    with claim_run_folder(Path(args.output)):  # two evaluations never write one folder at once
        return evaluate_run(args)


def evaluate_run(args: argparse.Namespace) -> int:
    """A classification run is evaluated as a classifier; otherwise load the model (and adapter), generate, print
    the table."""
    classification = read_classification_run(args.adapter_path) if args.adapter_path else None
    if classification is not None:
        their = [name for name, value in (("--base_model", args.base_model), ("--adapter", args.their_adapter)) if value]
        if their:
            raise UsageError(f"{', '.join(their)}: LLM-Adapters' evaluate.py flags for generative evaluation; "
                             f"{args.adapter_path} is a classification run, evaluated as a classifier. Drop them.")
        return run_classification(args, classification)
    for note in read_their_flags(args):  # LLM-Adapters' evaluate.py flags (--base_model, --lora_weights, ...)
        print(note)
    if args.model is None:
        if args.adapter_path:
            find_adapter(args.adapter_path)  # a wrong path is named before the missing flag
        raise UsageError("--model is required (the base model to generate with); only a classification run's "
                         "folder (--adapter-path) names its own base model.")
    protocol = PROTOCOLS[args.protocol]
    options = protocol_options(vars(args), protocol, protocol.refusal)  # other protocols' options refused by name
    vars(args).update(options)
    check_counts({k: v for k, v in vars(args).items() if v is not None}, spell=flag)  # before the model loads
    if protocol is Generate:
        check_batching(args.batch_tokens, args.num_beams, spell=flag)
    if args.quantize:
        check_bitsandbytes(args.quantize)
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if not names:
        raise UsageError("--datasets is empty; give names like gsm8k,aqua or paths of JSON files.")
    # read and check every data set before the model loads: a typo costs no model load
    datasets = protocol.load(names, options, args.limit)
    adapter_dir = find_adapter(args.adapter_path) if args.adapter_path else None
    if protocol is Choice:
        return run_choice(args, datasets, adapter_dir)
    template = args.template or (training_template(adapter_dir) if adapter_dir else None) or "alpaca"
    model, tokenizer, metadata = load_for_eval(args, adapter_dir)
    summary = evaluate(
        model, tokenizer, datasets, answer_type=args.answer_type,
        batch_size=args.batch_size, batch_tokens=args.batch_tokens, max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams, template=template, mode=args.mode, output_dir=args.output, resume=args.resume, overwrite=args.overwrite,
        limit=args.limit, progress=not args.no_progress, metadata=metadata,
    )
    return report(summary, args)


def load_for_eval(args: argparse.Namespace, adapter_dir: Path | None) -> tuple[Any, Any, dict[str, Any]]:
    """(model with the adapter loaded, tokenizer, what evaluated it); their --adapter / --model labels checked."""
    if adapter_dir is not None:
        check_adapter_label(args.their_adapter, read_adapter_config(adapter_dir), str(adapter_dir))
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device, quantize=args.quantize)
    check_model_label(args.model_label, model, args.model)
    weights = resolve_model(args.model, log=lambda _: None).location  # a short name's cache folder
    if adapter_dir is not None:
        load_any_adapter(model, adapter_dir)  # adapterlab's or PEFT's (LLM-Adapters' fork too)
    if (backend := chosen_backend(args.compile, args.compile_backend, flag)) is not None:
        compile_for_eval(model, backend)
    trained = training_files(adapter_dir) if adapter_dir is not None else {"data": [], "decontaminate": []}
    return model, tokenizer, {"model": args.model, "model_files": model_files(weights),
                              "adapter": str(adapter_dir) if adapter_dir else None,
                              "trained_on": trained["data"], "decontaminated_against": trained["decontaminate"]}


def report(summary: dict[str, Any], args: argparse.Namespace) -> int:
    print(markdown_table(summary), end="")
    if args.output:
        print(f"Predictions and summary in {args.output}/")
    return 0


def run_choice(args: argparse.Namespace, datasets: list[Any], adapter_dir: Path | None) -> int:
    """`--protocol choice`: score every option of `datasets` by its log-likelihood."""
    model, tokenizer, metadata = load_for_eval(args, adapter_dir)
    summary = evaluate_choice(
        model, tokenizer, datasets, batch_size=args.batch_size, output_dir=args.output, resume=args.resume,
        overwrite=args.overwrite, limit=args.limit, progress=not args.no_progress, metadata=metadata,
    )
    return report(summary, args)
