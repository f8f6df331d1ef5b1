"""LLM-Adapters' evaluate.py / commonsense_evaluate.py command lines, read by `adapterlab eval`.

Their flags: --base_model (the weights: adapterlab's --model), --lora_weights (--adapter-path), --dataset
(--datasets), --batch_size, --load_8bit, and two labels: --model LLaMA-7B (their scripts pick LlamaTokenizer and
name the output file by it; here the tokenizer is the one saved with the weights, and the label is checked
against the loaded model's type) and --adapter LoRA (it only names their output file; here it is checked against
the adapter the folder holds). A command with --base_model is theirs: what it does not give takes their
scripts' settings (beam search with 4 beams, their prompt, their answer extraction), and the run says so.
"""

from __future__ import annotations

import argparse
from typing import Any

from torch import nn

from ...errors import UsageError
from .fork import fork_method

# Their --model choices (evaluate.py, commonsense_evaluate.py) and the model_type each names.
THEIR_MODELS = {"LLaMA-7B": "llama", "LLaMA-13B": "llama", "BLOOM-7B": "bloom", "GPT-j-6B": "gptj"}
# Their --adapter choices (and their README's Scaled_Parallel) and the adapterlab methods each can be.
THEIR_ADAPTERS = {"LoRA": ("lora",), "AdapterH": ("series", "houlsby"), "AdapterP": ("pfeiffer",),
                  "Parallel": ("parallel", "scaled_parallel"), "Scaled_Parallel": ("parallel", "scaled_parallel"),
                  "Prefix": ("prefix",)}
# Their generation settings that differ from adapterlab's defaults (max_new_tokens: 256 in evaluate.py, as here).
THEIR_GENERATION = {"num_beams": 4, "template": "llm-adapters", "mode": "llm-adapters"}
PEFT_METHODS = {"LORA": "lora", "PREFIX_TUNING": "prefix", "PROMPT_TUNING": "prompt", "P_TUNING": "prompt",
                "IA3": "ia3"}


def read_their_flags(args: argparse.Namespace) -> list[str]:
    """Turn their flags in `args` into adapterlab's settings; the notes to print. Refuses what cannot fit."""
    label = None
    if args.base_model is not None:
        if args.model is not None and args.model not in THEIR_MODELS:
            raise UsageError(f"--model {args.model} and --base_model {args.base_model} both name the base model; with "
                             f"--base_model (LLM-Adapters' spelling), --model is their label ({', '.join(THEIR_MODELS)})."
                             " Drop one of them.")
        label, args.model = args.model, args.base_model
    elif args.model in THEIR_MODELS:
        raise UsageError(f"--model {args.model} is LLM-Adapters' label of a model, not its weights; pass the weights with "
                         "--base_model (e.g. yahma/llama-7b-hf), as their evaluate.py needs, or --model with a hub id.")
    args.model_label = label
    if args.their_adapter is not None and not args.adapter_path:
        raise UsageError(f"--adapter {args.their_adapter} labels the adapter in --lora_weights / --adapter-path, and "
                         "none is given; pass the adapter folder, or drop --adapter to evaluate the base model.")
    if args.base_model is None:
        return []
    applied = {k: v for k, v in THEIR_GENERATION.items() if getattr(args, k) is None}
    if getattr(args, "protocol", "generate") == "choice":
        applied = {}
    for key, value in applied.items():
        setattr(args, key, value)
    notes = [f"LLM-Adapters' evaluate.py command (--base_model): their settings for what it does not give: "
             f"{', '.join(f'{k} {v}' for k, v in applied.items()) or 'none needed'}."]
    if label:
        notes.append(f"--model {label}: their label of the base model (their scripts choose LlamaTokenizer and name the "
                     f"output file by it); here the weights and tokenizer are --base_model's, checked to be a "
                     f"{THEIR_MODELS[label]} model.")
    if args.their_adapter:
        notes.append(f"--adapter {args.their_adapter}: their label (it names their output file); here the adapter is "
                     f"the one in {args.adapter_path}, checked to be {' or '.join(THEIR_ADAPTERS[args.their_adapter])}.")
    return notes


def saved_method(saved: dict[str, Any]) -> str | None:
    """The adapterlab method an adapter_config.json (adapterlab's, PEFT's or their fork's) loads as."""
    if "method" in saved:
        return saved["method"]
    if saved.get("peft_type") == "BOTTLENECK":
        return fork_method(saved)
    return PEFT_METHODS.get(saved.get("peft_type"))


def check_adapter_label(label: str | None, saved: dict[str, Any], where: str) -> None:
    """Refuse --adapter LABEL when the folder holds another kind of adapter."""
    if label is None:
        return
    method = saved_method(saved)
    if method not in THEIR_ADAPTERS[label]:
        raise UsageError(f"--adapter {label} says the adapter is {' or '.join(THEIR_ADAPTERS[label])}, but {where} holds a "
                         f"{method or 'unknown'} adapter; fix --adapter or the adapter folder.")


def check_model_label(label: str | None, model: nn.Module, base: str) -> None:
    """Refuse --model LABEL (their label) when the loaded base model is of another family."""
    if label is None:
        return
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type != THEIR_MODELS[label]:
        raise UsageError(f"--model {label} says the base is a {THEIR_MODELS[label]} model, but --base_model {base} is a "
                         f"{model_type} model; fix the label or the path.")
