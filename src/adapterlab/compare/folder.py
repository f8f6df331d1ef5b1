"""A comparison's --output folder under the one output-folder rule (output_folder.py): what compare wrote, the
earlier comparison a --resume adds to, and which runs under runs/ to train, to reuse or to refuse.

A run compare finds at OUTPUT/runs/<task>/<method>-seed<k> is reused when it finished with the settings this
comparison would train it with, refused (named, with the settings that differ) otherwise, and deleted only
when compare itself started it (the manifest lists every run it started).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import RunFolderError
from ..files import read_json_object
from ..output_folder import OutputFolder
from ..train.run_dir import SUMMARY, differences, read_run_config
from .runs import RunSpec, train_config
from ..train.trainable import FULL

OUTPUTS = ("data", "results.json", "results.csv", "report.md", "curves.png")  # runs/ holds runs, one by one
# Settings every row of one comparison shares; methods, tasks and seeds may grow with --resume.
SHARED = ("model", "max_train_samples", "max_eval_samples", "max_steps", "eval_steps", "patience", "batch_size",
          "cutoff_len", "targets", "extend", "replay")


def comparison_folder(output: str | Path) -> OutputFolder:
    """The folder compare writes: --output, which --resume may add to."""
    return OutputFolder(output, "compare", "--output", resumable=True)


def run_path(folder: OutputFolder, spec: Any) -> str:
    """A run's folder relative to the comparison's, as the manifest lists it."""
    return PurePosixPath(Path(spec.output).relative_to(folder.path)).as_posix()


def earlier(folder: OutputFolder) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(settings, run records with refusals, serving rows) of the comparison already in `folder`."""
    path = folder.path / "results.json"
    if not path.is_file():
        return {}, [], []
    data = read_json_object(path, "pass --overwrite to start the comparison afresh")
    return data.get("settings") or {}, [*data.get("records", []), *data.get("refused", [])], data.get("serving") or []


def resumed_settings(folder: OutputFolder, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The settings of the comparison `new` adds rows to: refused where a shared setting, or the learning rate or
    options of a method both compare, differ; methods, tasks, seeds, lr, options and
    the tasks' baselines are the union."""
    if not old:
        return new
    diff = [k for k in SHARED if old.get(k) != new.get(k)]
    for key in ("lr", "options"):
        diff += [f"{key} of {m}" for m in new[key] if m in old.get(key, {}) and old[key][m] != new[key][m]]
    if diff:
        raise RunFolderError(f"--resume: the comparison in {folder.path} was made with other settings "
                             f"({', '.join(diff)} differ); resume with the same ones, or start afresh with "
                             "--overwrite.")
    union = {k: list(dict.fromkeys([*old.get(k, []), *new[k]])) for k in ("tasks", "methods", "seeds")}
    union["methods"].sort(key=lambda m: m != FULL)
    return {**new, **union, "lr": {**old.get("lr", {}), **new["lr"]},
            "options": {**old.get("options", {}), **new["options"]},
            "baselines": {**old.get("baselines", {}), **new.get("baselines", {})}}


def spec_keys(spec: Any) -> list[tuple[str, str, int]]:
    """(method, task, seed) of the records a spec yields."""
    if isinstance(spec, RunSpec):
        return [(spec.method, spec.task, spec.seed)]
    if spec.extend:
        return [(spec.method, spec.extend, spec.seed)]
    return [(spec.method, t.task, spec.seed) for t in spec.tasks]


def plan(folder: OutputFolder, specs: list[Any], done: set[tuple[str, str, int]], overwrite: bool) -> list[Any]:
    """The specs to run, in order: those whose records `done` lacks, each a RunSpec with `reuse` set where a
    finished run with its settings is already in place; a run folder compare cannot use is refused."""
    started = folder.written()
    todo = []
    for spec in specs:
        if all(key in done for key in spec_keys(spec)):
            continue
        path = Path(spec.output)
        if not path.is_dir() or not any(path.iterdir()) or run_path(folder, spec) in started and overwrite:
            todo.append(spec)
            continue
        saved = read_run_config(path) if isinstance(spec, RunSpec) else None
        finished = saved is not None and (path / SUMMARY).is_file()
        diff = differences(saved, train_config(spec)) if finished else None
        if diff == []:
            todo.append(dataclasses.replace(spec, reuse=True))
        elif run_path(folder, spec) in started:
            todo.append(spec)  # compare's own run, unfinished or of other settings: trained afresh
        elif diff:
            raise RunFolderError(f"{path} holds a run compare did not start, made with other settings "
                                 f"({', '.join(diff)} differ); move it away, or run compare with those settings.")
        else:
            raise RunFolderError(f"{path} holds files compare did not write (no finished run of its own); move "
                                 "them away or choose another --output.")
    return todo


__all__ = ["OUTPUTS", "comparison_folder", "earlier", "plan", "resumed_settings", "run_path", "spec_keys"]
