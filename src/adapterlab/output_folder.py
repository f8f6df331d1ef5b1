"""One rule for every command that writes into a folder (export, compare; train keeps its run-folder rules in
train/run_dir.py, which this mirrors): never write into a model's folder or a training run's, refuse a
non-empty folder unless --overwrite, and then remove only what an earlier run of the same command wrote.

A command records, in FOLDER/.adapterlab-<command>.json and before writing them, the paths (relative to the
folder) of what it writes, so `--overwrite` removes exactly those and nothing a user put beside them. It holds
the folder's lock (folder_lock.py) for its whole life, so two commands never write one folder at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from .errors import RunFolderError
from .files import PENDING, read_json_object, remove_entry, sweep_stale, write_json
from .folder_lock import LOCK_NAME, claim_run_folder

# train/run_dir.py's MANIFEST and CONFIG_FILE: a folder holding either is a training run's folder.
RUN_MARKERS = (".adapterlab-run.json", "train_config.yaml")


def relation(where: Path, folder: Path) -> str | None:
    """How `where` stands to `folder`: "is", "lies inside", "contains", or None when apart."""
    if where == folder:
        return "is"
    if where.is_relative_to(folder):
        return "lies inside"
    return "contains" if folder.is_relative_to(where) else None


def _plain(entry: object) -> bool:
    """A manifest entry that stays inside the folder (an edited manifest must not make --overwrite delete
    anything outside it)."""
    if not isinstance(entry, str) or not entry or entry.startswith("/"):
        return False
    parts = PurePosixPath(entry).parts
    return all(p not in ("", ".", "..") for p in parts)


class OutputFolder:
    """The folder one command (`command`, e.g. "export") writes, named on the command line by `flag`."""

    def __init__(self, path: str | Path, command: str, flag: str, resumable: bool = False) -> None:
        self.path, self.command, self.flag, self.resumable = Path(path), command, flag, resumable
        self.manifest = self.path / f".adapterlab-{command}.json"

    def written(self) -> set[str]:
        """The paths (relative, '/'-separated) that earlier runs of the command recorded here."""
        if not self.manifest.is_file():
            return set()
        data = read_json_object(self.manifest, f"delete it and the {self.command} outputs in {self.path}, or "
                                               f"choose another {self.flag}")
        names = data.get("written")
        return {n for n in names if _plain(n)} if isinstance(names, list) else set()

    def record(self, names: Iterable[str]) -> None:
        """Add `names` to the manifest; call it before writing them, so a kill never leaves unlisted outputs."""
        before = self.written()
        after = before | set(names)
        if after != before or not self.manifest.is_file():
            write_json(self.manifest, {"written": sorted(after)})

    def entries(self) -> list[str]:
        """What the folder holds at its top level, besides the lock and the manifest."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name not in (LOCK_NAME, self.manifest.name))

    def foreign(self) -> list[str]:
        """Top-level entries that no earlier run of the command wrote (a folder holding some of its outputs,
        like compare's runs/, counts as its own)."""
        tops = {PurePosixPath(n).parts[0] for n in self.written()}
        return [n for n in self.entries() if n not in tops]

    def check_place(self, protected: Iterable[tuple[str, Path | None]] = ()) -> None:
        """Refuse a path that is a file, that is, contains or lies inside a `protected` (description, folder)
        (the base model's folder, the adapter read), or that is or lies inside a training run's folder."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.flag} {self.path} is a file; give a folder (new, empty or of an earlier "
                                 f"{self.command}).")
        where = self.path.resolve()
        for what, folder in protected:
            how = None if folder is None else relation(where, folder.resolve())
            if how:
                raise RunFolderError(f"{self.flag} {self.path} {how} {what} ({folder}); {self.command} would "
                                     f"write over its files. Choose a {self.flag} folder outside it.")
        ours = self.written()  # a marker this command wrote itself (merge --head-from's settings) is no run's
        for folder in (where, *where.parents):
            if any((folder / marker).is_file() and not (folder == where and marker in ours) for marker in RUN_MARKERS):
                how = "is" if folder == where else "lies inside"
                raise RunFolderError(f"{self.flag} {self.path} {how} the training run folder {folder}; "
                                     f"{self.command} would mix its files with the run's. Choose a {self.flag} "
                                     "folder outside it.")

    def check_contents(self, overwrite: bool, writes: Iterable[str] | None = None, resume: bool = False) -> None:
        """Refuse a non-empty folder unless `overwrite` (or `resume`, which needs an earlier run of the command),
        and, with `overwrite`, one holding what we would write (`writes`: top-level names; None: the whole
        folder) but no earlier run of the command wrote."""
        ours = self.written()
        if resume:
            if not ours:
                raise RunFolderError(f"--resume: {self.flag} {self.path} holds no earlier {self.command} "
                                     f"({self.manifest.name} missing); start without --resume.")
            return
        entries = self.entries()
        if not overwrite:
            if ours:
                add = "--resume to add to it, " if self.resumable else ""
                raise RunFolderError(f"{self.flag} {self.path} holds the outputs of an earlier adapterlab "
                                     f"{self.command}; pass {add}--overwrite to replace it, or choose another "
                                     f"{self.flag} folder.")
            if entries:
                raise RunFolderError(f"{self.flag} {self.path} is not empty ({', '.join(entries[:3])}"
                                     f"{', ...' if len(entries) > 3 else ''}); choose a new or empty folder, or pass "
                                     f"--overwrite (it removes only what an earlier {self.command} wrote).")
            return
        foreign = self.foreign()
        clash = foreign if writes is None else sorted(set(foreign) & set(writes))
        if clash:
            raise RunFolderError(f"--overwrite: {self.flag} {self.path} holds {', '.join(clash[:3])}, which no "
                                 f"earlier {self.command} wrote and this one would replace; move them away or "
                                 f"choose another {self.flag} folder.")
        links = [p for p in self._ours_present() if p.is_symlink()]
        if links:
            raise RunFolderError(f"--overwrite: {links[0]} is a symbolic link; it never deletes through links. "
                                 "Remove the link, then run again.")

    def _ours_present(self) -> list[Path]:
        paths = [self.path / n for n in sorted(self.written() | {PENDING})]
        return [p for p in paths if p.exists() or p.is_symlink()]

    def clear(self) -> None:
        """Remove what earlier runs of the command wrote here, and the folders left empty by that; nothing else."""
        for path in self._ours_present():
            remove_entry(path)
            for parent in path.parents:
                if parent == self.path or not parent.is_relative_to(self.path):
                    break
                with contextlib.suppress(OSError):
                    parent.rmdir()  # only when empty
        sweep_stale(self.path)
        self.manifest.unlink(missing_ok=True)

    @contextlib.contextmanager
    def claim(self, overwrite: bool, writes: Iterable[str] | None = None, resume: bool = False) -> Iterator[None]:
        """Lock the folder for the command's life (creating it) and check what it holds (the caller then calls
        clear() with `overwrite`); a folder the claim created and nothing filled is removed on exit."""
        with claim_run_folder(self.path):
            self.check_contents(overwrite, writes, resume)
            yield


__all__ = ["OutputFolder", "RUN_MARKERS", "relation"]
