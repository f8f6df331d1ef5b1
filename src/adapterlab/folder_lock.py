"""One command at a time in an output folder (a run, an export, a comparison): an exclusive `flock` on
FOLDER/.adapterlab.lock, held for the command's life.

The kernel drops the lock when its process ends, even by SIGKILL, so a crashed run never blocks the next
one; a second run started meanwhile gets a RunFolderError naming the folder and the holder's PID.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import RunFolderError

LOCK_NAME = ".adapterlab.lock"


def _make_folders(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; returns the ones created, innermost last."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def _lock(folder: Path) -> int:
    """An open descriptor of folder/LOCK_NAME holding the exclusive lock, with our PID written into the file."""
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderError(f"{folder} is in use by another adapterlab run (PID {_holder(path)}); wait for it "
                                 "to end, or choose another --output.") from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):  # not a file a finishing run just unlinked
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders the claim created, innermost first, as long as they are empty."""
    for made in reversed(created):
        try:
            made.rmdir()
        except OSError:
            break


@contextlib.contextmanager
def claim_run_folder(folder: Path) -> Iterator[None]:
    """Hold `folder` for this run (creating it); on exit release it, removing what the claim alone created."""
    created = _make_folders(folder)
    try:
        fd = _lock(folder)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield
    finally:
        (folder / LOCK_NAME).unlink(missing_ok=True)  # before unlocking: a waiter then sees it was replaced
        os.close(fd)
        _remove_empty(created)  # a run that failed before writing anything leaves no folder behind
