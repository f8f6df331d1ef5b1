"""`adapterlab eval --adapter-path RUN` for a run of `adapterlab train --task seq-cls | audio-cls | image-cls`:
the run's classifier on labelled test files or folders, read as the run read its training data.

    adapterlab eval --adapter-path runs/sst2-lora --datasets data/sst2/test.tsv --output evals/sst2
"""

from __future__ import annotations

import argparse

from ..core.compiling import chosen_backend, compile_for_eval
from ..errors import UsageError
from ..evaluate.class_report import markdown_report
from ..evaluate.class_run import (
    ClassificationRun,
    encode,
    load_classification_run,
    place,
    read_labelled_set,
)
from ..evaluate.class_runner import Classify, evaluate_classifier
from ..evaluate.loop import check_counts
from ..evaluate.protocols import flag, protocol_options
from ..models.loading import parse_dtype


def run_classification(args: argparse.Namespace, run: ClassificationRun) -> int:
    """Check flags and data, load the run's classifier, evaluate, print the tables."""
    # the options of generative evaluation and option scoring mean nothing to a classifier: refused by name
    protocol_options(vars(args), Classify, f"the {run.task} run in {run.folder} is evaluated as a classifier "
                                           "(one forward pass per example)")
    if getattr(args, "protocol", "generate") != "generate":
        raise UsageError(f"--protocol {args.protocol} scores a language model's options; the {run.task} run in "
                         f"{run.folder} is evaluated as a classifier: drop --protocol.")
    if getattr(args, "quantize", None):
        raise UsageError(f"--load-{args.quantize}: the {run.task} run in {run.folder} is evaluated with its base "
                         "loaded as it was trained (its train_config.yaml says whether quantized); drop the flag.")
    check_counts({"batch_size": args.batch_size, "limit": args.limit}, spell=flag)
    dtype = parse_dtype(args.dtype)
    paths = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if not paths:
        raise UsageError(f"--datasets is empty; give the labelled test {'file' if run.task == 'seq-cls' else 'folder'}"
                         f"(s) of the {run.task} run, comma-separated.")
    # read and check every test set before the model loads: a wrong label or path costs no model load
    sets = [read_labelled_set(run, path, args.limit) for path in paths]
    model, processor = load_classification_run(run, args.model)
    place(model, dtype, args.device)
    if (backend := chosen_backend(args.compile, args.compile_backend, flag)) is not None:
        compile_for_eval(model, backend)
    summary = evaluate_classifier(
        model, [encode(run, s, processor) for s in sets], run.labels, batch_size=args.batch_size,
        output_dir=args.output, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
        metadata={"task": run.task, "run": str(run.folder), "model": args.model or run.options.model,
                  "adapter": run.adapter},
    )
    print(markdown_report(summary), end="")
    if args.output:
        print(f"Predictions, summary and confusion matrices in {args.output}/")
    return 0
