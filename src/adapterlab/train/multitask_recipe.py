"""Multi-task full fine-tuning on the HF Trainer: one shared encoder, one head per task, size-proportional task
batches, every task's dev set evaluated every eval_steps, early stopping when no task improves.

    configs = {"sst2": TrainConfig(model=..., task="seq-cls", data=[...], eval_data=[...], output=...), ...}
    model, setups = build_multitask(configs)
    summary = train_multitask(model, setups, configs["sst2"], "runs/mtl")

Each task is prepared by its own task module (its TaskSetup: model with head, datasets, collator, metric); the
training settings (lr, steps, batch size, warmup, seed, precision, early stopping) come from one TrainConfig.
metrics.jsonl gets one record per task and evaluation, with `eval_<task>_<metric>` and the shared
`train_time_s` clock. The run folder holds the weights at the evaluation with the best mean dev score over the
tasks: shared-encoder.safetensors once, head-<task>.safetensors per task, and summary.json.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, set_seed

from ..core.engine import count_parameters
from ..errors import AdapterError
from ..files import replace_files, write_json, write_safetensors
from ..tasks.base import TaskSetup
from .callbacks import MetricsLog
from .progress import use_readable_progress
from .config import TrainConfig
from .engines import check_engine_request
from .multitask import MultiTaskModel, ProportionalTaskBatches, TaskCollator, TaskExamples
from .recipe import prepare_task, resolve_precision, training_arguments
from .run_dir import METRICS, SUMMARY, check_output, clear_run, record_outputs
from .run_folder import RunFolder
from ..folder_lock import claim_run_folder

ENCODER_FILE = "shared-encoder.safetensors"


def head_file(task: str) -> str:
    return f"head-{task}.safetensors"


def task_metric(task: str, metric_name: str) -> str:
    """The key of a task's dev metric in a multi-task log: eval_accuracy of task sst2 -> eval_sst2_accuracy."""
    return f"eval_{task}_{metric_name.removeprefix('eval_')}"


def build_multitask(configs: dict[str, TrainConfig]) -> tuple[MultiTaskModel, dict[str, TaskSetup]]:
    """Prepare every task (its own module, same base model) and share the first task model's encoder."""
    models = [c.model for c in configs.values()]
    if len(set(models)) > 1:
        raise AdapterError(f"Multi-task training shares one encoder, so every task needs the same --model; got {models}.")
    setups = {name: prepare_task(config) for name, config in configs.items()}
    return MultiTaskModel({name: s.model for name, s in setups.items()}), setups


class TaskPatience:
    """The best dev score of each task so far; `update` says when no task improved for `patience` evaluations."""

    def __init__(self, greater: dict[str, bool], patience: int | None) -> None:
        self.greater, self.patience, self.best, self.misses = greater, patience, {}, 0

    def update(self, scores: dict[str, float]) -> bool:
        """Take one evaluation's scores (task -> value); True when training should stop."""
        improved = False
        for task, value in scores.items():
            best = self.best.get(task)
            if not math.isnan(value) and (best is None or (value > best if self.greater[task] else value < best)):
                self.best[task], improved = value, True
        self.misses = 0 if improved else self.misses + 1
        return bool(self.patience) and self.misses >= self.patience


class MultiTaskTrainer(Trainer):
    """The Trainer with task batches from ProportionalTaskBatches, each task's dev set scored by its own metric,
    early stopping over all tasks and the weights of the best mean dev score kept (on the CPU)."""

    def __init__(self, *args: Any, setups: dict[str, TaskSetup], sampler: ProportionalTaskBatches,
                 patience: int | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.setups, self.sampler = setups, sampler
        self.metric_keys = {t: task_metric(t, s.metric_name) for t, s in setups.items() if s.eval_dataset is not None}
        self.patience = TaskPatience({t: s.greater_is_better for t, s in setups.items()}, patience)
        self.best_mean, self.best_step, self.best_state = -math.inf, None, None

    def get_train_dataloader(self) -> DataLoader:
        loader = DataLoader(self.train_dataset, batch_sampler=self.sampler, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        return self.accelerator.prepare(loader)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        if isinstance(eval_dataset, str):  # one task of the dict of dev sets, as Trainer.evaluate walks it
            self.compute_metrics = self.setups[eval_dataset].compute_metrics
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        scores = {t: metrics[k] for t, k in self.metric_keys.items()}
        missing = sorted(k for t, k in self.metric_keys.items() if k not in metrics)
        if missing:
            raise AdapterError(f"The dev metrics {missing} are not among the evaluation results {sorted(metrics)}.")
        signed = [v if self.setups[t].greater_is_better else -v for t, v in scores.items()]
        mean = sum(signed) / len(signed)
        if mean > self.best_mean:
            self.best_mean, self.best_step = mean, self.state.global_step
            self.best_state = {n: p.detach().to("cpu", copy=True) for n, p in self.model.named_parameters()}
        if self.patience.update(scores):
            self.control.should_training_stop = True
        return metrics


def save_multitask(model: MultiTaskModel, setups: dict[str, TaskSetup], out: Path) -> dict[str, int]:
    """Write the shared encoder once, each task's head and the processor, swapped in as one group; returns
    task -> bytes it needs on disk (the shared encoder divided by the number of tasks, plus its head)."""
    def cpu(params: Any) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in params}

    def build(stage: Path) -> None:
        write_safetensors(stage / ENCODER_FILE, cpu(model.encoder.named_parameters()))
        for task in model.tasks:
            write_safetensors(stage / head_file(task), cpu(model.head_parameters(task).items()))
        processor = next((s.processor for s in setups.values() if s.processor is not None), None)
        if processor is not None:
            processor.save_pretrained(stage)
        record_outputs(out, [p.name for p in stage.iterdir()])

    replace_files(out, build)
    shared = (out / ENCODER_FILE).stat().st_size / len(model.tasks)
    return {t: round(shared + (out / head_file(t)).stat().st_size) for t in model.tasks}


def train_multitask(model: MultiTaskModel, setups: dict[str, TaskSetup], config: TrainConfig,
                    output: str | Path) -> dict[str, Any]:
    """Train every task of `model` jointly with `config`'s settings; returns the summary (also summary.json)."""
    if not config.trainable.full:
        raise AdapterError(f"Multi-task training here is full fine-tuning (one shared encoder); got --adapter "
                           f"{config.adapter}. Train adapters one task at a time.")
    check_engine_request(full_model=True)
    if config.resume or config.save_steps:
        raise AdapterError(f"{'--resume' if config.resume else '--save-steps'}: multi-task runs keep no checkpoints "
                           "(the best weights stay in memory until the end); drop it.")
    if set(setups) != set(model.tasks):
        raise AdapterError(f"The task setups {sorted(setups)} do not match the model's tasks {sorted(model.tasks)}.")
    out = Path(output)
    check_output(out, config.model)
    RunFolder(out).check_new(config.overwrite)
    with claim_run_folder(out):
        return _train(model, setups, config, out)


def _train(model: MultiTaskModel, setups: dict[str, TaskSetup], config: TrainConfig, out: Path) -> dict[str, Any]:
    """`train_multitask` once the run folder is ours."""
    set_seed(config.seed)
    model.requires_grad_(True)
    train_set = TaskExamples({t: s.train_dataset for t, s in setups.items()})
    evals = {t: TaskExamples({t: s.eval_dataset}) for t, s in setups.items() if s.eval_dataset is not None}
    tokens = [s.num_tokens for s in setups.values()]
    joint = TaskSetup(model=model, train_dataset=train_set, eval_dataset=evals or None, data_collator=None,
                      num_tokens=sum(tokens) if None not in tokens else None)
    args = dataclasses.replace(training_arguments(config, joint, out / "checkpoints"), save_strategy="no",
                               remove_unused_columns=False, label_names=["labels"])
    sampler = ProportionalTaskBatches(train_set.sizes, config.micro_batch_size, config.seed)
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=evals or None,
                               data_collator=TaskCollator({t: s.data_collator for t, s in setups.items()}),
                               callbacks=[MetricsLog(out / METRICS)], setups=setups, sampler=sampler,
                               patience=config.early_stopping)
    use_readable_progress(trainer)
    clear_run(out)
    record_outputs(out, [METRICS, SUMMARY])
    start = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - start
    if trainer.best_state is not None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(trainer.best_state[name].to(param.device, param.dtype))
    stored = save_multitask(model, setups, out)
    trainable, total = count_parameters(model)
    summary = {
        "model": config.model, "tasks": list(setups), "seed": config.seed, "wall_time_s": round(wall, 2),
        "steps": trainer.state.global_step, "train_loss": result.training_loss,
        "train_tokens": trainer.state.num_input_tokens_seen if joint.num_tokens is not None else None,
        "task_batches_per_epoch": dict(zip(setups, sampler.batches_per_task())),
        "metrics": trainer.metric_keys, "best_per_task": trainer.patience.best, "best_step": trainer.best_step,
        "final_weights": f"best mean dev score over tasks (step {trainer.best_step})" if trainer.best_step else "last",
        "trainable_parameters": trainable, "total_parameters": total, "stored_bytes_per_task": stored,
        "precision": resolve_precision(config.precision),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})",
        "data": {t: s.info for t, s in setups.items()},
    }
    write_json(out / SUMMARY, summary)
    return summary
