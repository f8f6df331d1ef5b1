"""Where a model spec's files are: a local folder, a .gguf file, a short name's cache (pulled on first use) or a
hub id; and, when loading failed, which of those files is damaged. Nothing here loads a model."""

from __future__ import annotations

import fnmatch
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import CorruptFileError, ModelError
from ..files import check_safetensors, read_json_object
from .cache import is_cached, model_dir, model_path, pull
from .known import KNOWN_MODELS, UnknownModelError


# Files of which a folder's tokenizer needs at least one (a tokenizer.json, or a vocabulary for a slow tokenizer).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "*vocab*", "*.model", "merges.txt", "*.tiktoken")
REDOWNLOAD = "download or save the model again"


@dataclass(frozen=True)
class ModelSource:
    """Where a spec points: a local folder, a local .gguf file, or a hub id (`kind` says which)."""

    kind: str   # "folder" | "gguf" | "hub"
    location: str
    name: str   # what to record as the model's name_or_path: a spec that load_model accepts again

    @property
    def is_local(self) -> bool:
        return self.kind != "hub"


def resolve_model(spec: str, *, log: Callable[[str], None] = print) -> ModelSource:
    """Decide what `spec` names, pulling a known short name into the cache if needed (no hub call here)."""
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UnknownModelError(f"GGUF file {spec!r} does not exist; check the path.")
        return ModelSource("gguf", str(path.resolve()), str(path.resolve()))
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and len(ggufs) == 1:
            return ModelSource("gguf", str(ggufs[0].resolve()), str(ggufs[0].resolve()))
        return ModelSource("folder", str(path.resolve()), str(path.resolve()))
    if spec in KNOWN_MODELS:
        if is_cached(spec):
            local = model_path(spec)
        else:
            log(f"Model {spec!r} is not cached yet; pulling it into {model_path(spec).parent}.")
            local = pull(spec, log=log)
        kind = "gguf" if KNOWN_MODELS[spec].is_gguf else "folder"
        return ModelSource(kind, str(local), spec)
    if spec.startswith(("/", "./", "../", "~")):
        raise UnknownModelError(f"Model folder {spec!r} does not exist; check the path.")
    return ModelSource("hub", spec, spec)


def model_folder(spec: str) -> Path | None:
    """The folder `spec`'s files are read from, found without pulling or downloading: the folder itself, the folder
    of a .gguf file, a short name's cache folder, or a hub id's folder in the Hugging Face cache."""
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        return path.resolve().parent
    if path.is_dir():
        return path.resolve()
    if spec in KNOWN_MODELS:
        return model_dir(spec).resolve()
    if spec.startswith(("/", "./", "../", "~")) or ":" in spec:
        return None
    from huggingface_hub.constants import HF_HUB_CACHE

    return (Path(HF_HUB_CACHE) / f"models--{spec.replace('/', '--')}").resolve()


def check_folder(source: ModelSource, needs_tokenizer: bool) -> None:
    """A model folder has a readable config.json and, when a tokenizer is loaded from it, tokenizer files."""
    if source.kind != "folder":
        return
    folder = Path(source.location)
    if not (folder / "config.json").is_file():
        raise ModelError(f"Model folder {folder} has no config.json; point --model at the folder that holds the "
                         "model's config.json and weights (or at a .gguf file).")
    read_json_object(folder / "config.json", REDOWNLOAD)
    names = [p.name for p in folder.iterdir()]
    if needs_tokenizer and not any(fnmatch.fnmatchcase(n, p) for n in names for p in _TOKENIZER_FILES):
        raise ModelError(f"Model folder {folder} has no tokenizer files (tokenizer.json, tokenizer_config.json or a "
                         "vocabulary); save the base model's tokenizer into it (tokenizer.save_pretrained).")


def damaged_file(source: ModelSource, exc: BaseException) -> CorruptFileError | None:
    """After transformers failed to load a local model: the error naming the damaged file, if one is."""
    location = Path(source.location)
    folder = location if source.kind == "folder" else location.parent
    if isinstance(exc, pickle.UnpicklingError):
        pickles = ", ".join(str(p) for p in sorted(folder.glob("*.bin"))) or str(folder)
        return CorruptFileError(f"{pickles}: weights-only loading refused this pickle (it holds more than tensors) "
                                "and adapterlab never unpickles; use the model's safetensors files, or convert it in "
                                "a process you trust.")
    if source.kind == "gguf":
        return _damaged_gguf(location)
    for file in sorted(folder.glob("*.safetensors")):
        try:
            check_safetensors(file, REDOWNLOAD)
        except CorruptFileError as damage:
            return damage
    return None


def _damaged_gguf(path: Path) -> CorruptFileError | None:
    from gguf import GGUFReader

    try:
        GGUFReader(path)
    except (ValueError, IndexError, KeyError) as exc:
        return CorruptFileError(f"{path} is truncated or not a GGUF file ({exc}); {REDOWNLOAD}.")
    return None
