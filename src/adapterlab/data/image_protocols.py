"""Image benchmarks' own train/dev/test protocols (`--split fgvc | vtab-1k | vtab-1k-tune`), read from the dataset
folder as VPT (github.com/KMnP/vpt) and MoSA (github.com/Theia-4869/MoSA), which trains on VPT's data code, lay it out.

FGVC (CUB-200-2011, NABirds, Oxford Flowers, Stanford Dogs, Stanford Cars): VPT's train.json / val.json / test.json
in the dataset root, each a JSON object {image path: class id}, the paths relative to images/ (CUB, NABirds),
Images/ (Stanford Dogs) or the root itself (Flowers, Cars), as their json_dataset.py reads them. VTAB-1k: one task
folder holding train800.txt, val200.txt, train800val200.txt and test.txt of "PATH LABEL" lines relative to it (the
image release NOAH, SPT and later PETL code read; MoSA reads the same named splits from TFDS with tensorflow).
Labels are the class ids as text; label ids follow their natural order, which is VPT's sorted-id order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import DataError, MissingPathError, UsageError
from .image import check_image
from .reading import check_folder, read_text

Examples = tuple[list[Path], list[str]]  # (image files, label name of each)


@dataclass(frozen=True)
class ImageSplit:
    """A protocol's train, dev and test examples; `dev_in_train`: the dev images are training images too."""

    train: Examples
    dev: Examples
    test: Examples
    dev_in_train: bool


@dataclass(frozen=True)
class Protocol:
    """One benchmark's split: its train, dev and test list files in --data and how to read one."""

    dataset: str
    layout: str  # what --data must hold, for errors
    lists: tuple[str, str, str]  # train, dev, test
    read: Callable[[Path, Path, str], Examples]  # (list file, root, layout) -> examples
    dev_in_train: bool
    choice: str  # which list trains, selects and tests, for errors and the run summary


def listed_image(root: Path, base: Path, name: str, where: str, layout: str) -> Path:
    """base/name if `name` is a relative path that stays inside the dataset folder and names a readable image."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if not name or pure.is_absolute() or PureWindowsPath(name).drive or ".." in pure.parts:
        raise DataError(f"{where}: {name!r} is not a path inside the dataset folder {root}; list paths relative to "
                        "it, without '..' (restore the original file).")
    path = base / pure
    if not path.is_file():
        raise MissingPathError(f"{path}, listed in {where}, does not exist; --data must be {layout}, complete.")
    return check_image(path, where)


def fgvc_images(root: Path) -> Path:
    """Where VPT's FGVC paths start: images/ (CUB, NABirds) or Images/ (Stanford Dogs) when the root has one, else
    the root (Oxford Flowers, Stanford Cars)."""
    return next((root / name for name in ("images", "Images") if (root / name).is_dir()), root)


def read_fgvc_json(path: Path, root: Path, layout: str) -> Examples:
    """(images, class ids as text) of one of VPT's FGVC annotation files, {image path: class id}."""
    text = read_text(path, "Annotation file")
    try:
        annotations = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}; restore "
                        "VPT's file.") from exc
    if not isinstance(annotations, dict) or not annotations:
        held = "no images" if annotations in ({}, []) else f"a JSON {type(annotations).__name__}"
        raise DataError(f"{path} holds {held}; VPT's file is a non-empty JSON object {{image path: class id}} "
                        "(restore it).")
    base, files, labels = fgvc_images(root), [], []
    for name, label in annotations.items():
        if isinstance(label, bool) or not isinstance(label, (int, str)) or not str(label).strip():
            raise DataError(f"{path}: {name!r} has class id {label!r}; VPT's files map each image path to an "
                            "integer class id (restore the file).")
        files.append(listed_image(root, base, name, str(path), layout))
        labels.append(str(label).strip())
    return files, labels


def read_vtab_list(path: Path, root: Path, layout: str) -> Examples:
    """(images, class ids as text) of one VTAB-1k list, "PATH LABEL" lines, paths relative to the task folder."""
    files, labels = [], []
    for number, line in enumerate(read_text(path, "Image list").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(None, 1)
        if len(parts) != 2 or not parts[1].isdigit():
            raise DataError(f"{path} line {number}: {line.strip()!r} is not 'PATH LABEL' with an integer class id; "
                            "restore the original list.")
        files.append(listed_image(root, root, parts[0], f"{path} line {number}", layout))
        labels.append(str(int(parts[1])))
    if not files:
        raise DataError(f"{path} lists no images; restore the original list.")
    return files, labels


FGVC_LAYOUT = ("an FGVC dataset root as VPT prepares it (train.json, val.json, test.json; images under images/, "
               "Images/ or the root, e.g. CUB_200_2011)")
VTAB_LAYOUT = "one VTAB-1k task folder (train800.txt, val200.txt, train800val200.txt, test.txt; e.g. vtab-1k/cifar)"
PROTOCOLS: dict[str, Protocol] = {
    "fgvc": Protocol("FGVC", FGVC_LAYOUT, ("train.json", "val.json", "test.json"), read_fgvc_json, False,
                     "train.json trains, val.json is the dev set, test.json tests"),
    "vtab-1k": Protocol("VTAB-1k", VTAB_LAYOUT, ("train800val200.txt", "val200.txt", "test.txt"), read_vtab_list,
                        True, "train800val200.txt trains, val200.txt (part of it, as in MoSA's and VPT's final "
                        "runs) is the dev set, test.txt tests"),
    "vtab-1k-tune": Protocol("VTAB-1k", VTAB_LAYOUT, ("train800.txt", "val200.txt", "test.txt"), read_vtab_list,
                             False, "train800.txt trains, val200.txt is the held-out dev set, test.txt tests"),
}


def holding_lists(root: Path, protocol: Protocol) -> list[str]:
    """Names of the sub-folders of `root` that hold the protocol's lists (--data one level too high)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / protocol.lists[0]).is_file())


def read_protocol(name: str, data: list[str]) -> ImageSplit:
    """The train, dev and test examples of protocol `name` on the one dataset folder in `data` (--data); every
    list is checked to exist before any image is read."""
    protocol = PROTOCOLS[name]
    if len(data) != 1:
        raise UsageError(f"--split {name} reads one dataset folder, {protocol.layout}; --data got {len(data)} paths.")
    root = check_folder(data[0], f"--split {name}: --data", f"pass {protocol.layout}")
    for list_name in protocol.lists:
        if not (root / list_name).is_file():
            inner = holding_lists(root, protocol)
            hint = f" (its sub-folders {', '.join(inner[:8])} hold one: pass one of them)" if inner else ""
            raise MissingPathError(f"{root / list_name} does not exist; --data must be {protocol.layout}{hint}.")
    train, dev, test = (protocol.read(root / list_name, root, protocol.layout) for list_name in protocol.lists)
    return ImageSplit(train, dev, test, protocol.dev_in_train)
