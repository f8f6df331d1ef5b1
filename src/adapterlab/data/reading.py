"""Reading the files users name (data, labels, configs): one place for missing paths, folders, encodings, JSON.

Every reader of user files (instruction JSON/JSONL, classification CSV/TSV/JSON, audio label CSVs, and
evaluation files) goes through `read_text`, so a folder, a missing file or a non-UTF-8 file gets the same
one-line message naming the file (and, for bad bytes, the offset and line). `read_json_records` reads a
JSON list of records or, where `lines=True` (training), JSONL with one record per line.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

from ..errors import DataError, MissingPathError


def check_file(path: str | Path, what: str = "Data file") -> Path:
    """`path` as a Path if it is an existing file; else a one-line error saying it is missing or a folder."""
    path = Path(path)
    if path.is_dir():
        raise MissingPathError(f"{what} {path} is a folder, not a file; pass the file inside it.")
    if not path.exists():
        raise MissingPathError(f"{what} {path} does not exist; check the path.")
    return path


def check_folder(path: str | Path, what: str, fix: str) -> Path:
    """`path` as a Path if it is an existing folder; else a one-line error naming it, what is wrong, and `fix`."""
    path = Path(path)
    if path.is_file():
        raise MissingPathError(f"{what} {path} is a file, not a folder; {fix}.")
    if not path.is_dir():
        raise MissingPathError(f"{what} {path} does not exist; {fix}.")
    return path


def read_text(path: str | Path, what: str = "Data file") -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped); `what` names the file's role in errors."""
    path = check_file(path, what)
    data = path.read_bytes()
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        line = data[:offset].count(b"\n") + 1
        raise DataError(f"{path} is not UTF-8 text: byte 0x{data[offset]:02x} at offset {offset} (line {line}) "
                        "cannot be decoded; re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8).") from exc


def read_json_records(path: str | Path, lines: bool = True) -> list[dict[str, Any]]:
    """Records of a JSON list (or, if `lines`, a JSONL file), each a dict; errors name the file and line or record."""
    path = Path(path)
    text = read_text(path)
    expected = "a JSON list of records" + (" or one JSON object per line (JSONL)" if lines else "")
    if not text.strip():
        raise DataError(f"{path} is empty; it should hold {expected}.")
    whole = _whole_json(text)
    if whole is _NOT_JSON:
        if not lines or text.lstrip().startswith("["):
            _parse(path, text)  # raises the JSON error, with its line and column
        records = _parse_lines(path, text)
    elif isinstance(whole, dict) and lines and _one_record(text, whole):
        records = [whole]
    elif isinstance(whole, dict):
        keys = sorted(whole)
        inner = [k for k in keys if _is_record_list(whole[k])]
        hint = f"; the records seem to be under {inner[0]!r}: save that list alone" if inner else ""
        raise DataError(f"{path} holds a JSON object (keys {keys[:8]}), not records; expected {expected}{hint}.")
    else:
        records = whole
    if not isinstance(records, list):
        raise DataError(f"{path} holds a JSON {type(records).__name__}; expected {expected}.")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{path}, record {index}: expected a JSON object, got {type(record).__name__}.")
    return records


_NOT_JSON = object()


def _whole_json(text: str) -> Any:
    """The file parsed as one JSON value, or _NOT_JSON when it is not one (e.g. JSONL, or broken)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return _NOT_JSON


def _one_record(text: str, value: dict[str, Any]) -> bool:
    """A JSONL file of a single record: one line, and no list of records inside (as in {"data": [...]})."""
    return len([line for line in text.splitlines() if line.strip()]) == 1 and \
        not any(_is_record_list(v) for v in value.values())


def _is_record_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def _parse(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.") from exc


def _parse_lines(path: Path, text: str) -> list[Any]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg}, column {exc.colno}).") from exc
    return records
