"""The run folder: what a run wrote (its manifest), refusing to mix runs or to write over a model, finding the
checkpoint to resume, writing the resolved config.

A run records the name of every top-level file or folder it is about to write in `.adapterlab-run.json`
before writing it, so `--overwrite` removes exactly a previous run's outputs (a full fine-tuning's
config.json and model.safetensors included) and nothing a user put beside them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ..errors import AdapterError, RunClashError, RunFolderError
from ..files import PENDING, read_json_object, remove_entry, sweep_stale, write_atomic, write_json
from ..models import model_folder
from .checkpointing import last_checkpoint
from .config import TrainConfig

CONFIG_FILE = "train_config.yaml"
CHECKPOINTS = "checkpoints"
BEST = "best"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PLOT = "loss.png"
MANIFEST = ".adapterlab-run.json"
# Files that model and adapter loaders read: in --output, such files that no run wrote belong to a model.
MODEL_FILES = ("config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json", "*.bin",
               "*.bin.index.json", "*.gguf", "tokenizer*", "special_tokens_map.json",
               "added_tokens.json", "vocab.*", "merges.txt", "*.model", "chat_template.*", "preprocessor_config.json",
               "processor_config.json", "adapter_config.json")
# Names only a run writes; without a manifest, these are taken for an earlier run's outputs.
RUN_NAMES = (CONFIG_FILE, CHECKPOINTS, BEST, METRICS, SUMMARY, PLOT, "labels.json")
# What runs of earlier versions wrote, which kept no manifest (recognised by train_config.yaml or checkpoints/).
LEGACY_OUTPUTS = (*RUN_NAMES, *MODEL_FILES)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def run_outputs(out: Path) -> set[str]:
    """Names of the entries of `out` that runs wrote: those in the manifest or, for a run of an earlier
    version (no manifest), the names such runs wrote."""
    if not out.is_dir():
        return set()
    manifest = out / MANIFEST
    if manifest.is_file():
        written = read_json_object(manifest, f"delete it and the run's files in {out}, or choose another --output")
        names = written.get("written")
        # plain names only: an edited manifest must not make --overwrite delete anything outside the folder
        return {n for n in names if isinstance(n, str) and n not in ("", ".", "..") and Path(n).name == n} \
            if isinstance(names, list) else set()
    legacy = (out / CONFIG_FILE).is_file() or (out / CHECKPOINTS).is_dir()
    return {p.name for p in out.iterdir() if _matches(p.name, LEGACY_OUTPUTS if legacy else RUN_NAMES)}


def record_outputs(out: Path, names: Iterable[str]) -> None:
    """Add `names` to the run's manifest; called before writing them, so a kill never leaves unlisted outputs."""
    before = run_outputs(out)
    after = before | set(names)
    if after != before or not (out / MANIFEST).is_file():
        write_json(out / MANIFEST, {"written": sorted(after)})


def foreign_model_files(out: Path) -> list[str]:
    """Model or adapter files in `out` that no run wrote (a run would overwrite them)."""
    if not out.is_dir():
        return []
    ours = run_outputs(out)
    return sorted(p.name for p in out.iterdir() if _matches(p.name, MODEL_FILES) and p.name not in ours)


def check_output(out: Path, model: str) -> None:
    """Refuse an --output that is a file, that is, contains or lies in the model's folder, or that holds a model."""
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--output {out} is a file; give a folder (new or of an earlier run).")
    folder = model_folder(model)
    where = out.resolve()
    if folder is not None and (where == folder or where.is_relative_to(folder) or folder.is_relative_to(where)):
        relation = "is" if where == folder else "lies inside" if where.is_relative_to(folder) else "contains"
        raise RunFolderError(f"--output {out} {relation} the folder of --model {model} ({folder}); training would "
                             "write over the model's files. Choose an --output outside it.")
    foreign = foreign_model_files(out)
    if foreign:
        raise RunFolderError(f"--output {out} holds model files that no adapterlab run wrote ({', '.join(foreign)}); "
                             "a run would overwrite them. Choose another --output, or move them away.")


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
    """Names of the run settings in which `config` differs from a saved run config; a setting the saved config
    lacks (the run predates it) counts as its default, so runs of earlier versions still resume."""
    ours, defaults = config.run_settings(), TrainConfig().run_settings()
    return sorted(k for k in ours if saved.get(k, defaults[k]) != ours[k])


def check_run_dir(out: Path, config: TrainConfig) -> Path | None:
    """Check that the run may use `out`; returns the checkpoint to resume from, if resuming.

    The one resume / overwrite policy (`RunFolder.check`): a folder holding another run is refused unless
    --overwrite; the same run needs --resume or --overwrite; every refusal is a `RunClashError`.
    """
    saved = read_run_config(out)
    if config.resume:
        if saved is None:
            raise RunClashError(f"--resume: {out} holds no run ({CONFIG_FILE} missing); start without --resume.")
        diff = differences(saved, config)
        if diff:
            raise RunClashError(f"--resume: the run in {out} was made with other settings ({', '.join(diff)} "
                               "differ); resume with the same settings, or start over with --overwrite.")
        checkpoint = last_checkpoint(out / CHECKPOINTS)
        if checkpoint is None:
            raise RunClashError(f"--resume: no complete checkpoint in {out / CHECKPOINTS}; "
                               "start again with --overwrite.")
        return checkpoint
    if config.overwrite:
        check_clearable(out)
        return None
    if saved is not None:
        diff = differences(saved, config)
        if diff:
            raise RunClashError(f"{out} already holds a run with another config ({', '.join(diff)} differ); "
                               "pass --overwrite to replace it or choose another --output.")
        raise RunClashError(f"{out} already holds this run; pass --resume to continue it or --overwrite to start over.")
    if any((out / name).exists() for name in run_outputs(out)):
        raise RunClashError(f"{out} holds files of an earlier run but no {CONFIG_FILE}; pass --overwrite.")
    return None


def check_new_run(out: Path, overwrite: bool) -> None:
    """The policy for runs that keep no checkpoints (multi-task): a folder holding earlier outputs needs --overwrite."""
    if run_outputs(out) and not overwrite:
        raise RunClashError(f"{out} holds an earlier run; pass overwrite (--overwrite) or choose another output.")


def _outputs_present(out: Path) -> list[Path]:
    names = run_outputs(out) | {PENDING}
    return [out / name for name in sorted(names) if (out / name).exists() or (out / name).is_symlink()]


def check_clearable(out: Path) -> None:
    """Before deleting anything: --overwrite never deletes through a symbolic link, so refuse one."""
    links = [p for p in _outputs_present(out) if p.is_symlink()]
    if links:
        raise RunFolderError(f"--overwrite: {links[0]} is a symbolic link (to {links[0].readlink()}); it never "
                             "deletes through links. Remove the link (and empty its target if you wish), then run "
                             "again.")


def clear_run(out: Path) -> None:
    """Remove what earlier runs wrote in `out` (the names in the manifest) and nothing else."""
    check_clearable(out)
    for path in _outputs_present(out):
        remove_entry(path)
    sweep_stale(out)
    (out / MANIFEST).unlink(missing_ok=True)


def write_run_config(out: Path, config: TrainConfig) -> None:
    """Save the resolved settings as YAML; `adapterlab train --config` accepts the file as it is."""
    record_outputs(out, [CONFIG_FILE])
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    write_atomic(out / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))


__all__ = ["check_new_run", "check_output", "check_run_dir", "clear_run", "record_outputs", "run_outputs", "write_run_config"]
