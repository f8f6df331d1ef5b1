"""LoRA on SmolLM2-135M-Instruct, 300 decontaminated train_math_3k examples, one epoch on CPU.

Writes the run to OUT (default /tmp/bench/smollm2-lora) and copies its loss curve to benchmarks/figures/.
Run under `flock /tmp/heavy.lock` on a shared machine.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from adapterlab.train import TrainConfig, train

MATH = Path("/work/shared/datasets/math")
TESTS = ["addsub", "aqua", "gsm8k", "mawps", "multiarith", "singleeq"]

if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/bench/smollm2-lora")
    config = TrainConfig(
        model="smollm2-135m", data=[str(MATH / "train_math_3k.json")], output=str(out), overwrite=out.exists(),
        adapter="lora", adapter_options={"r": 32, "alpha": 64, "targets": ["q", "k", "v", "up", "down"]},
        decontaminate=[str(MATH / f"{t}.json") for t in TESTS], max_train_samples=300, val_size=30,
        epochs=1, lr=3e-4, batch_size=16, micro_batch_size=4, cutoff_len=256, warmup_steps=2,
        eval_steps=6, logging_steps=1, seed=42,
    )
    summary = train(config)
    figures = Path(__file__).parent / "figures"
    figures.mkdir(exist_ok=True)
    shutil.copy(out / "loss.png", figures / "train_smollm2_lora_loss.png")
    print(json.dumps(summary, indent=2))
