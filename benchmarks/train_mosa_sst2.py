"""MoSA against the plain adapter of the same shape on SST-2 (all-MiniLM-L6-v2), same steps, lr and budget.

Four settings, each over several seeds, run interleaved (seed by seed) so that machine load hits all alike:
parallel adapter (size 64 at the MLP) vs MoSA of it (N=4, split up, consistency 1.0), and LoRA (r=8 on q,v)
vs MoSA of it. Each run is a fresh process (its peak resident memory is its own); the dev set is SST-2's 872
sentences, evaluated every `--eval-steps` with the merged adapter. Nothing is tuned for either side.

    OMP_NUM_THREADS=1 python benchmarks/train_mosa_sst2.py --train-samples 1000 --seeds 0,1,2 \\
        --output benchmarks/results/mosa_sst2_1k.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SST2 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "sst2"
BASES = {"parallel": {"size": 64, "targets": ["mlp"], "init": "zero"}, "lora": {"r": 8, "targets": ["q", "v"]}}
SETTINGS = {
    "parallel": ("parallel", BASES["parallel"]),
    "mosa-parallel": ("mosa", {"base": "parallel", "modules": 4, "split": "up", "consistency": 1.0,
                               **BASES["parallel"]}),
    "lora": ("lora", BASES["lora"]),
    "mosa-lora": ("mosa", {"base": "lora", "modules": 4, "split": "up", "consistency": 1.0, **BASES["lora"]}),
}
CHILD = """
import json, resource, sys
from adapterlab.train import TrainConfig, train
config = TrainConfig(**json.loads(sys.argv[1]))
summary = train(config)
summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(summary))
"""


def run(name: str, seed: int, args: argparse.Namespace, folder: Path) -> dict:
    adapter, options = SETTINGS[name]
    if adapter == "mosa":
        options = {**options, "consistency": args.consistency}
    config = dict(model="minilm-l6", task="seq-cls", data=[str(SST2 / "train.tsv")],
                  eval_data=[str(SST2 / "dev.tsv")], output=str(folder / f"{name}-{seed}"), adapter=adapter,
                  adapter_options=options, max_train_samples=args.train_samples, max_steps=args.steps,
                  batch_size=args.batch_size, micro_batch_size=args.batch_size, cutoff_len=64, lr=args.lr,
                  warmup_steps=max(1, args.steps // 10), eval_steps=args.eval_steps, logging_steps=10, seed=seed)
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config)], capture_output=True, text=True)
    line = next((out for out in done.stdout.splitlines() if out.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{name} seed {seed} failed:\n{done.stderr[-3000:]}")
    summary = json.loads(line[len("RESULT "):])
    curve = [json.loads(row) for row in (Path(config["output"]) / "metrics.jsonl").read_text().splitlines()]
    dev = [(r["step"], r["eval_accuracy"]) for r in curve if "eval_accuracy" in r]
    return {"setting": name, "seed": seed, "best_dev_accuracy": summary["best_metric"]["value"], "dev_curve": dev,
            "wall_time_s": summary["wall_time_s"], "peak_rss_mb": round(summary["peak_rss_mb"], 1),
            "trainable_parameters": summary["trainable_parameters"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=125)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-steps", type=int, default=25)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--consistency", type=float, default=1.0, help="MoSA's consistency weight (their 1.0)")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mosa-sst2-") as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name in args.settings.split(","):
                rows.append(run(name, seed, args, Path(tmp)))
                print(json.dumps({k: rows[-1][k] for k in ("setting", "seed", "best_dev_accuracy", "wall_time_s",
                                                           "peak_rss_mb")}), flush=True)
                Path(args.output).write_text(json.dumps({"settings": vars(args), "runs": rows}, indent=2) + "\n")
    for name in args.settings.split(","):
        accs = [r["best_dev_accuracy"] for r in rows if r["setting"] == name]
        times = [r["wall_time_s"] for r in rows if r["setting"] == name]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{name:14s} best dev accuracy {100 * statistics.mean(accs):.1f} ± {100 * spread:.1f} "
              f"(n={len(accs)}), median wall {statistics.median(times):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
