"""`adapterlab merge`: combine adapter folders trained on one base model into one adapter folder (weighted merging
/ task arithmetic, `adapterlab.add_weighted_adapter`).

    adapterlab merge --model all-minilm-l6-v2 --adapter sst2=runs/sst2 --adapter boolq=runs/boolq \\
        --weights 1,1 --combination ties --density 0.5 --output merged/sst2-boolq
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import warnings
from pathlib import Path

import torch

from ..compose import add_weighted_adapter
from ..compose.lora_combine import LORA_TYPES
from ..compose.options import check_options, check_weights
from ..core.checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_adapter_config, write_adapter_files
from ..errors import UsageError
from ..files import PENDING, replace_files
from ..output_folder import OutputFolder
from ..models import model_folder
from ..models.loading import TASKS

MERGED = "merged"  # the combined adapter's name inside the command (the folder is loaded under any name)
WRITES = (CONFIG_NAME, WEIGHTS_NAME, PENDING)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge", help="combine adapters of one base model into one (weighted merging, task arithmetic, TIES, DARE)",
        description="Load --model with every --adapter folder (adapterlab's or PEFT's), combine them as PEFT's "
                    "add_weighted_adapter does, and write the result to --output as an ordinary adapter folder "
                    "(load it with adapterlab.load_adapter or --adapter-path). Classification heads are not "
                    "combined: the folder holds the adapter only.",
    )
    parser.add_argument("--adapter", action="append", required=True, metavar="NAME=PATH",
                        help="an adapter folder (or training run folder) and the name it is combined under; "
                             "repeat for each adapter")
    parser.add_argument("--weights", nargs="+", metavar="W",
                        help="one weight per --adapter, in their order (spaces or commas; negative subtracts); "
                             "default: 1/n each, a plain average (PEFT has no default; task arithmetic often "
                             "sums with 1 each: --weights 1,1)")
    parser.add_argument("--combination", default="linear", choices=LORA_TYPES,
                        help="how to combine (default %(default)s; PEFT's default is svd); every type but linear "
                             "is LoRA only; other methods combine as the weighted sum of their parameters")
    parser.add_argument("--density", type=float, help="fraction of entries kept, in (0, 1] (ties, dare_*, "
                                                      "magnitude_prune*, and their _svd types)")
    parser.add_argument("--majority-sign-method", choices=("total", "frequency"),
                        help="TIES' sign election (ties, dare_ties and their _svd types; default total)")
    parser.add_argument("--svd-rank", type=int, help="rank of the _svd types' result (default: the largest rank)")
    parser.add_argument("--svd-clamp", type=float, help="quantile at which the _svd types clip their factors")
    parser.add_argument("--svd-full-matrices", action=argparse.BooleanOptionalAction, default=None,
                        help="full or reduced SVD for the _svd types (default: full, as PEFT)")
    parser.add_argument("--seed", type=int, help="torch seed of the dare_* types' random masks (default 0, so a "
                                                 "command repeated gives the same folder)")
    parser.add_argument("--model", help="base model the adapters were trained on (short name, folder or hub id); "
                                        "default: the training runs' own")
    parser.add_argument("--task", choices=TASKS, help="the model head to load the adapters with; default: the "
                                                      "training runs' own, else causal-lm")
    parser.add_argument("--head-from", metavar="NAME", help="copy this --adapter's trained classification head "
                        "(head.safetensors, labels.json) and its train_config.yaml into --output, so that `adapterlab "
                        "eval --adapter-path OUTPUT` evaluates the combined adapter with that task's head, reading "
                        "test data as that run did (task arithmetic keeps each task's head); default: the adapter "
                        "only")
    parser.add_argument("--output", required=True, help="new or empty folder for the combined adapter")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier merge's output in --output "
                        "(only what it wrote is removed)")
    parser.set_defaults(func=run)


def parse_adapters(items: list[str]) -> list[tuple[str, Path]]:
    """`NAME=PATH` items as (name, folder) pairs; names unique identifiers, folders holding adapter_config.json."""
    pairs = []
    for item in items:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise UsageError(f"--adapter {item!r} must look like NAME=PATH, e.g. sst2=runs/sst2.")
        if not name.isidentifier():
            raise UsageError(f"--adapter {item!r}: the name {name!r} must be a Python identifier, e.g. sst2.")
        if not (Path(path) / CONFIG_NAME).is_file():
            raise UsageError(f"--adapter {item!r}: {path} holds no {CONFIG_NAME}; pass an adapter folder or a "
                             "finished training run's folder.")
        pairs.append((name, Path(path)))
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise UsageError(f"--adapter names {names} repeat; give each adapter its own name.")
    return pairs


def parse_weights(tokens: list[str] | None, count: int) -> list[float]:
    """--weights as numbers (1/n each when not given)."""
    if tokens is None:
        return [1.0 / count] * count
    parts = [p for token in tokens for p in token.split(",") if p.strip()]
    try:
        weights = [float(p) for p in parts]
    except ValueError:
        raise UsageError(f"--weights {' '.join(tokens)}: weights are numbers, e.g. --weights 0.5,0.5.") from None
    return check_weights(weights, count)


def run_settings(pairs: list[tuple[str, Path]], model: str | None, task: str | None) -> tuple[str, str]:
    """(base model spec, task): as given, else the training runs' own (they must agree)."""
    from ..train.run_folder import RunFolder

    runs = [RunFolder(path) for _, path in pairs]
    if model is None:
        specs = {run.model for run in runs}
        if len(specs) != 1 or None in specs:
            raise UsageError("pass --model, the base model the adapters were trained on (the adapter folders do not "
                             f"all name one: {sorted(map(str, specs))}).")
        model = specs.pop()
    if task is None:
        tasks = {run.task for run in runs}
        if len(tasks) != 1:
            raise UsageError(f"the training runs trained different tasks ({sorted(tasks)}); pass --task, the model "
                             "head to load the adapters with.")
        task = tasks.pop()
    return model, task


def run(args: argparse.Namespace) -> int:
    """Check every argument and the output folder first, then load the base and the adapters once, combine, save."""
    pairs = parse_adapters(args.adapter)
    weights = parse_weights(args.weights, len(pairs))
    options = dict(density=args.density, majority_sign_method=args.majority_sign_method, svd_rank=args.svd_rank,
                   svd_clamp=args.svd_clamp, svd_full_matrices=args.svd_full_matrices)
    check_options(args.combination, **options)
    if args.seed is not None and not args.combination.startswith("dare"):
        raise UsageError(f"--seed {args.seed}: --combination {args.combination} draws nothing at random; drop --seed "
                         "(it seeds the dare_* types' masks).")
    head_files = head_source(pairs, args.head_from)
    writes = WRITES + tuple(p.name for p in head_files)
    spec, task = run_settings(pairs, args.model, args.task)
    _warn_other_bases(pairs)
    folder = OutputFolder(args.output, "merge", "--output")
    folder.check_place([(f"the --adapter folder {path}", path.resolve()) for _, path in pairs]
                       + [("the base model's folder", model_folder(spec))])
    from ..interop.peft.transfer import load_any_adapter
    from ..models import load_model

    with contextlib.ExitStack() as stack:
        stack.enter_context(folder.claim(args.overwrite, writes))
        model, _ = load_model(spec, task=task)
        for name, path in pairs:
            load_any_adapter(model, path, name)  # refuses an adapter made for another base model, by name
        torch.manual_seed(0 if args.seed is None else args.seed)  # the dare_* masks; nothing else draws now
        add_weighted_adapter(model, [n for n, _ in pairs], weights, MERGED, args.combination, **options)
        if args.overwrite:
            folder.clear()
        folder.record(writes)
        replace_files(folder.path, lambda stage: _write(model, stage, head_files))  # adapter and head as one
    print(f"Combined adapter ({args.combination}, weights {weights}) in {args.output}/ (load with "
          f"adapterlab.load_adapter(model, {args.output!r}))")
    return 0


def head_source(pairs: list[tuple[str, Path]], name: str | None) -> list[Path]:
    """The files --head-from copies: the named training run's head.safetensors, its labels.json and its settings
    (train_config.yaml: how eval reads the task's test data; they describe that run, the adapter is the merge's)."""
    if name is None:
        return []
    from ..train.checkpointing import HEAD_NAME  # the train room loads the Trainer: only when a head is asked for
    from ..train.run_dir import CONFIG_FILE
    from ..train.run_folder import LABELS_FILE

    folders = dict(pairs)
    if name not in folders:
        raise UsageError(f"--head-from {name}: no --adapter is named so; give one of {sorted(folders)}.")
    head = folders[name] / HEAD_NAME
    if not head.is_file():
        raise UsageError(f"--head-from {name}: {folders[name]} holds no {HEAD_NAME} (no trained classification head); "
                         "drop --head-from, or name the training run of a classification task.")
    settings = folders[name] / CONFIG_FILE
    if not settings.is_file():
        raise UsageError(f"--head-from {name}: {folders[name]} holds a head but no {CONFIG_FILE}; name the folder "
                         "`adapterlab train` wrote.")
    return [p for p in (head, folders[name] / LABELS_FILE, settings) if p.is_file()]


def _write(model: torch.nn.Module, stage: Path, head_files: list[Path]) -> None:
    """The combined adapter's files and the copied head files into the staging folder."""
    write_adapter_files(model, stage, MERGED)
    for file in head_files:
        shutil.copyfile(file, stage / file.name)


def _warn_other_bases(pairs: list[tuple[str, Path]]) -> None:
    """Warn when the adapters' saved configs name different base models (a path and a hub id of one model can)."""
    bases = {}
    for name, path in pairs:
        saved = read_adapter_config(path)
        base = (saved.get("base_model") or {}).get("name_or_path") or saved.get("base_model_name_or_path")
        if base:
            bases[name] = base
    if len(set(bases.values())) > 1:
        warnings.warn(f"the adapters name different base models ({bases}); combining adapters trained on different "
                      "bases rarely makes sense.", stacklevel=2)
