"""Evaluation data sets: the known LLM-Adapters names, their answer types, and reading their JSON files.

A known name (gsm8k, aqua, boolq, ...) fixes the file name to look for and the kind of answer to extract
(a number, a letter A-E, or one of a fixed set of labels). Any other LLM-Adapters-format file can be
given by path; its answer type is then inferred from its answers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from ..data.locations import default_data_dirs, where_searched
from ..data.reading import check_file, read_json_records
from ..errors import DataError, MissingPathError

NUMBER, LETTER, LABEL = "number", "letter", "label"
ANSWER_TYPES = (NUMBER, LETTER, LABEL)
LETTERS = ("A", "B", "C", "D", "E")
SCHEMA = "{instruction, input, output, answer}"


@dataclass(frozen=True)
class KnownDataset:
    """A test set of the LLM-Adapters collection: its file name, answer type and label set."""

    file: str
    answer_type: str
    labels: tuple[str, ...] = ()


def _numbered(stem: str, n: int) -> tuple[str, ...]:
    return tuple(f"{stem}{i}" for i in range(1, n + 1))


# Label sets follow LLM-Adapters' commonsense_evaluate.py: SIQA, ARC and OBQA share answer1..answer5.
KNOWN: dict[str, KnownDataset] = {
    "gsm8k": KnownDataset("gsm8k.json", NUMBER),
    "svamp": KnownDataset("svamp.json", NUMBER),
    "multiarith": KnownDataset("multiarith.json", NUMBER),
    "addsub": KnownDataset("addsub.json", NUMBER),
    "singleeq": KnownDataset("singleeq.json", NUMBER),
    "mawps": KnownDataset("mawps.json", NUMBER),
    "aqua": KnownDataset("aqua.json", LETTER, LETTERS),
    "mathqa": KnownDataset("mathqa.json", LETTER, LETTERS),  # their mathqa.py: math_qa's test split, options a-e
    "boolq": KnownDataset("boolq.json", LABEL, ("true", "false")),
    "piqa": KnownDataset("piqa.json", LABEL, _numbered("solution", 2)),
    "siqa": KnownDataset("social_i_qa.json", LABEL, _numbered("answer", 5)),
    "hellaswag": KnownDataset("hellaswag.json", LABEL, _numbered("ending", 4)),
    "winogrande": KnownDataset("winogrande.json", LABEL, _numbered("option", 2)),
    "arc-e": KnownDataset("arc-easy.json", LABEL, _numbered("answer", 5)),
    "arc-c": KnownDataset("arc-challenge.json", LABEL, _numbered("answer", 5)),
    "obqa": KnownDataset("openbookqa.json", LABEL, _numbered("answer", 5)),
}
# Other spellings people use for the same sets (LLM-Adapters' own folder names among them).
ALIASES = {
    "arc-easy": "arc-e", "arc_easy": "arc-e", "arc-challenge": "arc-c", "arc_challenge": "arc-c",
    "social_i_qa": "siqa", "social-i-qa": "siqa", "openbookqa": "obqa", "gsm": "gsm8k", "math_qa": "mathqa",
}


@dataclass
class EvalDataset:
    """A data set ready to evaluate: its name, records and how to read answers to it."""

    name: str
    records: list[dict[str, Any]]
    answer_type: str
    labels: tuple[str, ...] = ()
    source: str = "<records>"
    known: str | None = None  # the known name this data set is, if any


def canonical_name(name: str) -> str | None:
    """The known data set `name` refers to (case-insensitive, aliases allowed), or None."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in KNOWN else None


def find_file(name: str, data_dirs: list[str | os.PathLike] | None = None) -> Path:
    """The file of known data set `name` in one of `data_dirs` (default: math/ and commonsense/ under
    $ADAPTERLAB_DATA, then under the cache `adapterlab data pull` fills)."""
    canonical = canonical_name(name)
    known = KNOWN[canonical]
    dirs = [Path(d) for d in data_dirs] if data_dirs else default_data_dirs()
    candidates = [known.file, f"{name}.json", f"{name.lower()}.json", f"{name}/test.json"]
    for d in dirs:
        for candidate in candidates:
            if (d / candidate).is_file():
                return d / candidate
    if data_dirs:
        raise MissingPathError(f"Data set {name!r} needs {known.file}, which is in none of the --data-dir folders "
                               f"({', '.join(map(str, dirs))}); pass the folder holding it, or the file's path.")
    raise MissingPathError(f"Data set {name!r} needs {known.file}, found under none of {where_searched()}; run "
                           f"`adapterlab data pull {canonical}`, or pass --data-dir (or the file's path).")


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of an LLM-Adapters-format file: a JSON list of {instruction, input, output, answer}, or JSONL,
    read by the same reader as training data (so a folder, bad bytes or a wrapped list get the same messages)."""
    path = Path(path)
    if not path.exists():
        raise MissingPathError(f"No data file {path}; check the path or pass a known data set name ({', '.join(KNOWN)}).")
    data = read_json_records(path, lines=True)
    for index, record in enumerate(data):
        check_record(record, index, str(path))
    return data


def check_record(record: Any, index: int, where: str) -> None:
    """Refuse a record that cannot be evaluated, naming the file, record and field."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: record {index} is a {type(record).__name__}, not an object with instruction and answer.")
    if not str(record.get("instruction") or "").strip():
        raise DataError(f"{where}: record {index} has no 'instruction'; every test record needs the question there.")
    answer = record.get("answer")
    if answer is None or str(answer).strip() == "":
        raise DataError(
            f"{where}: record {index} has no 'answer' (keys: {sorted(record)}); test records need the gold answer "
            "in 'answer' (a number, a letter A-E or a label). Remove the record or fill in its answer."
        )


def _is_number(value: Any) -> bool:
    try:
        float(str(value).replace(",", ""))
        return True
    except ValueError:
        return False


def infer_answer_type(records: list[dict[str, Any]], where: str = "records") -> tuple[str, tuple[str, ...]]:
    """Guess the answer type of an unknown data set from its gold answers: numbers, letters or labels.

    Mostly numbers (or letters) with a few other answers is refused, naming the first odd record: read as a
    label set, a math set would score 0%.
    """
    answers = [str(r["answer"]).strip() for r in records]
    for kind, fits in ((NUMBER, _is_number), (LETTER, lambda a: a in LETTERS)):
        odd = [i for i, a in enumerate(answers) if not fits(a)]
        if answers and not odd:
            return kind, labels_for(kind, records)
        if len(odd) < len(answers) / 2:
            raise DataError(
                f"{where}: record {odd[0]} has answer {answers[odd[0]]!r}, but {len(answers) - len(odd)} of "
                f"{len(answers)} answers are {kind}s ({len(odd)} are not), so this reads as a {kind} data set; "
                f"fix the odd record(s), or pass --answer-type label if the answers are labels."
            )
    return LABEL, labels_for(LABEL, records)


def labels_for(answer_type: str, records: list[dict[str, Any]]) -> tuple[str, ...]:
    """The answers a prediction may take: A-E for letters, the distinct gold answers for labels, none for numbers."""
    if answer_type == LETTER:
        return LETTERS
    if answer_type == LABEL:
        return tuple(sorted({str(r["answer"]).strip() for r in records}))
    return ()


def check_answers(records: list[dict[str, Any]], answer_type: str, labels: tuple[str, ...], where: str, name: str) -> None:
    """Refuse gold answers that cannot match any prediction: non-numbers in a number set, unknown labels."""
    for index, record in enumerate(records):
        answer = record["answer"]
        if answer_type == NUMBER and not _is_number(answer):
            raise DataError(f"{where}: record {index} has answer {answer!r}, not a number, but {name} is evaluated "
                             "as a number data set; fix the record or pass another answer type.")
        if answer_type != NUMBER and str(answer).strip() not in labels:
            raise DataError(f"{where}: record {index} has answer {answer!r}, which is none of {', '.join(labels)} "
                             f"expected for {name}; fix the record or pass another answer type.")


def load_dataset(
    name_or_path: str,
    data_dirs: list[str | os.PathLike] | None = None,
    *,
    answer_type: str | None = None,
    limit: int | None = None,
    log: Callable[[str], None] = print,
) -> EvalDataset:
    """A known data set by name (searched in `data_dirs`) or any LLM-Adapters-format file by path; the answer type
    of a file that is no known set is inferred from its answers and logged (one line)."""
    if answer_type is not None and answer_type not in ANSWER_TYPES:
        raise DataError(f"Unknown answer type {answer_type!r}; choose one of {', '.join(ANSWER_TYPES)}.")
    known = canonical_name(Path(name_or_path).stem if name_or_path.endswith(".json") else name_or_path)
    if Path(name_or_path).is_file():
        path = Path(name_or_path)
        name = path.stem
    elif Path(name_or_path).is_dir() and (known is None or os.sep in name_or_path):
        check_file(name_or_path)  # a folder: says so and to pass the file inside it, as train does
    elif name_or_path.endswith(".json") or os.sep in name_or_path:
        raise MissingPathError(f"No data file {name_or_path}; check the path.")
    elif known is None:
        raise DataError(
            f"Unknown data set {name_or_path!r}. Known names: {', '.join(KNOWN)}; "
            "or pass the path of an LLM-Adapters-format JSON file."
        )
    else:
        path = find_file(name_or_path, data_dirs)
        name = known
    records = read_records(path)
    if limit is not None:
        records = records[:limit]
    if answer_type is None and known is not None:
        answer_type, labels = KNOWN[known].answer_type, KNOWN[known].labels
    else:
        if answer_type is None:
            answer_type = infer_answer_type(records, str(path))[0]
            log(f"{path}: answer type {answer_type} (inferred; --answer-type overrides)")
        same = known is not None and KNOWN[known].answer_type == answer_type
        labels = KNOWN[known].labels if same else labels_for(answer_type, records)
    check_answers(records, answer_type, labels, str(path), name)
    return EvalDataset(name=name, records=records, answer_type=answer_type, labels=labels, source=str(path), known=known)
