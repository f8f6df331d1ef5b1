"""Multi-task full fine-tuning in a comparison (Mundra et al. 2023): `multitask-full` trains one encoder with one
head per task on all the comparison's tasks at once; `multitask-extend` adds one task to a multi-task model
trained on the others, as their add_task.py does, to set beside training one adapter for that task.

One multi-task run serves every task, so it yields one record per task whose curve is that task's dev score on
the run's single training clock. Bytes stored per task are the shared encoder divided by the number of tasks
plus the task's head; trainable parameters are those of the whole multi-task model.

The extension: the model trained on the other tasks gains the new task's fresh head, then trains on the new
task's training set plus a seeded replay share of each old task's (their default: one shard in 5, 20%), batches
again drawn in proportion to size. Only this second phase is timed; the old tasks' dev scores before and after
it are recorded (what adding the task cost them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.splits import subsample
from ..train.multitask_recipe import build_multitask, train_multitask
from ..train.recipe import prepare_task
from .runs import RunSpec, dev_curve, peak_memory, train_config

MULTITASK = "multitask-full"
EXTEND = "multitask-extend"
REPLAY = 0.2  # add_task.py: every old task's training set .shard(num_shards=5, index=0)


@dataclass
class MultiTaskSpec:
    """One multi-task run of a comparison; `tasks` are the per-task specs (method full), in order."""

    method: str  # MULTITASK or EXTEND
    seed: int
    tasks: list[RunSpec]
    output: str
    extend: str | None = None  # EXTEND: the task added last
    replay: float = REPLAY
    settings: dict[str, Any] = field(default_factory=dict)

    def records(self) -> list[dict[str, Any]]:
        """Train this multi-task run (or the extension); one record per task it reports."""
        return run_spec(self)


def _configs(spec: MultiTaskSpec, names: list[str], output: Path) -> dict[str, Any]:
    return {t.task: train_config(dataclasses.replace(t, output=str(output))) for t in spec.tasks if t.task in names}


def _score_at(curve: list[dict[str, float]], step: int | None) -> float | None:
    """The dev score of the evaluation at `step` (the weights a run keeps), else its last one."""
    at = [p["score"] for p in curve if p["step"] == step] or [p["score"] for p in curve[-1:]]
    return at[0] if at else None


def _records(spec: MultiTaskSpec, summary: dict[str, Any], run: Path, tasks: list[str],
             extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One comparison record per task of a multi-task run (the curve of that task on the shared clock)."""
    shared = {"tasks": list(summary["tasks"]), "run": str(run)}
    return [{
        "method": spec.method, "task": task, "seed": spec.seed, "metric": summary["metrics"][task],
        "curve": dev_curve(run, summary["metrics"][task]), "steps": summary["steps"],
        "train_tokens": summary.get("train_tokens"), "trainable_parameters": summary["trainable_parameters"],
        "total_parameters": summary["total_parameters"], "stored_bytes": summary["stored_bytes_per_task"][task],
        **peak_memory(), "device": summary["device"], "run": str(run), "shared_run": shared, **(extra or {}),
    } for task in tasks]


def run_multitask(spec: MultiTaskSpec) -> list[dict[str, Any]]:
    """Train one encoder on all tasks of `spec`; one record per task."""
    out = Path(spec.output)
    names = [t.task for t in spec.tasks]
    configs = _configs(spec, names, out)
    model, setups = build_multitask(configs)
    summary = train_multitask(model, setups, configs[names[0]], out)
    return _records(spec, summary, out, names)


def run_extension(spec: MultiTaskSpec) -> list[dict[str, Any]]:
    """Train on every task but `spec.extend`, then add it with a replay share of the others; its record."""
    out, new = Path(spec.output), spec.extend
    old = [t.task for t in spec.tasks if t.task != new]
    base_configs = _configs(spec, old, out / "base")
    model, setups = build_multitask(base_configs)
    base = train_multitask(model, setups, base_configs[old[0]], out / "base")
    before = {t: _score_at(dev_curve(out / "base", base["metrics"][t]), base["best_step"]) for t in old}

    added = _configs(spec, [new], out / "added")[new]
    new_setup = prepare_task(added)
    model.add_task(new, new_setup.model)
    replayed = {t: dataclasses.replace(setups[t], train_dataset=subsample(
        list(setups[t].train_dataset), max(1, round(spec.replay * len(setups[t].train_dataset))), spec.seed))
        for t in old}
    summary = train_multitask(model, {**replayed, new: new_setup}, added, out / "added")
    after = {t: _score_at(dev_curve(out / "added", summary["metrics"][t]), summary["best_step"]) for t in old}
    extension = {"added_task": new, "replay": spec.replay, "base_tasks": old, "base_run": str(out / "base"),
                 "base_train_time_s": max((p["train_time_s"] for t in old for p in
                                           dev_curve(out / "base", base["metrics"][t])), default=None),
                 "old_tasks_dev": {t: {"before": before[t], "after": after[t]} for t in old}}
    return _records(spec, summary, out / "added", [new], {"extension": extension})


def run_spec(spec: MultiTaskSpec) -> list[dict[str, Any]]:
    """The records of a multi-task spec: the joint run's, or the extension's."""
    return run_extension(spec) if spec.method == EXTEND else run_multitask(spec)
