"""The adapters a server holds: served name -> the adapter attached to the one model, its folder and its prompt
template. Names clients use are free text; on the model each adapter is attached under an identifier of its own
(`served_N`), since the engine's names must be identifiers.

Loading at run time (`/v1/load_lora_adapter`) reads only under the server's `--adapter-root`: the path, every file
and folder inside the adapter folder and the run settings beside it must resolve (symlinks followed) inside the
root, else 403. Loading and unloading change the model, so the worker runs them between decode steps.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.checkpoint import CONFIG_NAME, read_adapter_config
from ..core.engine import detach, get_config
from ..errors import UserError
from ..interop.peft import load_any_adapter
from ..train.run_dir import CONFIG_FILE
from ..train.run_folder import RunFolder
from .protocol import ApiError

BASE_NAME = "base"  # the served name of the bare base model
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")


@dataclass
class Served:
    """One served adapter: its name for clients, its name on the model, where it came from, how it prompts."""

    name: str
    engine_name: str
    path: Path
    template: str | None
    method: str
    virtual_tokens: bool  # prompt, prefix or P-tuning: columns in front of the prompt in the cache


def inside(path: Path, root: Path) -> bool:
    """Whether `path`, symlinks resolved, lies in `root` (itself resolved)."""
    return path.resolve() == root or root in path.resolve().parents


class Registry:
    """The served adapters of one model; `root` (resolved) confines run-time loads, None refuses them."""

    def __init__(self, model: Any, root: str | os.PathLike | None = None) -> None:
        self.model = model
        self.root = Path(root).resolve() if root is not None else None
        self.served: dict[str, Served] = {}
        self._count = 0

    def names(self) -> list[str]:
        return [BASE_NAME, *self.served]

    def get(self, name: str) -> Served | None:
        """The adapter served as `name` (None for the base); an unknown name is a 404 naming it."""
        if name == BASE_NAME:
            return None
        if name not in self.served:
            raise ApiError(404, f"The model {name!r} does not exist; this server has {', '.join(self.names())}.",
                           "model", "model_not_found")
        return self.served[name]

    def confined(self, path: str) -> Path:
        """`path` (absolute, or relative to the root) checked to lie inside the root with all it holds."""
        if self.root is None:
            raise ApiError(403, "This server loads adapters at run time only from a folder named at start; "
                                "restart it with --adapter-root DIR.", "lora_path")
        given = Path(path) if Path(path).is_absolute() else self.root / path
        if not inside(given, self.root):
            raise ApiError(403, f"lora_path {path!r} lies outside the adapter root {self.root}.", "lora_path")
        if not given.is_dir():
            raise ApiError(400, f"lora_path {path!r}: no such adapter folder under {self.root}.", "lora_path")
        for folder, dirs, files in os.walk(given):
            for entry in (*dirs, *files):
                if not inside(Path(folder) / entry, self.root):
                    raise ApiError(403, f"{Path(folder) / entry} links outside the adapter root {self.root}.",
                                   "lora_path")
        return given.resolve()

    def template(self, path: Path, confined: bool) -> str | None:
        """The prompt template of the run the adapter was trained in (its folder or the one above), if recorded."""
        for place in (path, path.parent):
            settings = place / CONFIG_FILE
            if confined and not (inside(place, self.root) and inside(settings, self.root)):
                continue
            if settings.is_file():
                return RunFolder(place).template
        return None

    def load(self, name: str, path: str, *, confined: bool) -> Served:
        """Attach the adapter in `path` (adapterlab's or PEFT's format, or a training run folder) as `name`."""
        if not isinstance(name, str) or not NAME.fullmatch(name) or name == BASE_NAME:
            raise ApiError(400, f"Adapter name {name!r}: use 1-128 letters, digits and ._:/- (not {BASE_NAME!r}).",
                           "lora_name")
        if name in self.served:
            raise ApiError(400, f"An adapter named {name!r} is already loaded; unload it first or pick another "
                                "name.", "lora_name")
        folder = self.confined(path) if confined else Path(path)
        if not (folder / CONFIG_NAME).is_file():
            if RunFolder(folder).is_run and RunFolder(folder).full:
                raise ApiError(400, f"{path} holds a full fine-tuning (a whole model), not an adapter; serve it "
                                    "with --model.", "lora_path")
            raise ApiError(400, f"{path} holds no {CONFIG_NAME}; pass an adapter folder or a finished training run "
                                "folder.", "lora_path")
        self._count += 1
        engine_name = f"served_{self._count}"
        try:
            read_adapter_config(folder)
            load_any_adapter(self.model, folder, engine_name)
        except UserError as exc:
            raise ApiError(400, f"{path}: {' '.join(str(exc).split())}", "lora_path") from None
        config = get_config(self.model, engine_name)
        served = Served(name, engine_name, folder, self.template(folder, confined), config.method,
                        hasattr(config, "num_virtual_tokens"))
        self.served[name] = served
        return served

    def unload(self, name: str) -> None:
        """Detach the adapter served as `name`."""
        served = self.get(name)
        if served is None:
            raise ApiError(400, f"{BASE_NAME!r} is the base model; it cannot be unloaded.", "lora_name")
        detach(self.model, served.engine_name)
        del self.served[name]
