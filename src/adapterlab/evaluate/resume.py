"""Predictions files on disk: reading those of an interrupted run back, and refusing to resume a run whose model,
adapter or generation settings differ from the ones that wrote them (the rows of two runs would mix)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..files import check_folder_path, write_atomic, write_json
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


def earlier_datasets(output_dir: Path) -> dict[str, Any]:
    """The per-data-set results an earlier evaluation left in `output_dir/summary.json` ({} when none)."""
    path = output_dir / "summary.json"
    try:
        datasets = json.loads(path.read_text(encoding="utf-8")).get("datasets") if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        datasets = None
    return datasets if isinstance(datasets, dict) else {}


def _earlier_outputs(output_dir: Path, names: list[str]) -> list[Path]:
    """What an earlier evaluation wrote here: its settings, summaries and each data set's predictions and plot."""
    sets = dict.fromkeys([*earlier_datasets(output_dir), *names])
    per_set = [output_dir / f"{n}{suffix}" for n in sets for suffix in (".predictions.jsonl", ".confusion.png")]
    paths = [output_dir / CONFIG_FILE, output_dir / "summary.json", output_dir / "summary.md", *per_set]
    return [p for p in paths if p.is_file()]


def check_resume(output_dir: Path, identity: dict[str, Any], names: list[str], *, resume: bool,
                 overwrite: bool) -> None:
    """Refuse to write into `output_dir` where an earlier evaluation's results would be lost (without resume or
    overwrite) or mixed with this run's (resume, when the model, adapter or a generation setting changed);
    overwrite removes what the earlier evaluation wrote, and nothing else."""
    config_file = output_dir / CONFIG_FILE
    if overwrite:
        for path in _earlier_outputs(output_dir, names):
            path.unlink()
        return
    existing = [path for path in (predictions_path(output_dir, n) for n in names) if holds_predictions(path)]
    others = sorted({*earlier_datasets(output_dir), *(p.name.removesuffix(".predictions.jsonl") for p in
                                                      output_dir.glob("*.predictions.jsonl") if holds_predictions(p))}
                    - set(names))
    if not existing and not others:  # nothing an earlier evaluation made would be lost or mixed
        return
    if not resume:
        what = f"{existing[0]} already holds predictions" if existing else \
            f"{output_dir} holds an earlier evaluation of {', '.join(others)}, whose settings and summary this one " \
            "would replace"
        raise RunFolderError(f"{what}. Pass --resume to continue or add to it, --overwrite to start again, or "
                             "choose another --output folder.")
    if not config_file.is_file():
        raise RunFolderError(f"{output_dir} holds predictions but {config_file} is missing, so nothing says which "
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


def open_output(output_dir: str | os.PathLike | None, identity: dict[str, Any], names: list[str], config: dict[str, Any],
                *, resume: bool, overwrite: bool) -> tuple[Path | None, dict[str, Any]]:
    """Prepare an evaluation's output folder (every protocol the same way): refuse a file, check resume/overwrite,
    record the settings; returns the folder and, on resume, the earlier data sets' results to keep in the summary."""
    if output_dir is None:
        return None, {}
    out = Path(output_dir)
    check_folder_path(out, "output_dir")  # a file there is one line, not mkdir's FileExistsError
    out.mkdir(parents=True, exist_ok=True)
    check_resume(out, identity, names, resume=resume, overwrite=overwrite)
    kept = {k: v for k, v in earlier_datasets(out).items() if k not in names} if resume else {}
    write_json(out / CONFIG_FILE, config)
    return out, kept


class RowStream:
    """Prediction rows appended to `path` as they are made, one flush per batch, so a killed run keeps what it
    had. The file is opened with the first batch (a failure before it leaves no file); `resume` appends to it.
    `finish` rewrites it in item order, keeping rows past this run's --limit that an earlier run made."""

    def __init__(self, path: Path | None, resume: bool) -> None:
        self.path, self.resume, self.handle = path, resume, None

    def __enter__(self) -> RowStream:
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
