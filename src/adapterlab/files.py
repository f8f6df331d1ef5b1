"""Files that no reader ever sees half-written, and one-line errors for damaged files we read back.

- `write_atomic`: one file, written to a temporary name and renamed into place.
- `replace_files`: a group of files (an adapter's config and weights) replaced as one. The new files are
  written into a staging folder that is renamed to `.adapterlab-pending` (the commit point) and then moved
  to their places one by one. Readers ask `group_file` for each file, which prefers the pending copy, so
  they see the old group or the new one, never a mix, even when a kill stops a save halfway; the next save
  finishes the interrupted one first.
- Temporaries are named `.<name>.<pid>.<hex>.tmp`; `sweep_stale` removes those whose process is gone.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import CorruptFileError, RunFolderError

PENDING = ".adapterlab-pending"
_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
_OS_ERROR = re.compile(r"os error (\d+)")


def temp_path(target: Path) -> Path:
    """A fresh hidden temporary path beside `target`, named so that `sweep_stale` can tell whose it is."""
    hidden = target.name if target.name.startswith(".") else f".{target.name}"
    return target.with_name(f"{hidden}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_entry(path: Path) -> None:
    """Delete a file, a symlink (the link only, never what it points to) or a folder tree."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def sweep_stale(folder: Path) -> list[Path]:
    """Remove our temporaries in `folder` whose writing process has died (left by a kill); returns them."""
    stale = []
    if folder.is_dir():
        for entry in folder.iterdir():
            match = _TEMP.match(entry.name)
            if match and not _alive(int(match["pid"])):
                remove_entry(entry)
                stale.append(entry)
    return stale


def _named(exc: OSError, path: Path) -> OSError:
    """`exc` with `path` as its file name when it has none (a failed write() names no file)."""
    return exc if exc.filename or exc.errno is None else OSError(exc.errno, exc.strerror or str(exc), str(path))


def _as_os_error(exc: SafetensorError, path: Path) -> Exception:
    """safetensors reports I/O failures (a full disk) as SafetensorError('... (os error 28)'): make it an OSError."""
    match = _OS_ERROR.search(str(exc))
    return OSError(int(match[1]), os.strerror(int(match[1])), str(path)) if match else exc


def _umask() -> int:
    """The process umask (read by setting and restoring it: the only portable way)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _ordinary_mode(path: Path) -> None:
    """Give `path` the mode a new file gets (safetensors writes through a private 0600 temporary)."""
    os.chmod(path, 0o666 & ~_umask())


def write_atomic(path: Path, write: Callable[[str], Any]) -> None:
    """Call write(tmp_path) and rename the result to `path`, so readers never see a partial file.

    On failure (a full disk) the temporary is removed and `path` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent)
    tmp = temp_path(path)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        write(str(tmp))
        _ordinary_mode(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise _named(exc, path) from exc
    except SafetensorError as exc:
        raise _as_os_error(exc, path) from exc
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as indented JSON, atomically."""
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"))


def write_safetensors(path: Path, state: dict, metadata: dict[str, str] | None = None) -> None:
    """Write tensors to a safetensors file (directly: for files in a staging folder), I/O errors as OSError."""
    try:
        save_file(state, str(path), metadata={"format": "pt", **(metadata or {})})
        _ordinary_mode(path)
    except SafetensorError as exc:
        raise _as_os_error(exc, path) from exc
    except OSError as exc:
        raise _named(exc, path) from exc


def finish_pending(folder: Path) -> None:
    """Move the files of a committed group into place (a save a kill interrupted after its commit)."""
    pending = folder / PENDING
    if pending.is_dir() and not pending.is_symlink():
        for file in sorted(pending.iterdir()):
            os.replace(file, folder / file.name)
        pending.rmdir()


def check_folder_path(folder: Path, flag: str | None = None) -> None:
    """Refuse a folder path that is a file or lies inside one (mkdir would raise a bare FileExistsError);
    `flag` names the option that gave it (e.g. "--output")."""
    folder = Path(folder)
    for path in (folder, *folder.parents):
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                where = "is a file" if path == folder else f"lies inside {path}, which is a file"
                if flag:
                    raise RunFolderError(f"{flag} {folder} {where}; {flag} must be a folder (new or existing), so "
                                         "pass another path.")
                raise RunFolderError(f"{folder} {where}; these files are written into a folder, so pass the path "
                                     "of a new or existing folder.")
            return


def replace_files(folder: Path, build: Callable[[Path], Any]) -> None:
    """Replace the files build(stage) writes into a fresh staging folder, as one group (see the module doc)."""
    folder = Path(folder)
    check_folder_path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sweep_stale(folder)
    finish_pending(folder)
    stage = temp_path(folder / PENDING)
    stage.mkdir(mode=0o755)
    try:
        build(stage)
        os.rename(stage, folder / PENDING)  # the commit point: from here on readers see the new group
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finish_pending(folder)


def write_new_folder(folder: Path, build: Callable[[Path], Any]) -> None:
    """Create `folder` (absent or empty) with the files build(stage) writes into a staging folder beside it,
    renamed into place at the end: readers see no folder or the whole one, and a failure leaves none."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(folder.parent)
    stage = temp_path(folder)
    stage.mkdir(mode=0o755)
    try:
        build(stage)
        os.rename(stage, folder)  # replaces an empty folder; a folder that filled up meanwhile is an error
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def group_file(folder: Path, name: str) -> Path:
    """Where to read file `name` of a group in `folder`: the pending copy of a save cut short, if any."""
    pending = Path(folder) / PENDING / name
    return pending if pending.is_file() else Path(folder) / name


def read_safetensors(path: Path, fix: str) -> dict:
    """The tensors of `path`; a truncated, empty or foreign file is a CorruptFileError naming it and `fix`."""
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise CorruptFileError(f"{path} is not a complete safetensors file ({exc}); {fix}.") from exc


def check_safetensors(path: Path, fix: str) -> None:
    """Read only the header of `path` (which safetensors checks against the file size)."""
    try:
        with safe_open(str(path), "pt"):
            pass
    except SafetensorError as exc:
        raise CorruptFileError(f"{path} is not a complete safetensors file ({exc}); {fix}.") from exc


def safetensors_shapes(path: Path, fix: str) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in `path`, read from its header alone (no tensor is loaded)."""
    try:
        with safe_open(str(path), "pt") as file:
            return {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
    except SafetensorError as exc:
        raise CorruptFileError(f"{path} is not a complete safetensors file ({exc}); {fix}.") from exc


def read_json_object(path: Path, fix: str) -> dict[str, Any]:
    """The JSON object in `path`; empty, torn or non-object content is a CorruptFileError naming it and `fix`."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path} is not valid JSON ({exc}); {fix}.") from exc
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path} holds a JSON {type(data).__name__}, not an object; {fix}.")
    return data


def check_torch_archive(path: Path, fix: str) -> None:
    """A file torch.save wrote is a zip archive; a truncated one has no readable central directory."""
    try:
        zipfile.ZipFile(path).close()
    except zipfile.BadZipFile as exc:
        raise CorruptFileError(f"{path} is truncated or not a torch.save file ({exc}); {fix}.") from exc
