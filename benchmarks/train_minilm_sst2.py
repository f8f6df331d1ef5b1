"""all-MiniLM-L6-v2 on SST-2: a Pfeiffer adapter (+ trained head) against full fine-tuning, same budget.

Same data (a seeded 8,000-sentence subset of the 67k training set), steps, batch and dev set (all 872
sentences) for both; only the learning rate differs (each method's usual range). Usage:
    flock /tmp/heavy.lock python benchmarks/train_minilm_sst2.py pfeiffer|full [OUT]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from adapterlab.train import TrainConfig, train

SST2 = Path("/work/shared/datasets/sst2")
SETTINGS = {
    "pfeiffer": dict(adapter="pfeiffer", adapter_options={"size": 64, "activation": "relu"}, lr=1e-3),
    "full": dict(adapter="full", adapter_options={}, lr=5e-5),
}

if __name__ == "__main__":
    method = sys.argv[1]
    out = Path(sys.argv[2] if len(sys.argv) > 2 else f"/tmp/bench/minilm-sst2-{method}")
    config = TrainConfig(
        model="minilm-l6", task="seq-cls", data=[str(SST2 / "train.tsv")], eval_data=[str(SST2 / "dev.tsv")],
        output=str(out), overwrite=out.exists(), max_train_samples=8_000, max_steps=250, batch_size=32,
        micro_batch_size=32, cutoff_len=64, warmup_steps=20, eval_steps=50, logging_steps=10, seed=42,
        **SETTINGS[method],
    )
    print(json.dumps(train(config), indent=2))
