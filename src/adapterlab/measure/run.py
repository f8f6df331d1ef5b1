"""`measure()`: every requested method (and full fine-tuning) on the same model and batches, one result row each.

With `isolate=True` each method runs in a fresh spawned Python process that loads the base from a
temporary safetensors copy, so peak memory is that method's own and no allocator cache carries over.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import functools
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from tqdm.auto import tqdm

from ..errors import UsageError, UserError
from ..models.devices import check_device
from ..core.registry import config_class, make_config, method_names
from .costs import FULL, Settings, measure_method
from .fresh_process import run_isolated
from .report import add_relative, measured, refused_row, write_outputs

ModelSpec = str | Callable[[], nn.Module]


def check_methods(methods: list[str], options: dict[str, dict[str, Any]]) -> None:
    """Refuse unknown methods, options for methods not measured, and invalid options, before any work."""
    if not methods:
        raise UsageError("No methods to measure; give e.g. full,lora.")
    known = [FULL, *method_names()]
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise UsageError(f"Unknown method(s) {unknown}; choose from {', '.join(known)}.")
    if len(set(methods)) != len(methods):
        raise UsageError(f"Methods {methods} name one twice; measure each once.")
    stray = [m for m in options if m not in methods]
    if stray:
        raise UsageError(f"Options were given for {stray}, which are not among the methods measured {methods}.")
    if options.get(FULL):
        raise UsageError("full fine-tuning takes no options.")
    for method in methods:
        if method != FULL:
            config_class(method)
            make_config(method, **options.get(method, {}))  # unknown or invalid options fail here


def _pretrained(folder: str, task_class: str, dtype: str) -> nn.Module:
    """Load the temporary copy of the base (module-level so that a spawned process can unpickle it)."""
    transformers.utils.logging.disable_progress_bar()  # only ever runs in a measuring child process
    return getattr(transformers, task_class).from_pretrained(folder, dtype=getattr(torch, dtype))


def _environment(device: str, rows: list[dict[str, Any]], threads: int | None) -> dict[str, Any]:
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    used = next((r["threads"] for r in measured(rows)), threads or torch.get_num_threads())
    return {"device": device, "device_name": name, "cpu_count": os.cpu_count(), "threads": used,
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def measure(
    model_spec: ModelSpec,
    methods: list[str],
    *,
    options: dict[str, dict[str, Any]] | None = None,
    seq_len: int = 256,
    micro_batch_size: int = 4,
    steps: int = 5,
    warmup: int = 2,
    decode_tokens: int = 8,
    device: str | None = None,
    dtype: str = "float32",
    task: str = "causal-lm",
    isolate: bool = True,
    threads: int | None = None,
    output: str | Path | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Measure each of `methods` ("full" or registered adapters) on `model_spec`; write results into `output`.

    `model_spec` is anything `load_model` accepts, or a zero-argument factory returning a fresh model (it must
    be picklable, e.g. a module-level function or a functools.partial of one, when `isolate` is true).
    `options` maps a method to its adapter options; `dtype` applies to a loaded spec, not to a factory.
    `threads` sets torch's CPU threads for the measurements (default: torch's own choice).
    Returns one dict per method, in the order given (see `measure.report.COLUMNS` for the fields); a method that
    refuses the model (the conformer on a causal model, say) gets a row with status "refused" and the reason in `note`,
    and the others are still measured. Each row is written to `output` as soon as it is done.
    """
    from ..models import TASKS, load_model

    options = {m: dict(o) for m, o in (options or {}).items()}
    check_methods(methods, options)
    settings = Settings(seq_len=seq_len, micro_batch_size=micro_batch_size, steps=steps, warmup=warmup,
                        decode_tokens=decode_tokens)
    settings.validate()
    if task not in TASKS:
        raise UsageError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    device = check_device(device) or ("cuda" if torch.cuda.is_available() else "cpu")
    jobs = [(m, options.get(m, {})) for m in methods]
    name = model_spec if isinstance(model_spec, str) else getattr(model_spec, "__name__", repr(model_spec))

    rows: list[dict[str, Any]] = []

    def write() -> None:
        add_relative(rows)
        if output is not None:
            summary = {
                "model": name, "task": task, "dtype": dtype, "isolated": isolate,
                "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "settings": dataclasses.asdict(settings), "environment": _environment(device, rows, threads),
                "results": rows,
            }
            write_outputs(summary, Path(output))

    with tempfile.TemporaryDirectory(prefix="adapterlab-measure-") as tmp, \
            tqdm(total=len(jobs), desc="measure", unit="method", disable=not progress) as bar:
        if isinstance(model_spec, str):
            base, _ = load_model(model_spec, task, dtype=dtype, log=lambda _: None)
            if isolate:
                base.save_pretrained(tmp)
                del base
                factory: Callable[[], nn.Module] = functools.partial(_pretrained, tmp, TASKS[task][0], dtype)
            else:
                factory = functools.partial(copy.deepcopy, base)
        else:
            factory = model_spec
        for method, opts in jobs:  # each finished row is written at once: a later failure loses none of them
            bar.set_postfix_str(method)
            try:
                rows.append(run_isolated(measure_method, isolate, factory, method, opts, settings, device, threads))
            except UserError as exc:  # this method refuses this model: keep the reason, measure the others
                rows.append(refused_row(method, opts, " ".join(str(exc).split())))
            write()
            bar.update()
    return rows
