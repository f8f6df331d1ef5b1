"""Padded batches against length-grouped and packed (padding-free) ones (issue #21 item 2), on one CPU thread.

SmolLM2-135M with LoRA r=32 on q,k,v,up,down, trained on train_math_3k.json as the causal-lm task builds it (Alpaca
prompt masked, --cutoff-len 256, EOS, micro-batch 4, global batch 16). One epoch's micro-batches are drawn four ways:
"padded" (the Trainer's random order, each batch right-padded to its longest record, a multiple of 8), "grouped" (the
Trainer's length-grouped sampler over the global batch, padded likewise) and "packed" (the padded run's batches, each
packed end to end into one row with per-record position ids: `data.packing.PackedCollator`; "packed-grouped" packs
the grouped run's batches, as --packing does with --group-by-length on). The token positions
each way computes over the whole epoch are counted exactly; the time is measured on --batches micro-batches spread
evenly over each epoch (the same batches for padded and packed; an epoch's time is estimated as the median time per
timed token position times the epoch's positions), each a forward + backward at the labelled positions
(`train.head_loss`, as the Trainer) and an AdamW step, the four ways interleaved in one process with the order
rotated per repetition. Medians with min-max; the padded and packed losses of the same batches are compared. One
JSON line.

    PYTHONPATH=src OMP_NUM_THREADS=1 flock /tmp/adapterlab-heavy.lock python benchmarks/padding_free.py --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq
from transformers.trainer_pt_utils import LengthGroupedSampler

import adapterlab as al
from adapterlab.data.instruction import tokenize_example
from adapterlab.data.packing import PackedCollator
from adapterlab.models import load_model
from adapterlab.train.head_loss import labelled_positions_loss

DATA = Path(os.environ.get("ADAPTERLAB_DATA", "../shared/datasets")) / "math" / "train_math_3k.json"


def epoch_batches(order: list[int], micro: int) -> list[list[int]]:
    """Consecutive micro-batches of record indices (the last one may be short)."""
    return [order[i:i + micro] for i in range(0, len(order), micro)]


def positions(batch: dict) -> tuple[int, int]:
    """(token positions a forward computes over, attention score entries per head and layer) of one batch."""
    rows, length = batch["input_ids"].shape
    return rows * length, rows * length * length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batches", type=int, default=12, help="micro-batches timed per way and repetition")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16, help="global batch (the grouped sampler's group)")
    parser.add_argument("--cutoff", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, tokenizer = load_model("smollm2-135m", dtype="float32", log=lambda _: None)
    al.attach(model, "lora", r=32, targets=["q", "k", "v", "up", "down"])
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    records = json.loads(DATA.read_text())
    examples = [tokenize_example(r, tokenizer, cutoff_len=args.cutoff) for r in records]
    lengths = [len(x["input_ids"]) for x in examples]

    padded_order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(args.seed)).tolist()
    grouped_order = list(LengthGroupedSampler(args.batch, lengths=lengths,
                                              generator=torch.Generator().manual_seed(args.seed)))
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=8, return_tensors="pt")
    pack = PackedCollator()
    ways = {"padded": (padded_order, pad), "grouped": (grouped_order, pad), "packed": (padded_order, pack),
            "packed-grouped": (grouped_order, pack)}
    epoch: dict[str, dict[str, int]] = {}
    timed: dict[str, list[dict]] = {}
    for name, (order, collate) in ways.items():
        batches = epoch_batches(order, args.micro_batch)
        counts = [positions(collate([examples[i] for i in b])) for b in batches]
        epoch[name] = {"token_positions": sum(c[0] for c in counts), "attention_entries": sum(c[1] for c in counts)}
        picks = [round(k * (len(batches) - 1) / max(args.batches - 1, 1)) for k in range(args.batches)]
        timed[name] = [dict(collate([dict(examples[i]) for i in batches[k]])) for k in picks]
    real_tokens = sum(lengths)

    def run(name: str) -> tuple[float, list[float]]:
        losses = []
        start = time.perf_counter()
        for inputs in timed[name]:
            loss = labelled_positions_loss(model, inputs)[0]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        return time.perf_counter() - start, losses

    # the losses of the same batches, padded and packed, before any step changes the weights
    with torch.no_grad():
        check = {name: [float(labelled_positions_loss(model, b)[0]) for b in timed[name][:3]]
                 for name in ("padded", "packed")}
    run("padded")  # warm-up: AdamW's state, the allocator
    times: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for rep in range(args.reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            times[name].append(run(name)[0])

    records_timed = {name: sum(int(b["position_ids"].eq(0).sum()) if "position_ids" in b else len(b["input_ids"])
                               for b in timed[name]) for name in ways}
    per_record = {name: [t / records_timed[name] for t in values] for name, values in times.items()}

    def summary(values: list[float], digits: int) -> dict[str, float]:
        return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
                "max": round(max(values), digits)}

    base = statistics.median(per_record["padded"])
    print(json.dumps({
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "attention": model.config._attn_implementation, "records": len(examples), "real_tokens": real_tokens,
        "micro_batch": args.micro_batch, "global_batch": args.batch, "cutoff": args.cutoff, "reps": args.reps,
        "batches_timed": args.batches, "records_timed": records_timed,
        "epoch": epoch,
        "padding_share": {n: round(1 - real_tokens / e["token_positions"], 4) for n, e in epoch.items()},
        "timed_token_positions": {n: sum(positions(b)[0] for b in timed[n]) for n in ways},
        "s_per_record": {name: summary(values, 4) for name, values in per_record.items()},
        "speedup_vs_padded": {name: round(base / statistics.median(values), 3) for name, values in per_record.items()},
        # time per timed token position times the epoch's positions (the timed batches are a sample of the epoch)
        "epoch_estimate_s": {name: round(statistics.median(times[name]) / sum(positions(b)[0] for b in timed[name])
                                         * epoch[name]["token_positions"]) for name in ways},
        "loss_padded_vs_packed": {"padded": check["padded"], "packed": check["packed"],
                                  "max_abs_diff": max(abs(a - b) for a, b in zip(check["padded"], check["packed"]))},
    }))


if __name__ == "__main__":
    main()
