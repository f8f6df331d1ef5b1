"""Mixed-adapter batches (issue #22): generation throughput of one batch whose rows use different LoRAs, one CPU thread.

SmolLM2-135M, LoRA r=16 alpha 32 on q,k,v,o (B random, so every adapter changes the outputs), 16 prompts of 32 random
tokens (no padding), 32 greedy new tokens each (min = max, so every run makes 512 tokens), KV cache. Rows:

* `merged`: one LoRA merged into the weights (what one adapter costs at its cheapest; a copy of the model, merged once);
* `unmerged`: one LoRA through adapterlab's hooks;
* `mixed_T4`, `mixed_T16`: adapterlab, row i with adapter i mod T (`routed(model, names)` around generate());
* `peft_T4`, `peft_T16`: PEFT's `generate(adapter_names=...)` with the same T adapters (its own random weights).

Each configuration runs once as a warm-up, then `--repeats` times interleaved; tokens/s is the median over repetitions
(min-max beside it). The last printed line is one JSON object.

    flock /tmp/adapterlab-heavy.lock env PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/mixed_batches.py
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

import adapterlab as al
from adapterlab.models.loading import load_model

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def prompts(vocab: int, rows: int, length: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, vocab, (rows, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def randomize_b(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name and p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def ours(adapters: int) -> torch.nn.Module:
    model, _ = load_model("smollm2-135m", log=lambda _: None)
    model.eval()
    for i in range(adapters):
        al.attach(model, "lora", f"a{i}", targets=["q", "k", "v", "o"], r=16, alpha=32.0)
        randomize_b(model, seed=i + 1)
    return model


def peft_model(adapters: int) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    base, _ = load_model("smollm2-135m", log=lambda _: None)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, init_lora_weights=False)
    model = get_peft_model(base, config, adapter_name="a0")
    for i in range(1, adapters):
        model.add_adapter(f"a{i}", config)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, peft = ours(16), peft_model(16)
    x = prompts(model.config.vocab_size, args.rows, args.length)
    settings = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                    pad_token_id=model.config.eos_token_id)
    names = {t: [f"a{i % t}" for i in range(args.rows)] for t in (4, 16)}

    single = copy.deepcopy(model)  # a0 alone, merged once (the merge is not timed)
    for i in range(1, 16):
        al.detach(single, f"a{i}")
    al.merge(single, "a0")

    def merged() -> torch.Tensor:
        return single.generate(**x, **settings)

    def unmerged() -> torch.Tensor:
        al.set_active(model, "a0")
        return model.generate(**x, **settings)

    def mixed(t: int):
        def run() -> torch.Tensor:
            with al.routed(model, names[t]):
                return model.generate(**x, **settings)
        return run

    def peft_mixed(t: int):
        return lambda: peft.generate(**x, **settings, adapter_names=names[t])

    runs = {"merged": merged, "unmerged": unmerged, "mixed_T4": mixed(4), "mixed_T16": mixed(16),
            "peft_T4": peft_mixed(4), "peft_T16": peft_mixed(16)}
    tokens = args.rows * args.new_tokens
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for name, run in runs.items():  # warm-up: stacks built, allocator warm
            run()
        for repeat in range(args.repeats):
            order = list(runs)[repeat % len(runs):] + list(runs)[:repeat % len(runs)]
            for name in order:
                start = time.perf_counter()
                out = runs[name]()
                times[name].append(time.perf_counter() - start)
                assert out.shape == (args.rows, args.length + args.new_tokens), out.shape
    result = {name: {"tokens_per_s": round(tokens / statistics.median(t), 1),
                     "min_max": [round(tokens / max(t), 1), round(tokens / min(t), 1)]} for name, t in times.items()}
    merged_rate = result["merged"]["tokens_per_s"]
    for name in result:
        result[name]["vs_merged"] = round(result[name]["tokens_per_s"] / merged_rate, 3)
        print(f"{name:10s} {result[name]['tokens_per_s']:8.1f} tokens/s  {result[name]['vs_merged']:.3f}x merged  "
              f"(min-max {result[name]['min_max']})", flush=True)
    print(json.dumps({"rows": args.rows, "prompt_tokens": args.length, "new_tokens": args.new_tokens,
                      "threads": torch.get_num_threads(), "results": result}))


if __name__ == "__main__":
    main()
