"""attach(..., fuse_inputs=True) on SmolLM2-135M: LoRA r=32 on every projection (q,k,v,o,gate,up,down: two groups
per block, q,k,v and gate,up), fused against unfused, interleaved in one process with one torch thread.

Two measures: a training step (forward + backward, batch 4 x 128 tokens, dropout 0) and batch-1 greedy decode
(64 prompt + 64 new tokens). Reported: the median over repetitions of fused CPU time / unfused time in the same
repetition, with min and max, and the largest logit difference between the two.

    flock /tmp/adapterlab-heavy.lock env PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fused_down.py
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import adapterlab
from adapterlab.models import load_model
from decode_vs_peft import TEXT, decoder

RESULTS = Path(__file__).parent / "results" / "fused_down.json"
TARGETS = ["q", "k", "v", "o", "gate", "up", "down"]


def interleaved(runs: dict, reps: int) -> dict[str, list[float]]:
    """CPU seconds (the process's, one thread) per call of every run, the order rotating every repetition."""
    names, times = list(runs), {name: [] for name in runs}
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            start = time.process_time()
            runs[name]()
            times[name].append(time.process_time() - start)
    return times


def ratio(times: dict[str, list[float]], row: str, reference: str) -> dict[str, float]:
    ratios = [a / b for a, b in zip(times[row], times[reference])]
    return {"ratio": round(statistics.median(ratios), 4), "min": round(min(ratios), 4), "max": round(max(ratios), 4),
            "ms": round(1000 * statistics.median(times[row]), 1),
            "reference_ms": round(1000 * statistics.median(times[reference]), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base, tokenizer = load_model("smollm2-135m", log=lambda _: None)
    unfused = adapterlab.attach(copy.deepcopy(base), "lora", r=32, alpha=64.0, targets=TARGETS)
    with torch.no_grad():
        for name, p in unfused.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.01)  # B away from zero, so the logit comparison means something
    fused = adapterlab.attach(copy.deepcopy(base), "lora", r=32, alpha=64.0, targets=TARGETS, fuse_inputs=True)
    fused.load_state_dict(unfused.state_dict())
    ids = tokenizer(TEXT * 4, return_tensors="pt")["input_ids"][:, :128].repeat(4, 1)
    with torch.no_grad():
        difference = (fused(input_ids=ids).logits - unfused(input_ids=ids).logits).abs().max().item()

    def step(model: torch.nn.Module):
        def run() -> None:
            model.train()
            model(input_ids=ids, labels=ids).loss.backward()
            model.zero_grad(set_to_none=True)
        return run

    step(fused)(), step(unfused)()  # warm-up
    train = interleaved({"fused": step(fused), "unfused": step(unfused)}, args.reps)
    fused.eval(), unfused.eval()
    prompt = ids[:1, :64]
    decodes = {"fused": decoder(fused, prompt, 64), "unfused": decoder(unfused, prompt, 64)}
    same_tokens = bool(torch.equal(decodes["fused"](), decodes["unfused"]()))
    decode = interleaved(decodes, args.reps)
    result = {"train_step_fused_vs_unfused": ratio(train, "fused", "unfused"),
              "decode_fused_vs_unfused": ratio(decode, "fused", "unfused"),
              "max_abs_logit_difference": difference, "same_decoded_tokens": same_tokens,
              "repetitions": args.reps, "train_batch": list(ids.shape), "targets": TARGETS, "r": 32,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(json.dumps(result, indent=1))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
