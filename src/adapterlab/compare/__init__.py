"""`adapterlab compare`: adapters against full fine-tuning on real tasks, as Mundra et al. (2023, "A Comprehensive
Analysis of Adapter Efficiency") measured them: time and steps to the best dev score and to targets set by full
fine-tuning, memory, storage per task and serving latency, over seeds, with a report and plain-word verdicts.

    compare("minilm-l6", ["sst2", "boolq"], ["full", "lora", "pfeiffer"], seeds=3, output="compare/minilm")

`multitask-full` trains one encoder with one head per task on all the tasks at once (their multi-task baseline;
see compare/multitask.py), and `extend=TASK` adds TASK to a multi-task model trained on the others.

Their recipe trains every method at lr 3e-5, batch 32, evaluating each epoch with patience 3 over up to 50
epochs; here the budget is in steps (`max_steps`, `eval_steps`, `patience`) so that a study fits a CPU, and
adapters default to lr 1e-3 (at 3e-5 they barely move within a few hundred steps): pass `lr` to change either.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..models import model_folder
from ..output_folder import OutputFolder
from ..core.registry import make_config, method_names
from .analysis import FULL, all_tasks, full_targets, label, per_run, summarise, verdicts
from .baselines import no_signal, task_baselines, task_signal
from .fusion import FUSION, check_fusion, fusion_options, last
from .folder import OUTPUTS, comparison_folder, earlier, plan, resumed_settings, run_path
from .latency_summary import method_latency
from .multitask import EXTEND, MULTITASK, REPLAY, MultiTaskSpec
from .report import write_outputs
from .runs import RunSpec, run_all, run_isolated, train_config
from .serving import serving_throughput
from .tasks import HELD_OUT, CompareTask, resolve_task, split_file, subsample_file

DEFAULT_LR = {FULL: 3e-5, MULTITASK: 3e-5}  # theirs for full and multi-task fine-tuning
ADAPTER_LR = 1e-3


def check_methods(methods: list[str], options: dict[str, dict[str, Any]], lr: dict[str, float]) -> None:
    """Refuse unknown or repeated methods, and options or learning rates for methods not compared."""
    if not methods:
        raise UsageError("--methods is empty; give e.g. full,lora.")
    unknown = [m for m in methods if m not in (FULL, MULTITASK, *method_names())]
    if unknown:
        raise UsageError(f"--methods: unknown {unknown}; choose from full, {MULTITASK}, {', '.join(method_names())}.")
    if len(set(methods)) != len(methods):
        raise UsageError(f"--methods {methods} names one twice.")
    for what, given in (("--option", options), ("--lr", lr)):
        stray = sorted(set(given) - set(methods))
        if stray:
            raise UsageError(f"{what} was given for {stray}, which are not among --methods {methods}.")
    for method in (FULL, MULTITASK):
        if options.get(method):
            raise UsageError(f"--option: {method} (full fine-tuning) takes no options.")
    for method in methods:
        if method not in (FULL, MULTITASK, FUSION):  # fusion's members are named per run (compare/fusion.py)
            make_config(method, **options.get(method, {}))


def check_multitask(methods: list[str], tasks: list[str], extend: str | None, replay: float) -> None:
    """multitask-full needs two tasks or more; --extend names one of them and needs an adapter to set beside."""
    if MULTITASK in methods and len(tasks) < 2:
        raise UsageError(f"--methods {MULTITASK} trains one encoder for several tasks; give two or more --tasks "
                         f"(got {len(tasks)}).")
    if extend is None:
        return
    if len(tasks) < 2 or extend not in tasks:
        raise UsageError(f"--extend {extend!r} adds one of --tasks to a multi-task model trained on the others; "
                         f"name one of {tasks} and give at least two tasks.")
    if not [m for m in methods if m not in (FULL, MULTITASK)]:
        raise UsageError(f"--extend {extend} sets adding a task to a multi-task model beside training one adapter "
                         "for it; add an adapter method to --methods, e.g. full,lora.")
    if not 0 < replay <= 1:
        raise UsageError(f"--replay is the share of each old task's training set replayed, in (0, 1]; got {replay}.")


def prepared_tasks(specs: list[str], data_dir: str | None, out: Path, max_eval_samples: int | None) -> list[CompareTask]:
    """Resolve the tasks and fix their dev sets once: a held-out split where a task has no dev file, and a
    seeded subset of at most max_eval_samples records, both written under out/data."""
    tasks = []
    for spec in specs:
        task = resolve_task(spec, data_dir)
        train, dev = task.train, task.dev
        if dev is None:
            train, dev = split_file(train, HELD_OUT, 0, out / "data" / task.name)
        dev = subsample_file(dev, max_eval_samples, 0, out / "data" / task.name / f"dev-{max_eval_samples}{dev.suffix}")
        tasks.append(CompareTask(task.name, task.task, train, dev, task.options))
    if len({t.name for t in tasks}) < len(tasks):
        raise UsageError(f"--tasks {specs} names one task twice.")
    return tasks


def analyse(records: list[dict[str, Any]], fractions: list[float], settings: dict[str, Any],
            serving: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Everything the report shows, from the run records and serving rows alone (so a report can be rebuilt
    from results.json)."""
    refused = [r for r in records if "refused" in r]
    records = [r for r in records if "refused" not in r]
    targets = full_targets(records, fractions)
    names = [label(f) for f in fractions]
    rows = per_run(records, targets)
    summary = summarise(rows, names)
    latency = method_latency(records)
    serving = serving or []
    every_task = all_tasks(rows, names)
    metrics = {r["task"]: r.get("metric") for r in records if r["method"] == FULL}
    signals = task_signal(summary, settings.get("baselines") or {}, metrics)
    return {"settings": settings, "target_names": names, "targets": targets, "records": records, "rows": rows,
            "summary": summary, "latency": latency, "all_tasks": every_task, "serving": serving, "refused": refused,
            "baselines": signals, "verdicts": verdicts(summary, latency, names, every_task, serving, no_signal(signals))}


def compare(model: str, tasks: list[str], methods: list[str], output: str, seeds: int = 3,
            data_dir: str | None = None, options: dict[str, dict[str, Any]] | None = None,
            lr: dict[str, float] | None = None, max_train_samples: int | None = None,
            max_eval_samples: int | None = None, max_steps: int = 300, eval_steps: int = 25, patience: int = 3,
            batch_size: int = 32, cutoff_len: int = 128, targets: tuple[float, ...] = (0.99, 0.95),
            latency: bool = True, isolate: bool = True, extend: str | None = None, replay: float = REPLAY,
            done: Callable[[dict[str, Any]], None] | None = None, resume: bool = False,
            overwrite: bool = False) -> dict[str, Any]:
    """Train every method on every task for `seeds` seeds (full fine-tuning first, it sets the targets), then
    write results.json, results.csv, report.md and curves.png to `output` (rewritten after every run).

    `multitask-full` among the methods trains one encoder with one head per task on all tasks per seed;
    `extend` (a task name) also adds that task to a multi-task model trained on the others, with a `replay`
    share of their training sets (multitask-extend), to set beside the adapters trained on it alone.

    `output` follows the output-folder rule (compare/folder.py): a folder holding an earlier comparison is
    refused unless `resume` (its rows are kept and the new ones added) or `overwrite` (it is replaced); the
    folder is locked while the comparison runs. Raises UsageError when no run at all could be compared."""
    options, lr = dict(options or {}), dict(lr or {})
    check_methods(methods, options, lr)
    for name, value in (("--seeds", seeds), ("--max-steps", max_steps), ("--eval-steps", eval_steps),
                        ("--patience", patience), ("--batch-size", batch_size), ("--cutoff-len", cutoff_len)):
        if not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be a positive integer, got {value!r}.")
    if not all(0 < f <= 1 for f in targets):
        raise UsageError(f"--targets are fractions of full fine-tuning's score in (0, 1], got {list(targets)}.")
    if not tasks:
        raise UsageError("--tasks is empty; give e.g. sst2,boolq.")
    names = [resolve_task(t, data_dir).name for t in tasks]
    check_multitask(methods, names, extend, replay)
    check_fusion(methods, names, options)
    if resume and overwrite:
        raise UsageError("--resume adds to the comparison in --output and --overwrite replaces it; pass one.")
    folder = comparison_folder(Path(output).absolute())  # run settings record data paths: one spelling for all
    folder.check_place([("the folder of --model " + model, model_folder(model))])
    with folder.claim(overwrite, OUTPUTS, resume):
        return _compare(folder, model, tasks, methods, seeds, data_dir, options, lr, max_train_samples,
                        max_eval_samples, max_steps, eval_steps, patience, batch_size, cutoff_len, targets, latency,
                        isolate, extend, replay, done, resume, overwrite)


def _compare(folder: OutputFolder, model: str, tasks: list[str], methods: list[str], seeds: int,
             data_dir: str | None, options: dict[str, dict[str, Any]], lr: dict[str, float],
             max_train_samples: int | None, max_eval_samples: int | None, max_steps: int, eval_steps: int,
             patience: int, batch_size: int, cutoff_len: int, targets: tuple[float, ...], latency: bool,
             isolate: bool, extend: str | None, replay: float, done: Callable[[dict[str, Any]], None] | None,
             resume: bool, overwrite: bool) -> dict[str, Any]:
    """compare() in its claimed folder: plan the runs (refusing before anything of an earlier comparison goes),
    then train them and write the outputs after each."""
    out = folder.path
    folder.record(["data"])
    prepared = prepared_tasks(tasks, data_dir, out, max_eval_samples)
    order = sorted(methods, key=lambda m: m != FULL)
    lrs = {m: lr.get(m, DEFAULT_LR.get(m, ADAPTER_LR)) for m in order}
    if extend:  # the extension trains the multi-task model on: its learning rate
        lrs[EXTEND] = lrs.get(MULTITASK, DEFAULT_LR[MULTITASK])
    settings = {"model": model, "tasks": [t.name for t in prepared], "methods": order, "seeds": list(range(seeds)),
                "max_train_samples": max_train_samples, "max_eval_samples": max_eval_samples,
                "max_steps": max_steps, "eval_steps": eval_steps, "patience": patience, "batch_size": batch_size,
                "cutoff_len": cutoff_len, "lr": lrs, "options": options, "targets": list(targets),
                "extend": extend, "replay": replay if extend else None,
                "baselines": {t.name: task_baselines(t) for t in prepared}}

    def spec(method: str, task: CompareTask, seed: int) -> RunSpec:
        given = options.get(method, {})
        if method == FUSION:  # the other tasks' pfeiffer runs of this seed
            given = fusion_options(task.name, [t.name for t in prepared], seed, out / "runs", given)
        return RunSpec(method=method, task=task.name, task_type=task.task, seed=seed, train=str(task.train),
                       dev=str(task.dev), output=str(out / "runs" / task.name / f"{method}-seed{seed}"), model=model,
                       options=given, latency=latency and seed == 0,
                       settings=dict(max_steps=max_steps, eval_steps=eval_steps, early_stopping=patience,
                                     batch_size=batch_size, micro_batch_size=batch_size,
                                     lr=lrs.get(method, DEFAULT_LR[FULL]),
                                     warmup_steps=max(1, max_steps // 10), logging_steps=eval_steps,
                                     cutoff_len=cutoff_len, max_train_samples=max_train_samples, save_total_limit=1))

    def joint(method: str, seed: int, tasks_lr: float) -> MultiTaskSpec:
        """A multi-task run: each task's settings as full fine-tuning's, at the multi-task learning rate."""
        per_task = [spec(FULL, t, seed) for t in prepared]
        for s in per_task:
            s.settings["lr"] = tasks_lr
        return MultiTaskSpec(method=method, seed=seed, tasks=per_task, extend=extend if method == EXTEND else None,
                             replay=replay, output=str(out / "runs" / method / f"seed{seed}"))

    specs: list[Any] = []
    for s in range(seeds):
        specs += last([spec(m, t, s) for t in prepared for m in order if m != MULTITASK])
        if MULTITASK in order:
            specs.append(joint(MULTITASK, s, lrs[MULTITASK]))
        if extend:
            specs.append(joint(EXTEND, s, lrs[EXTEND]))
    old_settings, records, old_serving = earlier(folder) if resume else ({}, [], [])
    settings = resumed_settings(folder, old_settings, settings)
    todo = plan(folder, specs, {spec_key(r) for r in records}, overwrite)
    if overwrite:
        folder.clear()
    folder.record([*OUTPUTS, *(run_path(folder, s) for s in todo if not getattr(s, "reuse", False))])

    def finished(record: dict[str, Any]) -> None:
        records.append(record)
        write_outputs(analyse(records, list(targets), settings, old_serving), out)
        if done is not None:
            done(record)

    prepared_tasks(tasks, data_dir, out, max_eval_samples)  # again: --overwrite removed the earlier data/
    run_all(todo, isolate=isolate, done=finished)
    result = analyse(records, list(targets), settings, old_serving)
    if not result["records"]:
        first = result["refused"][0] if result["refused"] else None
        why = f" (e.g. {first['method']} on {first['task']}: {first['refused']})" if first else ""
        raise UsageError(f"nothing could be compared: every run was refused{why}; results.json lists each "
                         "refusal. Choose methods and tasks that fit each other.".replace("\n", " "))
    if latency and len(prepared) > 1:
        single = [m for m in order if m != MULTITASK]  # a multi-task model serves like one full model with T heads
        first = {m: {s.task: train_config(s) for s in specs if isinstance(s, RunSpec) and s.method == m and s.seed == 0}
                 for m in single}
        serving = [run_isolated(serving_throughput, isolate, first[m], m, batch_size) for m in single]
        kept = [row for row in old_serving if row.get("method") not in single]
        result = analyse(records, list(targets), settings, kept + serving)
        write_outputs(result, out)
    return result


def spec_key(record: dict[str, Any]) -> tuple[str, str, int]:
    return record["method"], record["task"], record["seed"]


__all__ = ["compare", "analyse"]
