"""SST-2 runs beside a compare study's fusion and compacter rows (BENCHMARKS.md, "AdapterFusion and Compacter"):
fusion with the task's own pfeiffer adapter among its members, compacter at its paper's lr, and a 300-step budget
for compacter, pfeiffer and lora. Each run is `adapterlab train --config` on the study's saved train_config.yaml of
the same seed, so data, seed and settings are the study's; only what is named changes. Prints a Markdown table.

    OMP_NUM_THREADS=1 python benchmarks/fusion_compacter_sst2.py --study compare/minilm-fusion --work /tmp/extra
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

TARGETS = {"99%": 0.771, "95%": 0.739}  # the study's marks on SST-2 (its 60-step full fine-tuning)


def runs(study: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (the study run whose config it starts from, the flags it changes); {seed} filled in later."""
    own = ",".join(f"{t}_pfeiffer={study}/runs/{t}/pfeiffer-seed{{seed}}" for t in ("sst2", "boolq", "piqa"))
    longer = ["--max-steps", "300", "--eval-steps", "50", "--logging-steps", "50", "--warmup-steps", "30"]
    return {
        "fusion-own": ("fusion", ["--fuse", own]),
        "compacter-lr3e-3": ("compacter", ["--lr", "3e-3"]),
        "compacter-300": ("compacter", ["--lr", "3e-3", *longer]),
        "pfeiffer-300": ("pfeiffer", ["--lr", "1e-3", *longer]),
        "lora-300": ("lora", ["--lr", "1e-3", *longer]),
    }


def summary(folder: Path) -> tuple[float, int, float, dict[str, float | None]]:
    """(best dev accuracy, its step, training seconds to it, training seconds to each mark or None)."""
    evals = [r for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if "eval_accuracy" in r]
    best = max(evals, key=lambda r: (r["eval_accuracy"], -r["step"]))
    marks = {k: next((r["train_time_s"] for r in evals if r["eval_accuracy"] >= t), None) for k, t in TARGETS.items()}
    return best["eval_accuracy"], best["step"], best["train_time_s"], marks


def spread(values: list[float]) -> str:
    if not values:
        return "not reached"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, required=True, help="the compare --output folder (sst2, boolq, piqa)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the new runs")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print("| run | best dev (per seed) | steps to best | train s to best | s to 99% | s to 95% |\n|---|---|---|---|---|---|")
    for name, (method, flags) in runs(args.study).items():
        results = []
        for seed in seeds:
            out = args.work / f"{name}-seed{seed}"
            config = args.study / "runs" / "sst2" / f"{method}-seed{seed}" / "train_config.yaml"
            command = [sys.executable, "-m", "adapterlab", "train", "--config", str(config), "--output", str(out),
                       "--overwrite", *[f.format(seed=seed) for f in flags]]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results.append(summary(out))
        acc = [r[0] * 100 for r in results]
        marks = {k: [r[3][k] for r in results if r[3][k] is not None] for k in TARGETS}
        print(f"| {name} | {spread(acc)} ({', '.join(f'{a:.1f}' for a in acc)}) | {spread([r[1] for r in results])} | "
              f"{spread([r[2] for r in results])} | "
              + " | ".join(f"{spread(marks[k])} ({len(marks[k])}/{len(results)})" for k in TARGETS) + " |")


if __name__ == "__main__":
    main()
