"""The training recipe: task setup, adapter (or full) fine-tuning on the HF Trainer, run folder outputs.

The Trainer brings gradient accumulation, schedules, mixed precision, DDP/FSDP/DeepSpeed (through
torchrun or accelerate), checkpoint rotation and exact resume; this module decides what is trained,
what a checkpoint holds (see `checkpointing`), and what the run folder ends up with.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainingArguments, set_seed

from .. import __version__
from ..core.compiling import check_compiled_training
from ..core.engine import check_inputs, count_parameters
from ..errors import AdapterError, UsageError
from ..files import group_file, read_json_object, replace_files, write_json
from ..core.stochastic import stochastic_modules
from ..data.packing import PackedCollator, check_packing
from ..tasks import TASKS
from ..tasks.base import TaskSetup
from .callbacks import BestKeeper, MetricsLog
from .progress import use_readable_progress
from .checkpointing import TRAINABLE_NAME, check_checkpoint, last_checkpoint, load_trainable, save_trainable
from .config import TrainConfig, flag_name
from .engines import check_engine_enabled, check_engine_request, requested_engine, whole_trainable
from .run_folder import RunFolder
from .plot import plot_metrics
from .run_dir import BEST, CHECKPOINTS, METRICS, PLOT, SUMMARY, check_output, clear_run, record_outputs, write_run_config
from ..folder_lock import claim_run_folder
from .trainer import AdapterTrainer
from .warm_start import warm_start


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def resolve_precision(precision: str) -> str:
    """`auto` becomes bf16 on GPUs that support it, fp16 on other GPUs and fp32 on CPU."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def prepare_task(config: TrainConfig) -> TaskSetup:
    """Run the task's `prepare` (data, model with head, collator, metric)."""
    if config.task not in TASKS:
        raise AdapterError(f"Unknown task {config.task!r}; known tasks: {', '.join(sorted(TASKS))}.")
    return importlib.import_module(TASKS[config.task]).prepare(config.task_options())


def make_trainable(model: torch.nn.Module, config: TrainConfig, head_modules: list[str],
                   frozen_modules: Sequence[str] = ()) -> None:
    """Attach the adapter (base frozen) and unfreeze the task head (unless the method trains it itself), or unfreeze
    everything but `frozen_modules` for full fine-tuning: as the run's `Trainable` says."""
    config.trainable.prepare(model, config.adapter_options, head_modules, frozen_modules)


def training_arguments(config: TrainConfig, setup: TaskSetup, checkpoints: Path) -> TrainingArguments:
    """HF TrainingArguments for the run: accumulation from the global batch, eval/save cadence, precision."""
    world = world_size()
    if config.batch_size % (config.micro_batch_size * world):
        raise AdapterError(f"--batch-size {config.batch_size} must be a multiple of --micro-batch-size "
                           f"{config.micro_batch_size} x {world} processes.")
    evaluating = setup.eval_dataset is not None
    eval_strategy = ("steps" if config.eval_steps else "epoch") if evaluating else "no"
    save_every = config.save_steps or (config.eval_steps if evaluating else None)
    precision = resolve_precision(config.precision)
    on_cpu = not torch.cuda.is_available() and not torch.backends.mps.is_available()
    if precision == "fp16" and on_cpu:
        raise AdapterError("--precision fp16 needs a GPU; on the CPU use bf16 or fp32.")
    if config.compile:  # the adapted model is known now: a method drawing at random each step is refused
        check_compiled_training(setup.model, flag_name)
    return TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=config.micro_batch_size,
        per_device_eval_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.batch_size // (config.micro_batch_size * world),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.lr,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.scheduler,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        eval_strategy=eval_strategy,
        eval_steps=config.eval_steps,
        save_strategy="steps" if save_every else "epoch",
        save_steps=save_every or 500,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        **length_grouping(setup.group_by_length),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        **checkpointing_arguments(config.gradient_checkpointing),
        seed=config.seed,
        torch_compile=config.compile,
        torch_compile_backend=config.compile_backend if config.compile else None,
        dataloader_num_workers=config.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without an accelerator, say so: bf16 autocast and several processes (gloo) then run on the CPU.
        use_cpu=on_cpu,
        ddp_backend="gloo" if world > 1 and on_cpu else None,
        # A stochastic method's modules not drawn in a step get no gradient, which DDP accepts only when it looks
        # for unused parameters; the Trainer turns that search off under activation checkpointing.
        ddp_find_unused_parameters=True if stochastic_modules(setup.model) else None,
        include_num_input_tokens_seen="non_padding" if setup.num_tokens is not None else "no",
        report_to="none",
    )


def length_grouping(enabled: bool) -> dict[str, Any]:
    """The Trainer's length-grouped sampler: `group_by_length` before transformers 5, a sampling strategy since."""
    if "train_sampling_strategy" in TrainingArguments.__dataclass_fields__:
        return {"train_sampling_strategy": "group_by_length" if enabled else "random"}
    return {"group_by_length": enabled}


def checkpointing_arguments(enabled: bool) -> dict[str, Any]:
    """Activation (gradient) checkpointing, non-reentrant so a frozen base needs no input grads; the
    argument's name changed in transformers 5 (`activation_checkpointing`)."""
    name = "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ \
        else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def train(config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> dict[str, Any]:
    """Train as `config` says and fill its run folder; returns the summary (also written to summary.json).

    Nothing is written before the config, data, model and adapter have all been checked. The main process
    holds the run folder's lock for the whole run, so a second run into the same folder is refused.
    """
    if config.cross_validate:
        raise UsageError("cross_validate trains once per fold: call adapterlab.train.cross_validate(config), as "
                         "`adapterlab train --cross-validate` does.")
    config.validate()
    check_engine_request(config.trainable.full)
    out = Path(config.output)
    main = is_main_process()
    if main:
        check_output(out, config.model)
    with claim_run_folder(out) if main else contextlib.nullcontext():
        return _train(config, out, main, callbacks)


def _train(config: TrainConfig, out: Path, main: bool, callbacks: Sequence[TrainerCallback]) -> dict[str, Any]:
    """`train` once the run folder is ours (the main process holds its lock)."""
    # Only the main process judges the folder (the others would race with its writes); all resume alike.
    checkpoint = RunFolder(out).check(config) if main else (last_checkpoint(out / CHECKPOINTS) if config.resume else None)
    if checkpoint is not None:
        check_checkpoint(checkpoint, full_model=config.trainable.full)
    set_seed(config.seed)
    setup = prepare_task(config)
    model = setup.model
    make_trainable(model, config, setup.trainable_modules, setup.frozen_modules)
    first = next(iter(setup.train_dataset), None)
    if isinstance(first, dict):  # inputs the adapter cannot take are refused before the folder is written
        check_inputs(model, set(first))
    if isinstance(setup.data_collator, PackedCollator):  # packed records must stay apart in this model + adapter
        check_packing(model, config.model)
    if config.resume_from_checkpoint:
        checkpoint = warm_start(model, config.resume_from_checkpoint, full_model=config.trainable.full)
    trainable, total = count_parameters(model)
    args = training_arguments(config, setup, out / CHECKPOINTS)

    def keep_best(model_now: torch.nn.Module, step: int, value: float) -> None:
        def build(tmp: Path) -> None:
            save_trainable(model_now, tmp / TRAINABLE_NAME)
            write_json(tmp / "best.json", {"step": step, setup.metric_name: value})

        with whole_trainable(model_now):  # every process: FSDP2 / ZeRO-3 gather; the main one writes
            if main:
                replace_files(out / BEST, build)

    trainer = AdapterTrainer(
        model=model, args=args, train_dataset=setup.train_dataset, eval_dataset=setup.eval_dataset,
        data_collator=setup.data_collator, processing_class=setup.processor, compute_metrics=setup.compute_metrics,
        compute_loss_func=setup.compute_loss,
        callbacks=[MetricsLog(out / METRICS),
                   BestKeeper(setup.metric_name, setup.greater_is_better, keep_best, config.early_stopping),
                   *callbacks],
        full_model=config.trainable.full,
    )
    try:
        check_engine_enabled(trainer)  # the engine asked for is the one built, before the folder is written
    except UsageError:
        with contextlib.suppress(OSError):  # the empty checkpoints folder the Trainer made, never a full one
            (out / CHECKPOINTS).rmdir()
        raise
    if main:
        if config.overwrite:
            clear_run(out)
        record_outputs(out, [CHECKPOINTS, BEST, METRICS])
        write_run_config(out, config)
    use_readable_progress(trainer)
    tokens_before = json.loads((checkpoint / "trainer_state.json").read_text()).get("num_input_tokens_seen", 0) \
        if checkpoint else 0
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    wall = time.perf_counter() - start
    state = trainer.state
    best_file = group_file(out / BEST, "best.json")
    best = read_json_object(best_file, f"delete the folder {out / BEST} and train again") if best_file.is_file() else None
    if best:  # the run folder holds the best dev checkpoint, as LLM-Adapters' load_best_model_at_end does
        with whole_trainable(model, write_back=True):
            load_trainable(model, group_file(out / BEST, TRAINABLE_NAME),
                           fix=f"delete the folder {out / BEST} and train again")
    test = score_test(trainer, setup, f"best (step {best['step']})" if best else "last")
    tokens = (state.num_input_tokens_seen or 0) - tokens_before
    summary = {
        "model": config.model, "task": config.task, "adapter": config.adapter,
        "adapter_options": config.adapter_options,
        "wall_time_s": round(wall, 2), "steps": state.global_step, "epochs": state.epoch,
        "resumed_from": str(checkpoint) if checkpoint else None,
        "train_loss": result.training_loss, "train_tokens": tokens if setup.num_tokens is not None else None,
        "tokens_per_s": round(tokens / wall, 1) if setup.num_tokens is not None and wall > 0 else None,
        "best_metric": {"name": setup.metric_name, "value": best[setup.metric_name], "step": best["step"]} if best else None,
        "final_weights": f"best (step {best['step']})" if best else "last",
        "test_metric": test,
        "trainable_parameters": trainable, "total_parameters": total,
        "trainable_percent": round(100 * trainable / total, 4) if total else None,
        "world_size": world_size(), "engine": requested_engine() or ("DDP" if world_size() > 1 else None),
        "precision": resolve_precision(config.precision),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__, "adapterlab": __version__,
        "data": setup.info,
    }
    with whole_trainable(model):  # every process gathers sharded adapter weights; the main one writes them
        if main:
            save_final(model, config, setup, out)
    if main:
        record_outputs(out, [SUMMARY, PLOT])
        write_json(out / SUMMARY, summary)
        if (out / METRICS).is_file():
            plot_metrics(out / METRICS, out / PLOT, title=f"{config.model} {config.adapter} ({config.task})")
    return summary


def score_test(trainer: AdapterTrainer, setup: TaskSetup, weights: str) -> dict[str, Any] | None:
    """The task's test set (if it has one) scored by the dev metric with the final weights, once, after training
    (a prediction pass: the dev-set callbacks do not see it); None without a test set."""
    if setup.test_dataset is None:
        return None
    name = "test_" + setup.metric_name.removeprefix("eval_")
    metrics = trainer.predict(setup.test_dataset, metric_key_prefix="test").metrics
    return {"name": name, "value": metrics[name], "records": len(setup.test_dataset), "weights": weights}


def save_final(model: torch.nn.Module, config: TrainConfig, setup: TaskSetup, out: Path) -> None:
    """The run folder's weights: adapter (+ trained head) or, for full fine-tuning, the whole model; the processor.

    All are written into a staging folder, recorded in the run's manifest, and swapped in as one group.
    """
    def build(stage: Path) -> None:
        config.trainable.save(model, stage, setup.trainable_modules)
        if "labels" in setup.info:
            write_json(stage / "labels.json", {"labels": setup.info["labels"]})
        if setup.processor is not None:
            setup.processor.save_pretrained(stage)
        record_outputs(out, [p.name for p in stage.iterdir()])

    replace_files(out, build)
