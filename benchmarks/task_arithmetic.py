"""Task arithmetic on all-MiniLM-L6-v2: a LoRA trained on SST-2 and one on BoolQ, merged with
`adapterlab.add_weighted_adapter`, each task keeping its own classifier head.

Per seed: each task's LoRA (r 8, alpha 16 on q, v; PEFT's defaults) trains 120 steps at batch 16, lr 1e-3, on a
seeded 1,000-record subset of its training set, picking its best checkpoint on 200 dev records. Reported: accuracy
on the task's other dev records (SST-2: the other 672; BoolQ: a seeded 800 of the other 3,070), with
  own       the task's own LoRA,
  <type> <w_own>/<w_other>   the merge of its LoRA (weight w_own) and the other task's (w_other).
"linear" is PEFT's (A and B summed apart, sqrt-weighted: cross terms); "cat" is the exact sum of the updates
w_own * Delta_own + w_other * Delta_other (task arithmetic as Ilharco et al. define it); "ties" is PEFT's TIES on A
and B apart (density 0.5). DARE draws are not used. Usage:

    flock /tmp/adapterlab-heavy.lock env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/task_arithmetic.py \\
        [--seeds 0,1,2] [--work /tmp/bench/task-arith] [--out benchmarks/results/task_arithmetic.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import adapterlab
from adapterlab.compare.tasks import split_file, subsample_file
from adapterlab.evaluate.class_run import encode, load_classification_run, read_classification_run, read_labelled_set
from adapterlab.evaluate.class_runner import predict_batches
from adapterlab.train import TrainConfig, train

DATA = Path("/work/shared/datasets")
TASKS = {"sst2": (DATA / "sst2/train.tsv", DATA / "sst2/dev.tsv"),
         "boolq": (DATA / "commonsense/train_boolq.json", DATA / "commonsense/boolq.json")}
SELECT, TEST = 200, 800  # dev records that pick the checkpoint; at most this many other dev records scored
TRAIN = dict(model="minilm-l6", task="seq-cls", adapter="lora", adapter_options={}, lr=1e-3, max_train_samples=1000,
             max_steps=120, batch_size=16, micro_batch_size=16, cutoff_len=64, warmup_steps=10, eval_steps=30,
             logging_steps=30)
MERGES = [("linear", 1.0, 1.0, None), ("linear", 0.5, 0.5, None), ("cat", 1.0, 1.0, None), ("cat", 0.5, 0.5, None),
          ("ties", 1.0, 1.0, 0.5), ("ties", 0.5, 0.5, 0.5)]


def dev_splits(work: Path) -> dict[str, tuple[Path, Path]]:
    """(checkpoint-selection file, test file) per task, fixed across seeds."""
    out = {}
    for task, (_, dev) in TASKS.items():
        folder = work / "data" / task
        rest, select = split_file(dev, SELECT / sum(1 for _ in _records(dev)), 0, folder)
        out[task] = (select, subsample_file(rest, TEST, 0, folder / f"test{dev.suffix}"))
    return out


def _records(path: Path) -> list:
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return path.read_text().splitlines()[1:]


def train_lora(task: str, seed: int, select: Path, work: Path) -> Path:
    out = work / "runs" / f"{task}-seed{seed}"
    train(TrainConfig(data=[str(TASKS[task][0])], eval_data=[str(select)], output=str(out), overwrite=True, seed=seed,
                      **TRAIN))
    return out


def accuracy(model: torch.nn.Module, data) -> float:
    batches = predict_batches(model.eval(), data, range(len(data.gold)), 32)
    right = sum(int(p.argmax()) == data.gold[i] for batch in batches for i, p in batch)
    return right / len(data.gold)


def evaluate(task: str, other: str, runs: dict[str, Path], test: Path, seed: int) -> dict[str, float]:
    """The task's test accuracy with its own LoRA and with each merge (its own head throughout)."""
    run = read_classification_run(runs[task])
    model, processor = load_classification_run(run)
    data = encode(run, read_labelled_set(run, str(test)), processor)
    scores = {"own": accuracy(model, data)}
    adapterlab.load_adapter(model, runs[other], "other")
    for kind, w_own, w_other, density in MERGES:
        torch.manual_seed(seed)
        options = {"density": density} if density is not None else {}
        adapterlab.add_weighted_adapter(model, ["default", "other"], [w_own, w_other], "merged", kind, **options)
        scores[f"{kind} {w_own:g}/{w_other:g}"] = accuracy(model, data)
        adapterlab.detach(model, "merged")
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", default="/tmp/bench/task-arith")
    parser.add_argument("--out", default="benchmarks/results/task_arithmetic.json")
    parser.add_argument("--smoke", action="store_true", help="2 steps, 16 test records: check that the script runs")
    args = parser.parse_args()
    global TEST
    if args.smoke:
        TRAIN.update(max_steps=2, eval_steps=2, max_train_samples=32)
        TEST = 16
    seeds = [int(s) for s in args.seeds.split(",")]
    work, started = Path(args.work), time.time()
    splits = dev_splits(work)
    rows = []
    for seed in seeds:
        runs = {task: train_lora(task, seed, splits[task][0], work) for task in TASKS}
        for task, other in (("sst2", "boolq"), ("boolq", "sst2")):
            scores = evaluate(task, other, runs, splits[task][1], seed)
            rows.append({"task": task, "seed": seed, **scores})
            print(json.dumps(rows[-1]), flush=True)
    columns = [k for k in rows[0] if k not in ("task", "seed")]
    summary = {task: {c: {"mean": round(statistics.mean(r[c] for r in rows if r["task"] == task), 4),
                          "sd": round(statistics.stdev(r[c] for r in rows if r["task"] == task), 4)
                          if len(seeds) > 1 else 0.0} for c in columns} for task in TASKS}
    result = {"settings": {**TRAIN, "lora": "r 8, alpha 16, targets q, v (defaults)", "seeds": seeds,
                           "select_records": SELECT, "test_records": {t: len(_records(splits[t][1])) for t in TASKS},
                           "merges": [dict(zip(("type", "w_own", "w_other", "density"), m)) for m in MERGES],
                           "threads": torch.get_num_threads(), "seconds": round(time.time() - started)},
              "summary": summary, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for task in TASKS:
        print(task, "  ".join(f"{c}: {v['mean']:.3f}±{v['sd']:.3f}" for c, v in summary[task].items()))


if __name__ == "__main__":
    main()
