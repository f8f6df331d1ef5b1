"""LLM-Adapters' LoRA command on SmolLM2-135M: their defaults against adapterlab's, loss and accuracy (CPU).

Replays their LLaMA LoRA command from `math_running_commands` (`python finetune.py` -> `adapterlab train`) with
`--base_model smollm2-135m` on a seeded subset of the decontaminated math training set, once as written (their
defaults, chosen by their flag spellings) and once with `--recipe adapterlab` (less `--eval_step`, which adapterlab refuses without a dev set); then evaluates the base model
and both adapters with `adapterlab eval` on the first --limit items of each test set (greedy, the prompt each
adapter was trained with). Writes one JSON with the commands, train losses and accuracies.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/llm_adapters_recipe.py --output benchmarks/results/llm_adapters_recipe.json
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from adapterlab.data.decontaminate import decontaminate
from adapterlab.data.instruction import tokenize_example
from adapterlab.data.reading import read_json_records
from adapterlab.models import load_model
from adapterlab.train.restore import restore_run

MATH = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "math"
TEST_SETS = ("addsub", "aqua", "gsm8k", "mawps", "multiarith", "singleeq")
# Their command (math_running_commands, LLaMA LoRA) with only the model, data and output changed; the script adds
# --num_epochs/--batch_size overrides and --warmup-steps (their finetune.py hard-codes 100 warmup steps, more
# than this whole run) to fit the CPU, the same for both recipes.
THEIR_COMMAND = ("--base_model smollm2-135m --data_path {data} --output_dir {out} --batch_size {batch} "
                 "--micro_batch_size 4 --num_epochs 1 --learning_rate 3e-4 --cutoff_len 256 --val_set_size 0 "
                 "--eval_step 80 --save_step 80 --adapter_name lora "
                 "--target_modules '[\"q_proj\", \"k_proj\", \"v_proj\", \"up_proj\", \"down_proj\"]' "
                 "--lora_r 32 --lora_alpha 64 --warmup-steps {warmup} --logging-steps 1 --seed {seed}")


def adapterlab(*args: str) -> None:
    """Run the CLI as a user would, failing loudly."""
    subprocess.run([sys.executable, "-m", "adapterlab", *args], check=True)


def training_data(folder: Path, samples: int, dev: int, seed: int) -> tuple[Path, list[dict]]:
    """(a seeded subset of train_math_3k.json with every question of the six test sets removed, `dev` other
    records of it held out for the loss comparison)."""
    records, _ = decontaminate(read_json_records(MATH / "train_math_3k.json"),
                               [MATH / f"{name}.json" for name in TEST_SETS])
    random.Random(seed).shuffle(records)
    path = folder / "train.json"
    path.write_text(json.dumps(records[:samples]))
    return path, records[samples:samples + dev]


@torch.no_grad()
def response_loss(model: torch.nn.Module, tokenizer, records: list[dict], template: str) -> float:
    """Mean cross-entropy per response token (prompt tokens masked) on `records`, in the prompt `template`: the
    loss both recipes can be compared on (their training loss also covers the prompt)."""
    model.eval()
    total, tokens = 0.0, 0
    for record in records:
        example = tokenize_example(record, tokenizer, template=template, cutoff_len=256)
        labels = torch.tensor([example["labels"]])
        n = int((labels[:, 1:] != -100).sum())
        out = model(input_ids=torch.tensor([example["input_ids"]]), labels=labels)
        total, tokens = total + float(out.loss) * n, tokens + n
    return total / tokens


def train_losses(run: Path) -> list[float]:
    """Per-step training losses the run logged."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r and "eval_loss" not in r]


def evaluate(name: str, folder: Path, datasets: str, limit: int, extra: list[str]) -> dict:
    """Accuracy per data set of one model, from `adapterlab eval`'s summary.json."""
    out = folder / f"eval-{name}"
    start = time.perf_counter()
    adapterlab("eval", "--model", "smollm2-135m", "--datasets", datasets, "--data-dir", str(MATH), "--limit", str(limit),
               "--batch-size", "20", "--max-new-tokens", "192", "--output", str(out), "--no-progress", "--overwrite", *extra)
    summary = json.loads((out / "summary.json").read_text())
    return {"seconds": round(time.perf_counter() - start, 1), "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=320)
    parser.add_argument("--dev", type=int, default=60, help="held-out records for the response-token loss")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--datasets", default="singleeq,addsub")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--work", default="/tmp/bench-llm-adapters-recipe")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data, dev = training_data(work, args.samples, args.dev, args.seed)
    result = {"samples": args.samples, "dev": len(dev), "datasets": args.datasets, "limit": args.limit, "runs": {}}
    for recipe, extra in (("llm-adapters", []), ("adapterlab", ["--recipe", "adapterlab"])):
        out = work / f"train-{recipe}"
        argv = shlex.split(THEIR_COMMAND.format(data=data, out=out, batch=args.batch, warmup=args.warmup,
                                                seed=args.seed)) + extra
        if recipe == "adapterlab":  # adapterlab refuses --eval_step without a dev set, where finetune.py ignores it
            at = argv.index("--eval_step")
            del argv[at:at + 2]
        start = time.perf_counter()
        adapterlab("train", *argv, "--overwrite")
        losses = train_losses(out)
        config = (out / "train_config.yaml").read_text()
        model, tokenizer, _ = restore_run(out)
        template = "llm-adapters" if recipe == "llm-adapters" else "alpaca"
        assert f"template: {template}" in config, f"{recipe} did not train with the {template} prompt"
        loss = response_loss(model, tokenizer, dev, template)
        del model
        result["runs"][recipe] = {
            "command": "adapterlab train " + shlex.join(argv), "train_seconds": round(time.perf_counter() - start, 1),
            "train_losses": losses, "train_config": config, "dev_response_loss": loss, "template": template,
            "eval": evaluate(recipe, work, args.datasets, args.limit, ["--adapter-path", str(out)]),
        }
        Path(args.output).write_text(json.dumps(result, indent=1))
    base, tokenizer = load_model("smollm2-135m")
    losses = {t: response_loss(base, tokenizer, dev, t) for t in ("alpaca", "llm-adapters")}
    del base
    result["runs"]["base"] = {"dev_response_loss": losses,
                              "eval": evaluate("base", work, args.datasets, args.limit, ["--template", "alpaca"])}
    Path(args.output).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: {d: s.get("accuracy") for d, s in v["eval"]["summary"].get("datasets", {}).items()}
                      for k, v in result["runs"].items()}, indent=1))


if __name__ == "__main__":
    main()
