"""Predictions files on disk: reading those of an interrupted run back, and refusing to resume a run whose model,
adapter or generation settings differ from the ones that wrote them (the rows of two runs would mix)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..files import write_atomic
from ..errors import CorruptFileError, RunFolderError
from .fingerprint import MEANINGS

CONFIG_FILE = "eval_config.json"
FIX = "pass --overwrite to start again, or choose another --output folder"


def predictions_path(output_dir: str | os.PathLike, name: str) -> Path:
    return Path(output_dir) / f"{name}.predictions.jsonl"


def holds_predictions(path: Path) -> bool:
    """Whether `path` holds at least one finished row: an empty file, or one whose only line was cut short by an
    interrupt, is what a failed run leaves, not another run's predictions."""
    if not path.is_file():
        return False
    finished_lines = path.read_bytes().split(b"\n")[:-1]
    return any(line.strip() for line in finished_lines)


def _parse_row(line: bytes, index: str, output: str, kind: type) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if isinstance(row, dict) and isinstance(row.get(index), int) and isinstance(row.get(output), kind):
        return row
    return None


def read_done(path: Path, log: Callable[[str], None] = print, *, index: str = "id", output: str = "generation",
              kind: type = str) -> dict[int, dict[str, Any]]:
    """The rows already in `path` by item number (key `index`; each row also holds its result under `output`, of
    type `kind`: the generation's text, the predicted label, or a choice protocol's list of log-likelihoods). A
    last line cut short by an interrupt is dropped from the file with a note; any other line that is not a
    predictions row is refused, naming the file, the line and the fix."""
    done: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return done
    lines = path.read_bytes().split(b"\n")
    good_bytes, unterminated = 0, False
    for number, line in enumerate(lines, start=1):
        is_last = number == len(lines)  # written without its newline: the write was interrupted
        row = _parse_row(line, index, output, kind) if line.strip() else None
        if row is None and line.strip():
            if is_last:
                with open(path, "r+b") as f:
                    f.truncate(good_bytes)
                log(f"note: {path}: dropped line {number}, cut short by an interrupted run; "
                    "that item is evaluated again.")
                break
            raise CorruptFileError(
                f"{path}: line {number} is not a predictions row (JSON with {index!r} and {output!r}); delete that "
                "line and run again with --resume (its item is evaluated again), or pass --overwrite to start again."
            )
        if row is not None:
            done[row[index]] = row
            unterminated = is_last
        good_bytes += len(line) + 1
    if unterminated:  # a whole row whose newline was not written: end the line before appending to the file
        with open(path, "ab") as f:
            f.write(b"\n")
    return done


def _describe(key: str, was: Any, now: Any) -> str:
    meaning = f"{MEANINGS[key]}: " if key in MEANINGS else ""
    return f"{meaning}{key} was {was!r}, now {now!r}"


def check_resume(output_dir: Path, identity: dict[str, Any], names: list[str], *, resume: bool,
                 overwrite: bool) -> None:
    """Refuse to write into `output_dir` where earlier predictions would be lost (without resume or overwrite) or
    mixed with this run's (resume, when the model, adapter or a generation setting changed); overwrite removes them."""
    config_file = output_dir / CONFIG_FILE
    existing = [path for path in (predictions_path(output_dir, n) for n in names) if holds_predictions(path)]
    if overwrite:
        for name in names:
            predictions_path(output_dir, name).unlink(missing_ok=True)
        return
    if not existing:
        return
    if not resume:
        raise RunFolderError(f"{existing[0]} already holds predictions. Pass --resume to continue that run, "
                             "--overwrite to start again, or choose another --output folder.")
    if not config_file.is_file():
        raise RunFolderError(f"{existing[0]} holds predictions but {config_file} is missing, so nothing says which "
                             f"model, adapter and settings made them; {FIX}.")
    try:
        saved = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{config_file} is not valid JSON ({exc}); {FIX}.") from exc
    if not isinstance(saved, dict):
        raise CorruptFileError(f"{config_file} holds no settings object; {FIX}.")
    changed = [_describe(k, saved.get(k), v) for k, v in identity.items() if saved.get(k) != v]
    if changed:
        raise RunFolderError(f"Cannot resume in {output_dir}: the predictions there were made differently "
                         f"({'; '.join(changed)}), and this run's rows would mix with them; {FIX}.")


class RowStream:
    """Prediction rows appended to `path` as they are made, one flush per batch, so a killed run keeps what it
    had. The file is opened with the first batch (a failure before it leaves no file); `resume` appends to it.
    `finish` rewrites it in item order, keeping rows past this run's --limit that an earlier run made."""

    def __init__(self, path: Path | None, resume: bool) -> None:
        self.path, self.resume, self.handle = path, resume, None

    def __enter__(self) -> "RowStream":
        return self

    def write(self, rows: list[dict[str, Any]]) -> None:
        if self.path is None:
            return
        if self.handle is None:
            self.handle = open(self.path, "a" if self.resume else "w", encoding="utf-8")
        self.handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        self.handle.flush()

    def __exit__(self, *exc: Any) -> None:
        if self.handle is not None:
            self.handle.close()

    def finish(self, ordered: list[dict[str, Any]], done: dict[int, dict[str, Any]], count: int) -> None:
        """Rewrite the file as `ordered` (this run's items in order) plus the done rows numbered `count` or more."""
        if self.path is None or not ordered:
            return
        kept = ordered + [done[i] for i in sorted(done) if i >= count]
        write_atomic(self.path, lambda tmp: Path(tmp).write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8"))
