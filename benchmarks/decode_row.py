"""A minimal decode row for step_vs_peft.py where benchmarks/decode_vs_peft.py (the decode benchmark) is absent.

Batch-1 greedy decoding of SmolLM2-135M on one thread: a 64-token math prompt, 64 new tokens (min = max, so every
model decodes the same count), for the base model, adapterlab LoRA r=32 on q,k,v,up,down unmerged and merged
(`adapterlab.merge`: folded into the weights, the adapter still attached), and PEFT's LoRA unmerged. The four models
are held at once and run interleaved (order rotated each repetition); medians and min-max per model, ratios to the
base's median.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import adapterlab as al
from adapterlab.data.templates import build_prompt
from adapterlab.models import load_model

PROMPT_DATA = "/work/shared/datasets/math/gsm8k.json"
PROMPT_TOKENS, NEW_TOKENS = 64, 64
TARGETS = ["q", "k", "v", "up", "down"]


def decode_rows(quick: bool) -> dict[str, Any]:
    """Seconds per 64-token greedy decode of each model (median, min, max) and the ratio to the base's median."""
    import peft

    base, tokenizer = load_model("smollm2-135m", dtype="float32", log=lambda _: None)
    base.eval()
    record = json.loads(Path(PROMPT_DATA).read_text())[0]
    ids = tokenizer(build_prompt(record), return_tensors="pt")["input_ids"]
    ids = ids.repeat(1, -(-PROMPT_TOKENS // ids.shape[1]))[:, :PROMPT_TOKENS]  # exactly 64 tokens
    models: dict[str, Any] = {"base": base}
    models["adapterlab_unmerged"] = unmerged = copy.deepcopy(base)
    al.attach(unmerged, "lora", r=32, alpha=64, targets=TARGETS)
    models["adapterlab_merged"] = merged = copy.deepcopy(unmerged)
    al.merge(merged)
    models["peft_unmerged"] = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=32, lora_alpha=64, target_modules=[f"{t}_proj" for t in TARGETS], task_type="CAUSAL_LM"))
    for model in models.values():
        model.eval()

    def decode(model: Any) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                           max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=tokenizer.eos_token_id)
        return time.perf_counter() - start

    names = list(models)
    for name in names:
        decode(models[name])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(3 if quick else 7):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            times[name].append(decode(models[name]))
    base_median = statistics.median(times["base"])
    return {"batch": 1, "prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS, "source": "decode_row.py",
            "seconds": {name: {"median": round(statistics.median(v), 3), "min": round(min(v), 3),
                               "max": round(max(v), 3)} for name, v in times.items()},
            "vs_base": {name: round(statistics.median(v) / base_median, 3) for name, v in times.items()}}
