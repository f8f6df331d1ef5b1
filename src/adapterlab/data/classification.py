"""Text classification data: text (and label) columns from CSV, TSV, JSON or JSONL, labels mapped to ids."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..errors import DataError
from .reading import check_file, read_json_records, read_text
from ..interop.llm_adapters.records import is_llm_adapters, llm_adapters_question

TEXT_GUESSES = ("sentence", "text", "content", "review", "question")


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .csv/.tsv file (with a header) or a .json/.jsonl file, as dicts."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        return read_json_records(path)
    if suffix not in (".csv", ".tsv", ".txt"):
        check_file(path)  # a missing file or a folder is named as such before its suffix is judged
        raise DataError(f"{path}: unknown data format {suffix!r}; use .csv, .tsv, .json or .jsonl.")
    delimiter = "," if suffix == ".csv" else "\t"
    handle = io.StringIO(read_text(path), newline="")
    # SST-2 style TSVs carry quote characters inside sentences; only CSV uses quoting.
    reader = csv.DictReader(handle, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if suffix == ".csv" else csv.QUOTE_NONE)
    if not reader.fieldnames:
        raise DataError(f"{path} is empty; expected a header row naming the columns (e.g. label, sentence).")
    rows = []
    for number, row in enumerate(reader, 2):
        if None in row or any(v is None for v in row.values()):
            raise DataError(
                f"{path}, line {number}: {len(reader.fieldnames)} columns expected ({reader.fieldnames}), "
                "found a different number; check the delimiter and quoting."
            )
        rows.append(row)
    return rows


def pick_text_column(rows: list[dict[str, Any]], label_column: str, path: str) -> str:
    """The text column when none was named: a usual name, else the only other column."""
    columns = list(rows[0])
    for name in TEXT_GUESSES:
        if name in columns:
            return name
    others = [c for c in columns if c != label_column]
    if len(others) == 1:
        return others[0]
    raise DataError(f"{path}: cannot tell which column holds the text among {columns}; pass --text-column.")


def read_labelled(
    paths: list[str] | str, text_column: str | None = None, label_column: str = "label", text_pair_column: str | None = None
) -> tuple[list[dict[str, Any]], str]:
    """Rows {text, text_pair?, label} (label as a string) from the files, and the text column used.

    An LLM-Adapters file ({instruction, answer}, e.g. BoolQ) without a --label-column column is read as text =
    the question inside the instruction and label = answer, unless --text-column names a column."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out: list[dict[str, Any]] = []
    for path in paths:
        rows = read_table(path)
        if not rows:
            continue
        if text_column is None and label_column not in rows[0] and is_llm_adapters(rows[0]):
            out += _llm_adapters_rows(rows, str(path))
            continue
        column = text_column or pick_text_column(rows, label_column, str(path))
        wanted = [c for c in (column, label_column, text_pair_column) if c]
        for index, row in enumerate(rows):
            for name in wanted:
                if row.get(name) in (None, ""):
                    raise DataError(
                        f"{path}, record {index}: missing or empty field {name!r} (columns: {sorted(row)}); "
                        "name the columns with --text-column / --label-column."
                    )
            item = {"text": str(row[column]), "label": str(row[label_column]).strip()}
            if text_pair_column:
                item["text_pair"] = str(row[text_pair_column])
            out.append(item)
        text_column = column
    if not out:
        raise DataError(f"No labelled rows in {', '.join(map(str, paths))}.")
    return out, text_column or ""


def _llm_adapters_rows(rows: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    """Rows {text, label} of an LLM-Adapters file (BoolQ): the instruction's question without their template, and
    the answer as the label."""
    out = []
    for index, row in enumerate(rows):
        if not is_llm_adapters(row) or str(row.get("answer") or "").strip() == "":
            raise DataError(f"{path}, record {index}: missing 'instruction' or 'answer' (keys: {sorted(row)}); every "
                            "record of an LLM-Adapters file needs both.")
        text = llm_adapters_question(str(row["instruction"]))
        if not text:
            raise DataError(f"{path}, record {index}: no question left in its instruction once the template is cut.")
        out.append({"text": text, "label": str(row["answer"]).strip()})
    return out


def label_names(rows: list[dict[str, Any]]) -> list[str]:
    """Sorted distinct labels (numerically when they are all integers), index = class id."""
    labels = {r["label"] for r in rows}
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)
