"""Training step: adapterlab's own path against PEFT + the HF Trainer, and full fine-tuning (issue #21), one CPU thread.

Each configuration trains SmolLM2-135M on the same tokenized math records (train_math_3k.json in LLM-Adapters' Alpaca
format, the prompt masked with -100, cutoff 256, micro-batch 4, no accumulation, the same seed so the same batches):

* `adapterlab`: its recipe as `adapterlab train` builds it (the causal-lm task's records and collator, `make_trainable`,
  `training_arguments`, `AdapterTrainer` with its loss at the labelled positions only);
* `peft`: `peft.get_peft_model` on the plain model, the plain `transformers.Trainer`, LLM-Adapters' collator
  (`DataCollatorForSeq2Seq(padding=True, pad_to_multiple_of=8)`) and the same optimizer settings;
* `full`: every weight trained on adapterlab's path. PEFT has no Pfeiffer adapter: that row is adapterlab against full.

Rows: LoRA r=32 alpha 64 dropout 0.05 on q,k,v,up,down; IA3 on k,v,down (down's input); Pfeiffer (size 256 after the
MLP); prefix tuning with 20 virtual tokens. Step time: every configuration's model is held in this process and
`trainer.train()` runs 1 + `steps` optimizer steps per repetition, the configurations interleaved (order rotated each
repetition); a step is the time between two `on_step_end` callbacks (collation, forward, backward, clipping, AdamW),
the first step of each repetition (AdamW's state, a fresh optimizer) is dropped. Per configuration: the median over
repetitions of the repetition's mean step, min-max beside it; a ratio is of medians, its spread the min-max of the
per-repetition (paired) ratios. Peak memory: each configuration in a fresh spawned process (nothing of another row in
its allocator), after the setup and `malloc_trim`, the kernel's resident high-water mark is reset (`/proc/self/
clear_refs` 5) and read back (VmHWM) after its 1 + `steps` steps: `peak_mib` the process's peak, `train_mib` that
above the resident memory before training (activations, logits, gradients, optimizer state).

The decode row comes from `benchmarks/decode_vs_peft.py`. The last printed
line is one JSON object (also written to --output).

    flock /tmp/adapterlab-heavy.lock env PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/step_vs_peft.py --quick
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import peft  # imported in every process alike: the memory rows start from the same modules
import torch
from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import SaveStrategy

from adapterlab.measure.fresh_process import run_isolated
from adapterlab.train.config import TrainConfig
from adapterlab.train.recipe import make_trainable, prepare_task, training_arguments
from adapterlab.train.trainer import AdapterTrainer

from decode_vs_peft import decode_rows  # noqa: E402  (the decode benchmark beside this script)

DATA = os.path.join(os.environ.get("ADAPTERLAB_DATA", "../shared/datasets"), "math", "train_math_3k.json")
MODEL, CUTOFF, MICRO, SEED, LR = "smollm2-135m", 256, 4, 42, 1e-5
LORA_TARGETS = ["q", "k", "v", "up", "down"]
# row: (adapterlab method, its options, the PEFT config class and its keywords, or None where PEFT has none)
ROWS: dict[str, tuple[str, dict[str, Any], tuple[str, dict[str, Any]] | None]] = {
    "lora": ("lora", {"r": 32, "alpha": 64, "dropout": 0.05, "targets": LORA_TARGETS},
             ("LoraConfig", {"r": 32, "lora_alpha": 64, "lora_dropout": 0.05,
                             "target_modules": [f"{t}_proj" for t in LORA_TARGETS]})),
    "ia3": ("ia3", {"targets": ["k", "v", "down"], "feedforward": ["down"]},
            ("IA3Config", {"target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]})),
    "pfeiffer": ("pfeiffer", {"size": 256}, None),
    "prefix": ("prefix", {"num_virtual_tokens": 20}, ("PrefixTuningConfig", {"num_virtual_tokens": 20})),
}


def configurations(rows: list[str]) -> list[str]:
    """`row/adapterlab` and `row/peft` (where PEFT has the method) for each row, then `full`."""
    names = []
    for row in rows:
        names.append(f"{row}/adapterlab")
        if ROWS[row][2] is not None:
            names.append(f"{row}/peft")
    return [*names, "full"]


class StepClock(TrainerCallback):
    """The time of each optimizer step after the first of a `train()` call (between two on_step_end events)."""

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.ends.append(time.perf_counter())

    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.ends, self.ends[1:])]


class Counted:
    """A collator that records each batch's padded shape and its labelled positions."""

    def __init__(self, collate: Any) -> None:
        self.collate, self.batches = collate, []

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collate(features)
        self.batches.append([*batch["input_ids"].shape, int(batch["labels"].ne(-100).sum())])
        return batch


def train_config(method: str, options: dict[str, Any], steps: int, folder: str) -> TrainConfig:
    """What `adapterlab train` would be given: 1 + steps micro-batches of 4, a constant learning rate."""
    return TrainConfig(model=MODEL, data=[DATA], output=folder, adapter=method, adapter_options=dict(options),
                       max_train_samples=MICRO * (1 + steps), cutoff_len=CUTOFF, batch_size=MICRO,
                       micro_batch_size=MICRO, max_steps=1 + steps, lr=LR, warmup_steps=0, scheduler="constant",
                       logging_steps=10_000, seed=SEED, precision="fp32")


def build(name: str, steps: int, folder: str) -> tuple[Trainer, StepClock, Counted]:
    """The trainer of configuration `name` (`row/adapterlab`, `row/peft` or `full`), its step clock and collator."""
    row, _, side = name.partition("/")
    method, options, peft_config = ROWS[row] if row in ROWS else ("full", {}, None)
    config = train_config(method, options, steps, folder)
    config.validate()
    set_seed(SEED)  # as the recipe does: the same records, adapter initialisation and dropout draws each time
    setup = prepare_task(config)  # the records, tokenized as adapterlab's causal-lm task does (both sides)
    clock = StepClock()
    if side == "peft":
        kind, keywords = peft_config
        model = peft.get_peft_model(setup.model, getattr(peft, kind)(task_type="CAUSAL_LM", **keywords))
        collator = Counted(DataCollatorForSeq2Seq(setup.processor, padding=True, pad_to_multiple_of=8,
                                                  return_tensors="pt"))
        args = TrainingArguments(output_dir=folder, per_device_train_batch_size=MICRO, max_steps=1 + steps,
                                 learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, seed=SEED,
                                 logging_steps=10_000, save_strategy="no", use_cpu=True, report_to="none",
                                 disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=setup.train_dataset, data_collator=collator,
                          callbacks=[clock])
        return trainer, clock, collator
    make_trainable(setup.model, config, setup.trainable_modules, setup.frozen_modules)
    args = training_arguments(config, setup, Path(folder) / "checkpoints")
    args.save_strategy = SaveStrategy.NO  # no checkpoint at the last step: a step is what is timed
    args.disable_tqdm = True  # as on the PEFT side: no progress bar
    collator = Counted(setup.data_collator)
    trainer = AdapterTrainer(model=setup.model, args=args, train_dataset=setup.train_dataset, data_collator=collator,
                             processing_class=setup.processor, compute_loss_func=setup.compute_loss,
                             callbacks=[clock], full_model=config.trainable.full)
    return trainer, clock, collator


def run_steps(trainer: Trainer) -> float:
    """One repetition: a fresh optimizer (its state is built in the first, untimed, step), 1 + steps steps; the
    mean training loss."""
    trainer.optimizer, trainer.lr_scheduler = None, None
    return trainer.train().training_loss


def rss_kib(field: str) -> int:
    """A line of /proc/self/status in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory(name: str, steps: int) -> dict[str, float]:
    """In a fresh process: the resident peak over 1 + steps training steps of `name`, and that above the start."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        trainer, _, _ = build(name, steps, folder)
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed load buffers go back to the kernel, not into the steps
        start = rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again from the current RSS
        run_steps(trainer)
        peak = rss_kib("VmHWM")
    return {"peak_mib": round(peak / 1024, 1), "train_mib": round((peak - start) / 1024, 1)}


def summary(values: list[float], digits: int = 3) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def time_steps(names: list[str], reps: int, steps: int, log: Any) -> dict[str, Any]:
    """Every configuration built in this process, then `reps` interleaved repetitions of 1 + steps steps each."""
    with tempfile.TemporaryDirectory() as folder:
        built = {name: build(name, steps, f"{folder}/{i}") for i, name in enumerate(names)}
        per_rep: dict[str, list[float]] = {name: [] for name in names}
        losses: dict[str, float] = {}
        for rep in range(reps):
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                trainer, clock, _ = built[name]
                losses.setdefault(name, round(run_steps(trainer), 5))
                per_rep[name].append(statistics.mean(clock.steps()))
                log(f"rep {rep + 1}/{reps} {name}: {per_rep[name][-1]:.2f} s/step")
        batches = {name: collator.batches[1:1 + steps] for name, (_, _, collator) in built.items()}
    return {"per_rep_s": per_rep, "batches": batches, "first_rep_loss": losses}


def ratio(per_rep: dict[str, list[float]], a: str, b: str) -> dict[str, float] | None:
    """median(a) / median(b), with the min-max of the per-repetition ratios."""
    if a not in per_rep or b not in per_rep:
        return None
    paired = [x / y for x, y in zip(per_rep[a], per_rep[b])]
    return {"median": round(statistics.median(per_rep[a]) / statistics.median(per_rep[b]), 3),
            "min": round(min(paired), 3), "max": round(max(paired), 3)}


def profile_step(name: str, steps: int) -> list[dict[str, Any]]:
    """torch.profiler over the second step of `name` (the first is warm-up): the top operators by self CPU time."""
    with tempfile.TemporaryDirectory() as folder:
        trainer, _, _ = build(name, max(steps, 1), folder)
        profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                          schedule=torch.profiler.schedule(wait=1, warmup=0, active=1, repeat=1))

        class Tick(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs) -> None:
                profiler.step()

        trainer.add_callback(Tick())
        with profiler:
            run_steps(trainer)
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    total = sum(e.self_cpu_time_total for e in profiler.key_averages())
    return [{"op": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1000, 1),
             "share": round(e.self_cpu_time_total / total, 3)} for e in events]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="LoRA and full only, 3 repetitions of 2 timed steps")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"rows to run, of {', '.join(ROWS)}")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5; 3 with --quick)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per repetition (after one warm-up step)")
    parser.add_argument("--profile", action="store_true", help="also profile one LoRA step on each side")
    parser.add_argument("--no-decode", action="store_true", help="skip the decode row")
    parser.add_argument("--output", default="benchmarks/results/step_vs_peft.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = ["lora"] if args.quick else [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    reps = args.reps or (3 if args.quick else 5)
    names = configurations(rows)
    log = lambda text: print(text, flush=True)
    started = time.perf_counter()
    timed = time_steps(names, reps, args.steps, log)
    per_rep = timed["per_rep_s"]
    memory = {}
    for name in names:
        memory[name] = run_isolated(peak_memory, True, name, args.steps)
        log(f"memory {name}: {memory[name]}")
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread",
        "torch": torch.__version__, "command": "benchmarks/step_vs_peft.py" + (" --quick" if args.quick else ""),
        "reps": reps, "timed_steps_per_rep": args.steps, "micro_batch": MICRO, "cutoff": CUTOFF,
        "step_s": {name: summary(values) for name, values in per_rep.items()},
        "batches_shape_labelled": timed["batches"], "first_rep_loss": timed["first_rep_loss"],
        "memory_mib": memory,
    }
    for row in rows:
        result[f"{row}_vs_full"] = ratio(per_rep, f"{row}/adapterlab", "full")
        if ROWS[row][2] is not None:  # PEFT has no Pfeiffer adapter
            result[f"{row}_vs_peft"] = ratio(per_rep, f"{row}/adapterlab", f"{row}/peft")
            ours, theirs = memory[f"{row}/adapterlab"], memory[f"{row}/peft"]
            result[f"{row}_peak_mem_vs_peft"] = round(ours["peak_mib"] / theirs["peak_mib"], 3)
            result[f"{row}_train_mem_vs_peft"] = round(ours["train_mib"] / theirs["train_mib"], 3)
    result["lora_peak_mem_vs_full"] = round(memory["lora/adapterlab"]["peak_mib"] / memory["full"]["peak_mib"], 3) \
        if "lora" in rows else None
    if args.profile and "lora" in rows:
        result["profile"] = {side: profile_step(f"lora/{side}", args.steps) for side in ("adapterlab", "peft")}
    if not args.no_decode:
        result["decode"] = decode_rows(args.quick)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
