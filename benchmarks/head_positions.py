"""The LM head over every position vs at the labelled positions only (issue #21 item 1), on one CPU thread.

Times forward + backward + AdamW steps of SmolLM2-135M with LoRA r=32 on q,k,v,up,down, a batch of 4 math records
in the Alpaca prompt with the prompt masked (as the causal-lm task builds them) right-padded to 192 tokens: "full"
is the model's own loss (the head and cross-entropy over all 4 x 192 positions), "selected" is
`train.head_loss.labelled_positions_loss` (the head at the labelled next-token positions only). The two run
interleaved (A B A B ...); medians with min-max over the repetitions, and the step's peak resident memory above
the resident memory before it (sampled every 2 ms: torch has no CPU allocator statistics). One JSON line.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/head_positions.py --reps 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq

import adapterlab as al
from adapterlab.data.instruction import tokenize_example
from adapterlab.models import load_model
from adapterlab.train.head_loss import labelled_positions_loss

DATA = Path("/work/shared/datasets/math/train_math_3k.json")
PAGE = 4096


def rss() -> int:
    """Resident bytes of this process."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


class PeakRss:
    """Peak resident memory above the level at entry, sampled by a thread while the block runs."""

    def __enter__(self) -> PeakRss:
        self.base = self.peak = rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss())

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def make_batch(tokenizer, rows: int, length: int) -> dict[str, torch.Tensor]:
    """The first `rows` records that fit `length` tokens, tokenized as the causal-lm task does, padded to `length`."""
    examples = []
    for record in json.loads(DATA.read_text()):
        example = tokenize_example(record, tokenizer, cutoff_len=length)
        if len(example["input_ids"]) < length and example["labels"][-1] != -100:
            examples.append(example)
        if len(examples) == rows:
            break
    batch = DataCollatorForSeq2Seq(tokenizer, padding="max_length", max_length=length, return_tensors="pt")(examples)
    return dict(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--length", type=int, default=192)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, tokenizer = load_model("smollm2-135m", dtype="float32", log=lambda _: None)
    al.attach(model, "lora", r=32, targets=["q", "k", "v", "up", "down"])
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    inputs = make_batch(tokenizer, args.rows, args.length)
    variants = {"full": lambda: model(**inputs).loss, "selected": lambda: labelled_positions_loss(model, inputs)[0]}
    losses = {name: float(loss().detach()) for name, loss in variants.items()}  # same loss; a warm-up of each

    def step(name: str) -> tuple[float, float]:
        with PeakRss() as memory:
            start = time.perf_counter()
            variants[name]().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - start
        return seconds, memory.delta_mib

    for name in variants:
        step(name)  # warm-up: AdamW's state, the allocator
    times: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.reps):
        for name in variants:
            seconds, peak = step(name)
            times[name].append(seconds)
            peaks[name].append(peak)

    def summary(values: list[float], digits: int) -> dict[str, float]:
        return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
                "max": round(max(values), digits)}

    labelled = int(inputs["labels"][:, 1:].ne(-100).sum())
    print(json.dumps({
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "batch": [args.rows, args.length],
        "labelled_positions": labelled, "positions": args.rows * args.length, "reps": args.reps,
        "loss": losses,
        "step_s": {name: summary(values, 3) for name, values in times.items()},
        "peak_rss_mib": {name: summary(values, 1) for name, values in peaks.items()},
        "speedup": round(statistics.median(times["full"]) / statistics.median(times["selected"]), 3),
    }))


if __name__ == "__main__":
    main()
