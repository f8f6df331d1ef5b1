"""--few-shot and --max-train-samples on every registered task: the training set has the size they promise, or
the task refuses the flag in one line naming it (the walk in test_train_flags.py only checks that they change
something)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from typing import Any

import pytest
from test_train_flags import baseline, files  # noqa: F401 (fixture: each task's tiny model and data)
from train_helpers import trainer_arguments

from adapterlab.tasks import TASKS, task_module


def training_set(argv: list[str], monkeypatch, capsys) -> list[tuple[str, Any]] | str:
    """(example key, label) of each training example `adapterlab train ARGV` would train on, or its one-line error."""
    seen = trainer_arguments(argv, monkeypatch, capsys)
    if isinstance(seen, str):
        return seen
    dataset = seen["train_dataset"]
    if isinstance(dataset, list):
        return [(json.dumps(x, sort_keys=True), json.dumps(x["labels"])) for x in dataset]
    return [(str(f), label) for f, label in zip(dataset.files, dataset.labels)]


@pytest.mark.parametrize("flag", ["--max-train-samples", "--few-shot"])
@pytest.mark.parametrize("task", list(TASKS))
def test_subset_flags_give_the_promised_training_set_or_are_refused(task, flag, files, tmp_path, monkeypatch,
                                                                    capsys, single_thread):
    out = tmp_path / "run"
    base = baseline(task, {**files[task], "root": tmp_path}, out)

    def run(*extra: str) -> Any:
        try:
            return training_set(base + list(extra), monkeypatch, capsys)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    full = run("--val-size", "0")
    assert isinstance(full, list) and len(full) > 8, full
    field = flag[2:].replace("-", "_")
    if field not in task_module(task).TRAIN_FIELDS:
        refusal = run(flag, "2")
        assert isinstance(refusal, str) and f"{flag} does not apply to --task {task}" in refusal, refusal
        return
    if flag == "--max-train-samples":
        subset = run("--val-size", "0", flag, "8")
        assert len(subset) == 8 and set(subset) <= set(full)
        assert run("--val-size", "0", flag, "8", "--seed", "7") != subset, "the subset is drawn by --seed"
        assert len(run("--val-size", "2", flag, "8")) == 6, "the dev records are held out of the subset"
    else:
        classes = Counter(label for _, label in full)
        shots = run("--val-size", "0", flag, "2")
        assert Counter(label for _, label in shots) == {label: 2 for label in classes} and set(shots) <= set(full)
        with_dev = run(flag, "2")  # the baseline holds --val-size 2 out first
        assert Counter(label for _, label in with_dev) == {label: 2 for label in classes}
