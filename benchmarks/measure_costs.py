"""The adapter-cost table in BENCHMARKS.md: `adapterlab measure` on SmolLM2-135M with the settings recorded there.

Full FT, LoRA r=32 on q,k,v,up,down, series (256 on down), parallel (256 on up,down), IA3, prompt and prefix
tuning (20 virtual tokens each), every method in its own process. Extra arguments go to `adapterlab measure`
(e.g. --device cuda --seq-len 256 --micro-batch-size 4 --steps 5 --warmup 2 for a GPU).

    flock /tmp/heavy.lock .venv/bin/python benchmarks/measure_costs.py --output benchmarks/results/measure-smol-cpu
"""

from __future__ import annotations

import sys

from adapterlab.cli import main

ARGS = [
    "measure", "--model", "smollm2-135m", "--methods", "full,lora,series,parallel,ia3,prompt,prefix",
    "--seq-len", "128", "--micro-batch-size", "2", "--steps", "3", "--warmup", "1",
    "--option", "lora.r=32", "--option", "lora.targets=q,k,v,up,down",
    "--option", "series.size=256", "--option", "series.targets=down",
    "--option", "parallel.size=256", "--option", "parallel.targets=up,down",
    "--option", "prompt.num_virtual_tokens=20", "--option", "prefix.num_virtual_tokens=20",
]

if __name__ == "__main__":
    sys.exit(main(ARGS + sys.argv[1:]))
