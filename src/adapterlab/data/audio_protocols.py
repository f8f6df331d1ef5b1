"""Audio datasets' own train/dev/test protocols, read from the dataset root as distributed (`--split NAME`).

A protocol reads the root into a `Catalog` (file, label and group of every example: a fold, a speaker, an
official list) and says, for one fold, which groups are the dev set and which the test set; the other groups
train. The folds a protocol declares are what `--fold` picks from and `--cross-validate` runs. Train, dev and
test follow PETL-for-AST's dataset classes and main.py (github.com/umbertocappellazzo/PETL_AST), except that
their fixed class-id tables become label names (ids follow natural sort order of the names, as elsewhere).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath


from ..errors import DataError, MissingPathError, UsageError
from .audio import check_clip, list_audio
from .reading import check_folder, read_text

TRAIN, DEV, TEST = "train", "dev", "test"
# Roles of groups for one fold: group -> DEV or TEST; groups not named train.
Roles = Callable[[str | None, list[str]], dict[str, str]]


@dataclass(frozen=True)
class Catalog:
    """Every example of a dataset: its file, its label name and its group (fold, speaker or official list)."""

    files: list[Path]
    labels: list[str]
    groups: list[str]


@dataclass(frozen=True)
class Protocol:
    """How one dataset is split: reading its root, its folds (None: one fixed split) and each fold's roles."""

    dataset: str
    layout: str  # what --data must hold, for errors
    read: Callable[[Path, str], Catalog]  # (root, layout) -> catalog
    folds: Callable[[Catalog], list[str]] | None
    roles: Roles
    choice: str  # which groups train, select and test, for --help and errors


def numbered(count: int) -> Callable[[Catalog], list[str]]:
    """Folds 1..count, declared by the dataset (a fold missing from the files is an error when picked)."""
    return lambda catalog: [str(k) for k in range(1, count + 1)]


def groups_present(catalog: Catalog) -> list[str]:
    """One fold per group present in the data (e.g. per speaker), sorted."""
    return sorted(set(catalog.groups))


def held_out(fold: str | None, folds: list[str]) -> dict[str, str]:
    """Fold K is the dev set; the others train."""
    return {fold: DEV}


def test_after_dev(fold: str | None, folds: list[str]) -> dict[str, str]:
    """Fold K is the test set and the fold before it (cyclically) the dev set; the others train."""
    return {fold: TEST, folds[folds.index(fold) - 1]: DEV}


def official(**roles: str) -> Roles:
    """A fixed split: the named groups (official lists) are dev or test; every other file trains."""
    return lambda fold, folds: dict(roles)


def inside(root: Path, folder: Path, name: str, where: str) -> Path:
    """`folder / name` for a file `name` that metadata at `where` lists; a name that leaves the dataset root `root`
    (absolute, a drive, or a `..` part; judged on the name itself, so a symlinked audio/ folder still works) is
    refused naming the row, so metadata never makes a run read files from elsewhere."""
    parts = PurePosixPath(name.replace("\\", "/"))
    if parts.is_absolute() or ".." in parts.parts or PureWindowsPath(name).drive:
        raise DataError(f"{where}: {name!r} is an absolute path or climbs out with '..'; metadata must name files "
                        f"inside the dataset folder {root}: restore the dataset's original file.")
    return folder / name


def checked_audio(path: Path, listed_in: str, layout: str) -> Path:
    """`path` if it is a usable audio file (`check_clip`: readable, with samples, none NaN or inf; so a bad file is
    named before any run folder is written); else a one-line error naming it and where it was listed."""
    if not path.is_file():
        raise MissingPathError(f"{path}, listed in {listed_in}, does not exist; --data must be {layout}, complete.")
    check_clip(path, listed_in)
    return path


def metadata_rows(path: Path, columns: tuple[str, ...], layout: str) -> list[tuple[str, dict[str, str]]]:
    """(where, row) of each row of a metadata CSV whose header has `columns`; `where` is "FILE line N"."""
    if not path.is_file():
        raise MissingPathError(f"{path} does not exist; --data must be {layout}.")
    reader = csv.DictReader(io.StringIO(read_text(path, "Metadata file"), newline=""))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path} has no {', '.join(missing)} column (header: {reader.fieldnames}); restore the "
                        "dataset's original file.")
    rows = []
    for row in reader:
        where = f"{path} line {reader.line_num}"
        empty = [c for c in columns if not (row[c] or "").strip()]
        if empty:
            raise DataError(f"{where}: empty {', '.join(empty)}; restore the dataset's original file.")
        rows.append((where, {c: row[c].strip() for c in columns}))
    return rows


def fold_value(text: str, count: int, where: str) -> str:
    """A fold number 1..count as text ("3"); anything else is refused naming the row."""
    if not text.isdigit() or not 1 <= int(text) <= count:
        raise DataError(f"{where}: fold {text!r} is not one of 1-{count}; restore the dataset's original file.")
    return str(int(text))


def read_esc50(root: Path, layout: str) -> Catalog:
    """ESC-50: meta/esc50.csv rows (filename, fold, category), audio in audio/; label = category."""
    rows = metadata_rows(root / "meta" / "esc50.csv", ("filename", "fold", "category"), layout)
    return Catalog([checked_audio(inside(root, root / "audio", r["filename"], w), w, layout) for w, r in rows],
                   [r["category"] for _, r in rows], [fold_value(r["fold"], 5, w) for w, r in rows])


def read_urbansound8k(root: Path, layout: str) -> Catalog:
    """UrbanSound8K: metadata/UrbanSound8K.csv rows (slice_file_name, fold, class), audio in audio/foldN/."""
    rows = metadata_rows(root / "metadata" / "UrbanSound8K.csv", ("slice_file_name", "fold", "class"), layout)
    groups = [fold_value(r["fold"], 10, w) for w, r in rows]
    return Catalog([checked_audio(inside(root, root / "audio" / f"fold{g}", r["slice_file_name"], w), w, layout)
                    for g, (w, r) in zip(groups, rows)], [r["class"] for _, r in rows], groups)


def read_speech_commands(root: Path, layout: str) -> Catalog:
    """Speech Commands v2: a file on validation_list.txt or testing_list.txt is in that group; every other .wav
    of a word folder (not _background_noise_) trains. Label = the word folder."""
    listed: dict[str, str] = {}
    for group in ("validation", "testing"):
        path = root / f"{group}_list.txt"
        if not path.is_file():
            raise MissingPathError(f"{path} does not exist; --data must be {layout}.")
        for number, line in enumerate(read_text(path, "File list").splitlines(), 1):
            name = line.strip()
            if name:
                inside(root, root, name, f"{path} line {number}")
            if name and name.count("/") != 1:
                raise DataError(f"{path} line {number}: {name!r} is not WORD/FILE.wav; restore the original list.")
            if name and listed.setdefault(name, group) != group:
                raise DataError(f"{path} line {number}: {name} is also on {listed[name]}_list.txt; restore the "
                                "original lists.")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name != "_background_noise_"
                     and not p.name.startswith("."))
    found = {f"{folder.name}/{wav.name}": wav for folder in folders for wav in sorted(folder.glob("*.wav"))}
    unfound = [name for name in listed if name not in found]
    if unfound:
        raise MissingPathError(f"{root / unfound[0]}, listed in {root / listed[unfound[0]]}_list.txt, is not a .wav "
                               f"file of a word folder; --data must be {layout}, complete.")
    names = sorted(found)
    return Catalog([checked_audio(found[n], f"the {found[n].parent.name} folder", layout) for n in names],
                   [n.split("/")[0] for n in names], [listed.get(n, TRAIN) for n in names])


def read_fluent_speech(root: Path, layout: str) -> Catalog:
    """Fluent Speech Commands: data/{train,valid,test}_data.csv rows (path, action, object, location), paths
    relative to the root; label = action + object + location, concatenated as PETL-for-AST forms the intent."""
    files, labels, groups = [], [], []
    for group in ("train", "valid", "test"):
        for where, row in metadata_rows(root / "data" / f"{group}_data.csv", ("path", "action", "object", "location"),
                                        layout):
            files.append(checked_audio(inside(root, root, row["path"], where), where, layout))
            labels.append(row["action"] + row["object"] + row["location"])
            groups.append(group)
    return Catalog(files, labels, groups)


def read_fsdd_speakers(root: Path, layout: str) -> Catalog:
    """Free Spoken Digit Dataset files {digit}_{speaker}_{index}.wav: label = digit, group = speaker."""
    files = list_audio(root)
    parts = [p.stem.split("_") for p in files]
    for path, part in zip(files, parts):
        if len(part) != 3 or not part[0].isdigit() or not part[2].isdigit():
            raise DataError(f"{path} is not named {{digit}}_{{speaker}}_{{index}}.wav as --split fsdd-speakers "
                            "needs; rename it or remove it.")
    return Catalog(files, [p[0] for p in parts], [p[1] for p in parts])


PROTOCOLS: dict[str, Protocol] = {
    "esc50": Protocol(
        "ESC-50", "the ESC-50 root (meta/esc50.csv, audio/; e.g. ESC-50-master)", read_esc50, numbered(5),
        test_after_dev, "fold K tests, fold K-1 (5 for K=1) is the dev set, the other three train"),
    "urbansound8k": Protocol(
        "UrbanSound8K", "the UrbanSound8K root (metadata/UrbanSound8K.csv, audio/fold1..10/)", read_urbansound8k,
        numbered(10), held_out, "fold K is the dev set (there is no separate test fold), the other nine train"),
    "speech-commands": Protocol(
        "Speech Commands v2", "the Speech Commands v2 root (validation_list.txt, testing_list.txt, word folders)",
        read_speech_commands, None, official(validation=DEV, testing=TEST),
        "validation_list.txt is the dev set, testing_list.txt tests, every other word-folder file trains"),
    "fluent-speech": Protocol(
        "Fluent Speech Commands", "the Fluent Speech Commands root (data/train_data.csv, valid_data.csv, "
        "test_data.csv; the wavs they name)", read_fluent_speech, None, official(valid=DEV, test=TEST),
        "train_data.csv trains, valid_data.csv is the dev set, test_data.csv tests"),
    "fsdd-speakers": Protocol(
        "FSDD", "a folder of Free Spoken Digit Dataset recordings ({digit}_{speaker}_{index}.wav)",
        read_fsdd_speakers, groups_present, held_out, "speaker K is the dev set, the other speakers train"),
}
FOLDED = tuple(name for name, p in PROTOCOLS.items() if p.folds is not None)


def read_catalog(name: str, data: list[str]) -> tuple[Protocol, Catalog]:
    """The protocol `name` and the catalog of the one dataset root in `data` (--data)."""
    protocol = PROTOCOLS[name]
    if len(data) != 1:
        raise UsageError(f"--split {name} reads one dataset root, {protocol.layout}; --data got {len(data)} paths.")
    root = check_folder(data[0], f"--split {name}: --data", f"pass {protocol.layout}")
    return protocol, protocol.read(root, protocol.layout)


def fold_names(name: str, data: list[str]) -> list[str]:
    """The folds of protocol `name` on the dataset in `data`; a protocol without folds is refused."""
    protocol, catalog = read_catalog(name, data)
    if protocol.folds is None:
        raise UsageError(f"--split {name} has no folds ({protocol.choice}); --cross-validate needs one of "
                         f"{', '.join(FOLDED)}. Drop --cross-validate.")
    return protocol.folds(catalog)


def split_roles(name: str, data: list[str], fold: str | None) -> tuple[Catalog, list[str]]:
    """(catalog, role of each example: TRAIN, DEV or TEST) of protocol `name` for `fold`."""
    protocol, catalog = read_catalog(name, data)
    folds = protocol.folds(catalog) if protocol.folds is not None else []
    if protocol.folds is None and fold is not None:
        raise UsageError(f"--fold {fold}: --split {name} has no folds ({protocol.choice}); drop --fold.")
    if protocol.folds is not None and fold not in folds:
        given = f"--fold {fold} is not one of its folds" if fold is not None else "pass --fold"
        raise UsageError(f"--split {name}: {given} ({', '.join(folds)}), or --cross-validate to run them all.")
    named = protocol.roles(fold, folds)
    roles = [named.get(group, TRAIN) for group in catalog.groups]
    for role in (TRAIN, *dict.fromkeys(named.values())):
        if role not in roles:
            which = f"fold {fold}" if fold is not None else "the split"
            raise DataError(f"--split {name}: {which} has no {role} files in {data[0]}; --data must be "
                            f"{protocol.layout}, complete.")
    return catalog, roles
