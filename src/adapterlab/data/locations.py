"""Where known data sets are looked for: --data-dir, then $ADAPTERLAB_DATA, then the cache `adapterlab data pull` fills.

Every root is laid out as LLM-Adapters' files are here: `math/<set>.json`, `commonsense/<set>.json` (and
`commonsense/train_<set>.json`), `sst2/`. One resolver serves eval, eval --protocol choice and compare.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import MissingPathError
from ..models.cache import adapterlab_home

ENV = "ADAPTERLAB_DATA"
SUBFOLDERS = ("math", "commonsense")


def cache_root() -> Path:
    """The folder `adapterlab data pull` writes into: `$ADAPTERLAB_HOME/datasets` (default ~/.cache/adapterlab)."""
    return adapterlab_home() / "datasets"


def env_root() -> Path | None:
    """The folder $ADAPTERLAB_DATA names, or None when unset; refused by name when it is no folder."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        raise MissingPathError(f"${ENV}={value} is no folder; point it at a folder holding math/ and commonsense/ "
                               f"(as `adapterlab data pull` writes them into {cache_root()}), or unset it.")
    return root


def data_roots() -> list[Path]:
    """The roots searched when no --data-dir is given, in order: $ADAPTERLAB_DATA (if set), then the cache."""
    env = env_root()
    return [env, cache_root()] if env is not None else [cache_root()]


def default_data_dirs() -> list[Path]:
    """The math/ and commonsense/ folders of every root of `data_roots` that has them, in search order."""
    return [root / sub for root in data_roots() for sub in SUBFOLDERS if (root / sub).is_dir()]


def where_searched() -> str:
    """The roots searched, for error messages: '$ADAPTERLAB_DATA (/x), /home/u/.cache/adapterlab/datasets'."""
    env = env_root()
    return (f"${ENV} ({env}), " if env is not None else f"${ENV} (unset), ") + str(cache_root())
