"""Image folders for classification (`root/<class>/*.png|jpg|...`) read with Pillow for an image processor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from ..errors import DataError
from .reading import check_folder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def list_images(root: str | Path) -> tuple[list[Path], list[str]]:
    """(image files, class name of each) for a folder holding one sub-folder per class, sorted by path; each
    file's header is read, so a file that is not an image is named before the run folder is written."""
    root = check_folder(root, "Image folder", "pass a folder with one sub-folder per class")
    files, labels = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(class_dir.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(path)
                labels.append(class_dir.name)
    if not files:
        raise DataError(f"No images under {root}/<class>/; expected files ending in {', '.join(IMAGE_SUFFIXES)}.")
    for path in files:
        check_image(path)
    return files, labels


def check_image(path: Path, listed_in: str = "") -> Path:
    """`path` if its image header reads (lazy, so a bad file is named before the run folder is written); else a
    one-line error naming it and, where given, the list that named it."""
    where = f", listed in {listed_in}," if listed_in else ""
    try:
        Image.open(path).close()
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}{where} is not a readable image ({exc}); replace or remove it.") from exc
    return path


class ImageClassificationDataset(torch.utils.data.Dataset):
    """(image file, label id) pairs turned into `{"pixel_values", "labels"}` by an image processor on access."""

    def __init__(self, files: list[Path], labels: list[int], processor: Any) -> None:
        if len(files) != len(labels):
            raise DataError(f"{len(files)} files but {len(labels)} labels.")
        self.files, self.labels, self.processor = list(files), list(labels), processor

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        with Image.open(self.files[index]) as image:
            pixels = self.processor(images=image.convert("RGB"), return_tensors="np")["pixel_values"][0]
        return {"pixel_values": pixels.astype(np.float32), "labels": self.labels[index]}
