"""The run folder: refusing to mix runs, finding the checkpoint to resume, writing the resolved config."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from ..checkpoint import write_atomic
from ..errors import AdapterError
from .checkpointing import last_checkpoint
from .config import TrainConfig

CONFIG_FILE = "train_config.yaml"
CHECKPOINTS = "checkpoints"
BEST = "best"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
# What a run writes into its folder; --overwrite removes these and nothing else.
RUN_FILES = (CONFIG_FILE, CHECKPOINTS, BEST, METRICS, SUMMARY, "loss.png", "adapter_config.json",
             "adapter.safetensors", "head.safetensors", "labels.json")


def read_run_config(out: Path) -> dict[str, Any] | None:
    """The settings of the run already in `out`, or None if it holds none."""
    path = out / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise AdapterError(f"{path} is not valid YAML ({exc}); remove it or pass --overwrite.") from exc


def differences(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """Names of the run settings in which `config` differs from a saved run config."""
    ours = config.run_settings()
    return sorted(k for k in ours if saved.get(k) != ours[k])


def check_run_dir(out: Path, config: TrainConfig) -> Path | None:
    """Check that the run may use `out`; returns the checkpoint to resume from, if resuming.

    A folder holding another run is refused unless --overwrite; the same run needs --resume or --overwrite.
    """
    saved = read_run_config(out)
    if config.resume:
        if saved is None:
            raise AdapterError(f"--resume: {out} holds no run ({CONFIG_FILE} missing); start without --resume.")
        diff = differences(saved, config)
        if diff:
            raise AdapterError(f"--resume: the run in {out} was made with other settings ({', '.join(diff)} "
                               "differ); resume with the same settings, or start over with --overwrite.")
        checkpoint = last_checkpoint(out / CHECKPOINTS)
        if checkpoint is None:
            raise AdapterError(f"--resume: no complete checkpoint in {out / CHECKPOINTS}; "
                               "start again with --overwrite.")
        return checkpoint
    if config.overwrite:
        return None
    if saved is not None:
        diff = differences(saved, config)
        if diff:
            raise AdapterError(f"{out} already holds a run with another config ({', '.join(diff)} differ); "
                               "pass --overwrite to replace it or choose another --output.")
        raise AdapterError(f"{out} already holds this run; pass --resume to continue it or --overwrite to start over.")
    if out.is_dir() and any(p.name in RUN_FILES for p in out.iterdir()):
        raise AdapterError(f"{out} holds files of an earlier run but no {CONFIG_FILE}; pass --overwrite.")
    return None


def clear_run(out: Path) -> None:
    """Remove the files of an earlier run (only the names a run writes)."""
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def write_run_config(out: Path, config: TrainConfig) -> None:
    """Save the resolved settings as YAML; `adapterlab train --config` accepts the file as it is."""
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    write_atomic(out / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
