"""LLM-Adapters' finetune.py, faithfully: which commands are theirs, and the defaults their flags bring.

A command is theirs when it spells any flag as their finetune.py does and adapterlab does not (`THEIR_SPELLINGS`:
--base_model, --data_path, --adapter_name, --lora_r, ...; flags both spell alike, such as --batch_size or
--cutoff_len, do not decide). `--recipe adapterlab|llm-adapters` decides instead when given. The settings such a
command does not give take the defaults of finetune.py's train() and of their PEFT fork's tuner configs
(`THEIR_SETTINGS`, `THEIR_OPTIONS`); a command of adapterlab's keeps adapterlab's. Where their code ignores a
flag (--eval_step without a dev set, --lora_target_modules) or cannot act here (wandb not installed), the run
says so. Their placements in adapterlab's terms: "bottleneck" is `series` with input_targets=["mlp_in"] (their
mh_adapter: the inputs of the MLP's gate/up projections) and the other targets on their output; its default
targets, their per-family table, are mlp_in and down; use_adapterp is `pfeiffer` on down; use_parallel_adapter is
`parallel` beside each target, by default q, k, v; their adapters have no biases.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Collection
from typing import Any

import torch

# The parameters of finetune.py's train(); each is a flag --name.
FINETUNE_PARAMETERS = (
    "base_model", "data_path", "output_dir", "adapter_name", "load_8bit", "batch_size", "micro_batch_size",
    "num_epochs", "learning_rate", "cutoff_len", "val_set_size", "use_gradient_checkpointing", "eval_step",
    "save_step", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "bottleneck_size", "non_linearity",
    "adapter_dropout", "use_parallel_adapter", "use_adapterp", "target_modules", "scaling", "num_virtual_tokens",
    "train_on_inputs", "group_by_length", "wandb_project", "wandb_run_name", "wandb_watch", "wandb_log_model",
    "resume_from_checkpoint",
)
# Spelled alike by adapterlab (its flags also take underscores), so they say nothing about whose command it is.
SHARED_SPELLINGS = ("batch_size", "micro_batch_size", "cutoff_len", "train_on_inputs", "scaling", "num_virtual_tokens",
                    "group_by_length", "resume_from_checkpoint")
THEIR_SPELLINGS = frozenset(f"--{name}" for name in FINETUNE_PARAMETERS if name not in SHARED_SPELLINGS)
WANDB_FLAGS = ("wandb_project", "wandb_run_name", "wandb_watch", "wandb_log_model")

# TrainConfig settings whose finetune.py default differs from adapterlab's (the others agree: 3 epochs, lr 3e-4,
# micro-batch 4, cutoff 256, warmup 100, logging every 10 steps, linear schedule, AdamW).
THEIR_SETTINGS: dict[str, Any] = {
    "output": "./lora-alpaca", "batch_size": 128, "val_size": 2000, "eval_steps": 200, "save_steps": 200,
    "save_total_limit": 3, "train_on_inputs": True, "template": "llm-adapters", "group_by_length": False,
}
# Their tuner defaults, per adapterlab method (LoraConfig, BottleneckConfig with bias "none", PrefixTuningConfig).
THEIR_OPTIONS: dict[str, dict[str, Any]] = {
    "lora": {"dropout": 0.05},
    "series": {"bias": False, "targets": ["mlp_in", "down"], "input_targets": ["mlp_in"]},
    "pfeiffer": {"bias": False, "targets": ["down"], "input_targets": ["mlp_in"]},
    "parallel": {"bias": False, "targets": ["q", "k", "v"]},
    "prefix": {"num_virtual_tokens": 30},
}


def is_theirs(spellings: Collection[str], recipe: str | None) -> bool:
    """Whether a command runs LLM-Adapters' recipe: --recipe when given, else any flag spelled as only they do."""
    if recipe is not None:
        return recipe == "llm-adapters"
    return any(s in THEIR_SPELLINGS for s in spellings)


def their_recipe(settings: dict[str, Any], options: dict[str, Any],
                 method: str) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """`settings` and adapter `options` with their defaults under what the command gave, and the notes to print."""
    applied = {k: v for k, v in THEIR_SETTINGS.items() if k not in settings}
    if torch.cuda.is_available() and "precision" not in settings:
        applied["precision"] = "fp16"  # their fp16=True; on a CPU the machine's precision stays (fp16 needs a GPU)
    merged = {**applied, **settings, "recipe": "llm-adapters"}
    option_defaults = {k: v for k, v in THEIR_OPTIONS.get(method, {}).items() if k not in options}
    notes = [f"LLM-Adapters recipe (finetune.py flags): their defaults for what the command does not give: "
             f"{describe({**applied, **option_defaults}) or 'none needed'}"
             f"{'' if torch.cuda.is_available() else '; precision stays the CPU one (their fp16 needs a GPU)'}."]
    if not merged.get("val_size") and merged.get("eval_steps") is not None:
        if "eval_steps" in settings:
            notes.append(f"--eval_step {settings['eval_steps']} has no effect with --val_set_size 0, as in finetune.py "
                         "(no dev set to evaluate).")
        merged.pop("eval_steps")
    return merged, {**option_defaults, **options}, notes


def flag_notes(extra: dict[str, Any]) -> list[str]:
    """Lines for their flags that are no adapterlab setting (`extra`: wandb_*, lora_target_modules)."""
    notes = []
    if "lora_target_modules" in extra:
        notes.append("--lora_target_modules has no effect, as in finetune.py (its LoraConfig reads "
                     "--target_modules); pass --target_modules to choose LoRA's layers.")
    wandb = [k for k in WANDB_FLAGS if k in extra]
    if wandb:
        notes.append(wandb_note(wandb))
    return notes


def wandb_note(flags: list[str]) -> str:
    """The line for their wandb flags: no effect without the package (refused by the caller when it is there)."""
    if importlib.util.find_spec("wandb") is None:
        return f"--{' --'.join(flags)}: no effect here, wandb is not installed (pip install wandb to log to it)."
    from ...errors import UsageError

    raise UsageError(f"--{flags[0]}: adapterlab train does not log to wandb (the run folder holds metrics.jsonl and "
                     "loss.png); drop the wandb flags.")


def describe(values: dict[str, Any]) -> str:
    """`name value` pairs for the defaults line."""
    return ", ".join(f"{k} {v}" for k, v in values.items())
