"""Multiple-choice records: one parser from any supported file format to (question, [choices], gold index).

Two kinds of file are read:

* LLM-Adapters commonsense JSON ({instruction, input, output, answer}): the choices are embedded in the
  instruction as "Answer1: ... Answer2: ..." (ARC, OBQA, SIQA), "Solution1: ..." (PIQA), "Option1: ..."
  (WinoGrande) or "Ending1: ..." (HellaSwag), and the answer names one ("answer2", "solution1", ...). The
  question is the instruction without their "Please choose the correct ...:" lead-in and "Answer format:" tail.
  Without such choices, the answers of the "Answer format: true/false" tail are the choices (BoolQ).
* Plain CSV/TSV/JSON/JSONL tables: a question column (--text-column, else question/goal/sentence/ctx/...), the
  choices as a `choices`/`endings` list (or HF's {"text": [...], "label": [...]}) or as numbered/lettered columns
  (choice1.., option1.., sol1.., ending0.., answerA.., A..E), and a label (--label-column, else label/answer/
  answerKey): a choice's index, its letter, its column name, its own label (HF ARC) or its text. Integer labels
  count from 0 (COPA, PIQA), unless the choices are columns and a file's labels never use 0 and reach the number
  of choices (WinoGrande's 1/2, SIQA's 1/2/3): then from 1; such a file whose labels show neither is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from .classification import read_table
from ..interop.llm_adapters.records import MARKER, answer_format, is_llm_adapters, llm_adapters_question, without_tail

QUESTION_GUESSES = ("question", "goal", "sentence", "ctx", "context", "premise", "stem", "query", "text")
LABEL_GUESSES = ("label", "answer", "answerKey", "gold")
LIST_COLUMNS = ("choices", "endings", "options")
LETTERS = "ABCDEFGHIJ"
CHOICE_COLUMN = re.compile(r"^(?:choice|option|answer|ending|sol|solution|endings)[ _]?([0-9]+|[A-J])$", re.IGNORECASE)


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question: its text, the choices in order, and the index of the right one."""

    question: str
    choices: tuple[str, ...]
    gold: int


def _parse_llm_adapters(record: dict[str, Any], where: str) -> ChoiceItem:
    instruction = str(record.get("instruction") or "")
    text = without_tail(instruction)
    markers = list(MARKER.finditer(text))
    allowed = answer_format(instruction)
    answer = str(record.get("answer", "")).strip()
    if not markers and len(allowed) > 1 and answer in allowed:  # BoolQ: the allowed answers are the choices
        return _item(llm_adapters_question(instruction), tuple(allowed), allowed.index(answer), where)
    if not markers:
        raise DataError(f"{where}: no choices in its instruction (expected 'Answer1: ...', 'Solution1: ...', "
                        "'Option1: ...' or 'Ending1: ...'); it is not a multiple-choice record.")
    stems = {m.group(1).lower() for m in markers}
    numbers = [int(m.group(2)) for m in markers]
    if len(stems) > 1 or numbers != list(range(1, len(markers) + 1)):
        found = ", ".join(m.group(0) for m in markers)
        raise DataError(f"{where}: its choices are not numbered {markers[0].group(1)}1, 2, ... in order (found "
                        f"{found}); fix the instruction.")
    ends = [m.start() for m in markers[1:]] + [len(text)]
    choices = tuple(text[m.end():end].strip() for m, end in zip(markers, ends))
    stem = stems.pop()
    match = re.fullmatch(rf"{stem}\s*(\d+)", answer.lower())
    if not match or not 1 <= int(match.group(1)) <= len(choices):
        raise DataError(f"{where}: answer {record.get('answer')!r} names none of its choices "
                        f"({stem}1..{stem}{len(choices)}); fix the answer.")
    return _item(llm_adapters_question(instruction), choices, int(match.group(1)) - 1, where)


def _item(question: str, choices: tuple[str, ...], gold: int, where: str) -> ChoiceItem:
    if len(choices) < 2:
        raise DataError(f"{where}: {len(choices)} choice(s); a multiple-choice record needs at least two.")
    empty = [i for i, c in enumerate(choices) if not c]
    if empty:
        raise DataError(f"{where}: choice {empty[0]} is empty; fill it in or remove the record.")
    if not question:
        raise DataError(f"{where}: the question is empty; fill it in or remove the record.")
    return ChoiceItem(question, choices, gold)


def _choice_columns(record: dict[str, Any]) -> list[str]:
    """Columns holding one choice each, in order (choice1, choice2 / answerA, answerB / A, B, C...)."""
    numbered = [(k, m.group(1)) for k in record if (m := CHOICE_COLUMN.match(k))]
    if not numbered:
        numbered = [(k, k) for k in record if len(k) == 1 and k in LETTERS]
    key = lambda kv: int(kv[1]) if kv[1].isdigit() else LETTERS.index(kv[1].upper())
    return [k for k, _ in sorted(numbered, key=key)]


def _choices(record: dict[str, Any], where: str) -> tuple[list[str], list[str]]:
    """(choice texts, the name each can be labelled by) of a plain record."""
    for name in LIST_COLUMNS:
        value = record.get(name)
        if isinstance(value, dict) and isinstance(value.get("text"), list):
            return [str(v).strip() for v in value["text"]], [str(v) for v in value.get("label", [])]
        if isinstance(value, list):
            return [str(v).strip() for v in value], []
    columns = _choice_columns(record)
    if not columns:
        raise DataError(f"{where}: no choices found (columns: {sorted(record)}); give a 'choices' list or columns "
                        "choice1, choice2, ... (or option1.., ending0.., answerA.., A..E).")
    return [str(record[c] if record[c] is not None else "").strip() for c in columns], columns


def _pick(record: dict[str, Any], named: str | None, guesses: tuple[str, ...], what: str, flag: str,
          where: str) -> str:
    if named and named in record:
        return named
    for name in guesses:
        if name in record:
            return name
    raise DataError(f"{where}: no {what} column (columns: {sorted(record)}); name it with {flag}.")


def parse_choice_record(record: dict[str, Any], where: str, *, question_column: str | None = None,
                        label_column: str | None = None, label_base: int = 0) -> ChoiceItem:
    """(question, choices, gold index) of one record of any supported format; `where` names the file and record
    in errors; `label_base` is what an integer label counts from (see `integer_label_base`)."""
    if is_llm_adapters(record) and question_column is None:
        return _parse_llm_adapters(record, where)
    question = str(record.get(_pick(record, question_column, QUESTION_GUESSES, "question", "--text-column", where))
                   or "").strip()
    choices, names = _choices(record, where)
    column = _pick(record, label_column, LABEL_GUESSES, "label", "--label-column", where)
    label = str(record.get(column) if record.get(column) is not None else "").strip()
    lowered = [n.lower() for n in names]
    if label.lower() in lowered:
        gold = lowered.index(label.lower())
    elif re.fullmatch(r"-?\d+", label):
        gold = int(label) - label_base
    elif len(label) == 1 and label.upper() in LETTERS:
        gold = LETTERS.index(label.upper())
    elif label in choices:
        gold = choices.index(label)
    else:
        raise DataError(f"{where}: label {label!r} in column {column!r} is not a choice index, letter, name or "
                        "text; fix the label or name the label column with --label-column.")
    if not 0 <= gold < len(choices):
        raise DataError(f"{where}: label {label!r} in column {column!r} is out of range for {len(choices)} "
                        f"choices (integer labels count from {label_base} in this file); fix the label.")
    return _item(question, tuple(choices), gold, where)


def integer_label_base(rows: list[dict[str, Any]], path: str, label_column: str | None) -> int:
    """0 or 1: what a file's integer labels count from. Choices in a list count from 0; choices in columns
    (choice1.., answerA..) from 0 unless no label is 0 and one equals its choice count (then from 1)."""
    values, counts = [], []
    for index, row in enumerate(rows):
        if is_llm_adapters(row) or any(name in row for name in LIST_COLUMNS):
            continue
        column = next((c for c in (label_column, *LABEL_GUESSES) if c and c in row), None)
        label = str(row.get(column, "")).strip() if column else ""
        if re.fullmatch(r"\d+", label):
            values.append(int(label))
            counts.append(len(_choices(row, f"{path}, record {index}")[0]))
    if not values or 0 in values:
        return 0
    if any(v == n for v, n in zip(values, counts)):
        return 1
    raise DataError(f"{path}: its integer labels never use 0 nor the last choice's number, so they could count "
                    "from 0 or from 1; use letters or the choice texts as labels, or add a record whose label shows "
                    "which.")


def read_choice_items(paths: list[str | Path] | str | Path, *, question_column: str | None = None,
                      label_column: str | None = None) -> list[ChoiceItem]:
    """Every record of the files as ChoiceItems; a bad record is refused naming the file and the record."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    items: list[ChoiceItem] = []
    for path in paths:
        rows = read_table(path)
        base = integer_label_base(rows, str(path), label_column)
        items += [parse_choice_record(row, f"{path}, record {index}", question_column=question_column,
                                      label_column=label_column, label_base=base) for index, row in enumerate(rows)]
    if not items:
        raise DataError(f"No multiple-choice records in {', '.join(map(str, paths))}.")
    return items
