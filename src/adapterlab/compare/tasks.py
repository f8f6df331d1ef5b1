"""The tasks a comparison runs: known names (sst2, boolq and the commonsense sets arc-e, arc-c, piqa, siqa, obqa,
hellaswag, winogrande) read --data-dir, else $ADAPTERLAB_DATA, else the data cache (data/locations.py), in
LLM-Adapters' layout; or any file.

A known name gives the training task, the training file and the dev file; a set without a training file (PIQA
here) has its dev records held out of its test file. A file is given as PATH (text classification) or TYPE:PATH, with
TYPE a training task (`seq-cls`, `multiple-choice`); its dev records are held out (`val_size`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.reading import check_file
from ..errors import MissingPathError, UsageError
from ..data.locations import data_roots
from ..evaluate.datasets import KNOWN as EVAL_SETS
from ..tasks import TASKS

# The commonsense sets as multiple choice, by eval's names and files (arc-e -> arc-easy.json, siqa ->
# social_i_qa.json, ...); BoolQ is a yes/no text-pair classification.
MULTIPLE_CHOICE = ("arc-e", "arc-c", "piqa", "siqa", "obqa", "hellaswag", "winogrande")
# name: (training task, [(training file, dev file or None to hold dev records out of the training file), ...]),
# the first pair whose training file exists is used: a set's own training file with its test file as dev, else
# its test file split in two (PIQA here, which ships no training set).
KNOWN: dict[str, tuple[str, list[tuple[str, str | None]]]] = {
    "sst2": ("seq-cls", [("sst2/train.tsv", "sst2/dev.tsv")]),
    "boolq": ("seq-cls", [("commonsense/train_boolq.json", "commonsense/boolq.json")]),
    **{name: ("multiple-choice", [(f"commonsense/train_{EVAL_SETS[name].file}", f"commonsense/{EVAL_SETS[name].file}"),
                                  (f"commonsense/{EVAL_SETS[name].file}", None)]) for name in MULTIPLE_CHOICE},
}
HELD_OUT = 0.2  # share of a task's file held out as dev when it has no dev file


@dataclass(frozen=True)
class CompareTask:
    """One task of a comparison: its name, the training task that runs it, its data files."""

    name: str
    task: str
    train: Path
    dev: Path | None
    options: dict[str, Any] = field(default_factory=dict)


def dataset_roots(data_dir: str | None) -> list[Path]:
    """Folders that hold sst2/, commonsense/, ...: --data-dir, else the roots eval searches (data/locations.py)."""
    return [Path(data_dir)] if data_dir else data_roots()


def resolve_task(spec: str, data_dir: str | None = None) -> CompareTask:
    """A known task name, PATH or TYPE:PATH -> CompareTask; missing files are named with the fix."""
    if spec in KNOWN:
        task, files = KNOWN[spec]
        roots = dataset_roots(data_dir)
        for train, dev in files:
            for root in roots:
                if (root / train).is_file():
                    return CompareTask(spec, task, root / train, root / dev if dev else None)
        wanted = " or ".join(train for train, _ in files)
        fix = ("pass --data-dir with the folder that holds it" if spec == "sst2" or data_dir else
               f"run `adapterlab data pull {spec}`, or pass --data-dir with the folder that holds it")
        raise MissingPathError(f"Task {spec!r} reads {wanted} under {', '.join(map(str, roots))}, which is not "
                               f"there; {fix}.")
    kind, sep, path = spec.partition(":")
    if not sep or kind not in TASKS:
        kind, path = "seq-cls", spec
    file = Path(path)
    if not file.exists():
        known = ", ".join(KNOWN)
        raise UsageError(f"--tasks: {spec!r} is neither a known task ({known}) nor an existing file; "
                         "give a name, PATH or TYPE:PATH (TYPE seq-cls or multiple-choice).")
    check_file(file, "--tasks")
    return CompareTask(file.stem, kind, file, None)


def _records(source: Path) -> tuple[list[str], list[Any]]:
    """(header lines, records) of a TSV/CSV (one record per line after the header), JSON list or JSONL file."""
    text = source.read_text(encoding="utf-8")
    if source.suffix.lower() == ".json":
        records = json.loads(text)
        return [], records.get("data", records) if isinstance(records, dict) else records
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[:1], lines[1:]) if source.suffix.lower() in (".tsv", ".csv") else ([], lines)


def _write(source: Path, header: list[str], records: list[Any], target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.suffix.lower() == ".json":
        target.write_text(json.dumps(records), encoding="utf-8")
    else:
        target.write_text("\n".join([*header, *records]) + "\n", encoding="utf-8")
    return target


def subsample_file(source: Path, n: int | None, seed: int, target: Path) -> Path:
    """A seeded subset of n records of `source` written to `target` (same format, header kept); the source
    itself when it has n records or fewer (or n is None)."""
    header, records = _records(source)
    if n is None or len(records) <= n:
        return source
    chosen = sorted(random.Random(seed).sample(range(len(records)), n))
    return _write(source, header, [records[i] for i in chosen], target)


def split_file(source: Path, dev_share: float, seed: int, folder: Path) -> tuple[Path, Path]:
    """A fixed seeded train/dev split of one file (the same dev set for every method and seed of a comparison)."""
    header, records = _records(source)
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_dev = max(1, round(dev_share * len(records)))
    dev, train = sorted(order[:n_dev]), sorted(order[n_dev:])
    return (_write(source, header, [records[i] for i in train], folder / f"train{source.suffix}"),
            _write(source, header, [records[i] for i in dev], folder / f"dev{source.suffix}"))
