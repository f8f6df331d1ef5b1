"""`adapterlab train --cross-validate`: one ordinary training per fold of the run's split, then a summary.

Each fold trains with `train` (the recipe, unchanged) into OUTPUT/fold-K, an ordinary run folder whose config
names the fold. OUTPUT/cross_validation.json and .md then list each fold's best dev metric (and its test
metric, where the split has a test set), with their mean and standard deviation over the folds. Every fold's
folder is checked before the first one trains, so a clash at fold 4 does not surface hours in. With --resume,
folds already finished are read back, the interrupted one continues, and the rest start.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Any

from ..errors import RunClashError, UsageError
from ..files import read_json_object, write_atomic, write_json
from ..tasks import task_module
from .config import TrainConfig
from .recipe import is_main_process, train
from .checkpointing import last_checkpoint
from .run_dir import CHECKPOINTS, CONFIG_FILE, SUMMARY, check_output, differences, read_run_config
from .run_folder import RunFolder

SUMMARY_JSON, SUMMARY_MD = "cross_validation.json", "cross_validation.md"
STD_NOTE = "population standard deviation over the folds (ddof=0, numpy.std, as PETL-for-AST's main.py reports)"


def task_folds(config: TrainConfig) -> list[str]:
    """The folds of the run's task and split; a task or split without folds is refused."""
    folds = getattr(task_module(config.task), "folds", None)
    if folds is None:
        raise UsageError(f"--cross-validate: --task {config.task} has no splits with folds; drop --cross-validate.")
    return folds(config.task_options())


def fold_config(config: TrainConfig, fold: str) -> TrainConfig:
    """The config of fold `fold`: the same settings with --fold, into OUTPUT/fold-K. Under --resume a fold that
    never started, or was stopped before its first checkpoint (nothing to continue from), starts afresh."""
    out = Path(config.output) / f"fold-{fold}"
    plan = dataclasses.replace(config, fold=fold, cross_validate=False, output=str(out),
                               resume=config.resume and (out / CONFIG_FILE).is_file())
    if plan.resume and not (out / SUMMARY).is_file() and last_checkpoint(out / CHECKPOINTS) is None \
            and not differences(read_run_config(out) or {}, plan):
        plan = dataclasses.replace(plan, resume=False, overwrite=True)
    return plan


def finished(config: TrainConfig) -> bool:
    """Whether the fold run of `config` already finished and is to be read back (--resume only)."""
    return config.resume and (Path(config.output) / SUMMARY).is_file()


def check_folders(config: TrainConfig, plans: list[TrainConfig]) -> None:
    """Refuse, before anything trains, an --output holding a single run or an earlier cross-validation (without
    --resume / --overwrite), and any fold folder its own run would refuse."""
    out = Path(config.output)
    check_output(out, config.model)
    if (out / CONFIG_FILE).is_file():
        raise RunClashError(f"--output {out} holds a single run ({CONFIG_FILE}); --cross-validate writes one run "
                             "folder per fold inside --output: choose another folder.")
    if (out / SUMMARY_JSON).is_file() and not (config.resume or config.overwrite):
        raise RunClashError(f"--output {out} already holds a cross-validation ({SUMMARY_JSON}); pass --resume to "
                             "continue it, --overwrite to start over, or choose another --output.")
    for plan in plans:
        plan.validate()
        fold_out = Path(plan.output)
        check_output(fold_out, plan.model)
        if not finished(plan):
            RunFolder(fold_out).check(plan)  # refuses what the fold's own run would refuse
            continue
        changed = differences(read_run_config(fold_out) or {}, plan)
        if changed:
            raise RunClashError(f"--resume: the finished run in {fold_out} was made with other settings "
                               f"({', '.join(changed)} differ); resume with the same settings, or start over with "
                               "--overwrite.")


def cross_validate(config: TrainConfig) -> dict[str, Any]:
    """Train every fold of `config`'s split (runs OUTPUT/fold-K) and write the summary; returns it."""
    if not config.cross_validate:
        raise UsageError("cross_validate(config) needs config.cross_validate = True (--cross-validate).")
    config.validate()
    folds = task_folds(config)
    plans = [fold_config(config, fold) for fold in folds]
    out = Path(config.output)
    if is_main_process():
        check_folders(config, plans)
        for name in (SUMMARY_JSON, SUMMARY_MD):  # an earlier summary would outlive a failed fold
            (out / name).unlink(missing_ok=True)
    summaries = [read_json_object(Path(p.output) / SUMMARY, f"delete {p.output} and run again with --resume")
                 if finished(p) else train(p) for p in plans]
    report = summarize(config, folds, summaries)
    if is_main_process():
        write_json(out / SUMMARY_JSON, report)
        write_atomic(out / SUMMARY_MD, lambda tmp: Path(tmp).write_text(markdown(report)))
    return report


def spread(name: str | None, values: list[float | None]) -> dict[str, Any] | None:
    """Mean and (population) standard deviation of the folds' values; None when a fold has none."""
    if name is None or any(v is None for v in values):
        return None
    return {"name": name, "mean": statistics.fmean(values), "std": statistics.pstdev(values), "folds": len(values)}


def summarize(config: TrainConfig, folds: list[str], summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The cross-validation summary: per fold its run folder, best dev metric and test metric; mean and std."""
    rows = [{"fold": fold, "run": f"fold-{fold}", "best_dev": s["best_metric"], "test": s.get("test_metric"),
             "steps": s["steps"], "wall_time_s": s["wall_time_s"]} for fold, s in zip(folds, summaries)]
    dev_name = next((r["best_dev"]["name"] for r in rows if r["best_dev"]), None)
    test_name = next((r["test"]["name"] for r in rows if r["test"]), None)
    return {
        "task": config.task, "split": config.split, "model": config.model, "adapter": config.adapter,
        "folds": rows,
        "best_dev": spread(dev_name, [r["best_dev"]["value"] if r["best_dev"] else None for r in rows]),
        "test": spread(test_name, [r["test"]["value"] if r["test"] else None for r in rows]),
        "std": STD_NOTE,
    }


def markdown(report: dict[str, Any]) -> str:
    """The summary as a Markdown table: one row per fold, then mean ± std."""
    dev, test = report["best_dev"], report["test"]
    dev_name = dev["name"] if dev else "dev metric"
    lines = [f"# Cross-validation: --split {report['split']}, {len(report['folds'])} folds", "",
             f"{report['model']}, --adapter {report['adapter']}. Each fold is an ordinary run folder.", "",
             f"| fold | run | best {dev_name} | step |" + (f" {test['name']} |" if test else ""),
             "|---|---|---|---|" + ("---|" if test else "")]
    for row in report["folds"]:
        best = row["best_dev"]
        cells = [row["fold"], row["run"], f"{best['value']:.4f}" if best else "no dev evaluation",
                 str(best["step"]) if best else ""]
        if test:
            cells.append(f"{row['test']['value']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    pair = lambda s: f"**{s['mean']:.4f} ± {s['std']:.4f}**" if s else "n/a"  # noqa: E731
    lines.append(f"| mean ± std | | {pair(dev)} | |" + (f" {pair(test)} |" if test else ""))
    lines += ["", f"std: {report['std']}."]
    if test:
        lines.append("Test scores are those of each fold's final weights (its best dev checkpoint).")
    return "\n".join(lines) + "\n"
