"""One training run of a comparison (method x task x seed) and what it records: the dev curve against training
time, the best dev score, peak memory, trainable parameters, bytes stored per task, and serving latency.

Each run can go in a fresh spawned process (`isolate`, measure.fresh_process), so its peak memory is its own; a
spec runs itself (`records`), so a multi-task spec (compare.multitask) runs here without this module naming it.
"""

from __future__ import annotations

import resource
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import AdapterError
from ..files import read_json_object
from ..measure.fresh_process import run_isolated
from ..train import TrainConfig, train
from ..train.callbacks import read_log
from .latency import serving_latency
from ..train.trainable import FULL



@dataclass
class RunSpec:
    """Everything one run needs; plain data so that it crosses into a spawned process."""

    method: str
    task: str  # the comparison task's name
    task_type: str  # the training task (seq-cls, multiple-choice)
    seed: int
    train: str
    dev: str | None
    output: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)  # adapter options
    settings: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    latency: bool = False  # also time serving (once per method and task: it does not depend on the seed)
    latency_batches: tuple[int, ...] = (1, 32)
    reuse: bool = False  # a finished run of these settings is already in `output`: record it, do not train

    def records(self) -> list[dict[str, Any]]:
        """This run's record; a method that cannot run this task (prompt tuning on multiple choice) gets a row
        saying why."""
        try:
            return [run_one(self)]
        except AdapterError as exc:
            return [{"method": self.method, "task": self.task, "seed": self.seed, "refused": str(exc)}]


def train_config(spec: RunSpec) -> TrainConfig:
    """The TrainConfig of a run: dev file or a held-out share, early stopping, every eval logged."""
    dev = {"eval_data": [spec.dev]} if spec.dev else {"val_size": spec.settings.get("val_size", 0.2)}
    settings = {k: v for k, v in spec.settings.items() if k != "val_size"}
    return TrainConfig(model=spec.model, task=spec.task_type, data=[spec.train], output=spec.output,
                       adapter=spec.method, adapter_options=dict(spec.options), seed=spec.seed, overwrite=True,
                       **dev, **settings)


def stored_bytes(run: Path, method: str) -> int:
    """Bytes a task needs on disk beside the shared base: the adapter and head files, or the whole model."""
    names = ("*.safetensors",) if method == FULL else ("adapter*.safetensors", "head*.safetensors")
    return sum(f.stat().st_size for pattern in names for f in run.glob(pattern) if f.is_file())


def dev_curve(run: Path, metric: str) -> list[dict[str, float]]:
    """(step, training seconds, dev score) at every evaluation of a run, in order."""
    return [{"step": r["step"], "train_time_s": r["train_time_s"], "score": r[metric]}
            for r in read_log(run / "metrics.jsonl") if metric in r]


def peak_memory() -> dict[str, float | None]:
    """This process's peak resident memory and peak CUDA memory so far, in MB."""
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if sys.platform == "darwin":
        peak_rss_mb /= 1024  # macOS reports bytes
    return {"peak_rss_mb": round(peak_rss_mb, 1),
            "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None}


def run_one(spec: RunSpec) -> dict[str, Any]:
    """Train one run (or read the finished one a `reuse` spec names) and return its record (JSON-ready)."""
    config = train_config(spec)
    if spec.reuse:
        summary = read_json_object(Path(spec.output) / "summary.json", "move the run away and compare again")
    else:
        summary = train(config)
        shutil.rmtree(Path(spec.output) / "checkpoints", ignore_errors=True)  # optimizer states: many runs
    metric = summary["best_metric"]["name"] if summary.get("best_metric") else "eval_accuracy"
    record = {
        "method": spec.method, "task": spec.task, "seed": spec.seed, "metric": metric,
        "curve": dev_curve(Path(spec.output), metric),
        "steps": summary["steps"], "train_tokens": summary.get("train_tokens"),
        "trainable_parameters": summary["trainable_parameters"], "total_parameters": summary["total_parameters"],
        "stored_bytes": stored_bytes(Path(spec.output), spec.method), **peak_memory(),
        "device": summary["device"], "run": spec.output,
    }
    if spec.latency:
        record["latency"] = serving_latency(config, spec.latency_batches)
    return record


def run_records(spec: Any) -> list[dict[str, Any]]:
    """The records of one spec (module-level, so a spawned process can unpickle it): a RunSpec gives one, a
    multi-task spec one per task it trains."""
    return spec.records()


def run_all(specs: list[Any], isolate: bool = True, done: Any = None) -> list[dict[str, Any]]:
    """Run every spec in order (each in its own spawned process when `isolate`), calling done(record) after each."""
    records = []
    for spec in specs:
        for record in run_isolated(run_records, isolate, spec):
            records.append(record)
            if done is not None:
                done(record)
    return records


__all__ = ["RunSpec", "asdict", "run_all", "run_isolated", "run_one"]
