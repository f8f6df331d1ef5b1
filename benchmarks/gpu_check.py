"""The checks that need a GPU, in one short script: what the CPU test suite cannot show.

For every registered method on a tiny Llama held in bf16 on the device: adapters stay float32, forward and
backward run under the base dtype, gradients reach only the adapter, merge equals the unmerged output; then the
training recipe with `--precision bf16` and fp16 on the device (the HF Trainer's mixed-precision paths),
`measure --device cuda`, and batched evaluation on the device against the CPU. Writes one JSON of results.

    python benchmarks/gpu_check.py --output gpu_check.json            # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --output check.json   # the same checks on the CPU (bf16 only)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tiny_models import randomize_adapters, tiny_inputs, tiny_model  # noqa: E402
from train_helpers import causal_folder, math_records  # noqa: E402

import adapterlab as al  # noqa: E402
from adapterlab.errors import AdapterError  # noqa: E402
from adapterlab.registry import config_class, method_names  # noqa: E402

SMALL = {"size": 8, "r": 4, "num_virtual_tokens": 3, "kernel_size": 3, "encoder_hidden_size": 16}


def options_for(method: str) -> dict:
    fields = set(config_class(method).option_names())
    return {k: v for k, v in SMALL.items() if k in fields}


def method_on_device(method: str, device: str) -> dict:
    """Attach to a bf16 tiny Llama on `device`: adapter dtypes, a backward pass, gradients, merge."""
    torch.manual_seed(0)
    model = tiny_model("llama").to(dtype=torch.bfloat16)
    inputs = {k: v.to(device) for k, v in tiny_inputs("llama").items()}
    try:
        al.attach(model, method, **options_for(method))
    except AdapterError as exc:
        return {"status": "refused", "reason": str(exc)}
    randomize_adapters(model)  # zero-initialised halves would make the merge check trivial
    model.to(device)  # the device only: .to(dtype) would also cast the float32 adapters
    trainable = [p for p in model.parameters() if p.requires_grad]
    out = model(**inputs).logits
    out.float().pow(2).mean().backward()
    frozen_grads = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    row = {
        "status": "ok", "output_dtype": str(out.dtype),
        "adapter_dtypes": sorted({str(p.dtype) for p in trainable}),
        "all_grads_finite": all(p.grad is not None and torch.isfinite(p.grad).all().item() for p in trainable),
        "frozen_with_grad": frozen_grads,
    }
    if al.get_config(model).mergeable:
        with torch.no_grad():
            before = model(**inputs).logits.float()
            try:
                al.merge(model)
            except AdapterError as exc:  # e.g. bitfit on bias-free projections
                row["merge"] = f"refused: {exc}"
                return row
            after = model(**inputs).logits.float()
        row["merge_max_abs_diff"] = (before - after).abs().max().item()
    return row


def train_on_device(precision: str, workdir: Path) -> dict:
    """Three LoRA steps through the HF Trainer recipe with the given mixed precision."""
    from adapterlab.train import TrainConfig, train

    folder = causal_folder(workdir / f"model-{precision}")
    data = workdir / "data.json"
    data.write_text(json.dumps(math_records(24)))
    config = TrainConfig(model=str(folder), data=[str(data)], output=str(workdir / f"run-{precision}"),
                         adapter="lora", adapter_options={"r": 4}, max_steps=3, batch_size=4, micro_batch_size=4,
                         precision=precision, dtype="bfloat16" if precision == "bf16" else None, val_size=0)
    start = time.perf_counter()
    summary = train(config)
    return {"status": "ok", "steps": summary["steps"], "train_loss": summary["train_loss"],
            "device": summary.get("device"), "seconds": round(time.perf_counter() - start, 1)}


def measure_on_device(device: str, workdir: Path) -> dict:
    from functools import partial

    from adapterlab.measure import measure

    rows = measure(partial(tiny_model, "llama"), ["full", "lora", "prefix"], seq_len=16, micro_batch_size=2, steps=2,
                   warmup=1, decode_tokens=2, device=device, isolate=False, output=workdir / "measure", progress=False)
    return {"status": "ok", "rows": [{k: r[k] for k in ("method", "status", "step_time_ms", "peak_memory_mb",
                                                         "memory_method", "prefill_ms", "merged_prefill_ms")}
                                     for r in rows]}


def evaluate_on_device(device: str, workdir: Path) -> dict:
    """Batched greedy evaluation on the device gives the CPU's generations (fp32 both)."""
    from adapterlab.evaluate import evaluate
    from adapterlab.models import load_model

    folder = causal_folder(workdir / "model-eval")
    records = [{"instruction": r["instruction"], "input": "", "output": r["output"], "answer": r["answer"]}
               for r in math_records(8)]
    results = []
    for i, where in enumerate(("cpu", device)):
        model, tokenizer = load_model(str(folder), dtype="float32", device=where)
        out = workdir / f"eval-{i}-{where}"
        evaluate(model, tokenizer, records, batch_size=4, max_new_tokens=8, output_dir=out, progress=False)
        results.append([json.loads(line)["generation"] for f in sorted(out.glob("*.jsonl"))
                        for line in f.read_text().splitlines()])
    return {"status": "ok", "same_generations_as_cpu": results[0] == results[1], "n": len(results[0])}


def guarded(name: str, fn, *args) -> dict:
    try:
        return fn(*args)
    except Exception as exc:  # a check that breaks is a result, not the end of the script
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=6)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--output", default="gpu_check.json")
    args = parser.parse_args()
    device = args.device
    report: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.machine(),
                    "torch": torch.__version__, "methods": {}}
    for method in method_names():
        report["methods"][method] = guarded(method, method_on_device, method, device)
        print(method, json.dumps(report["methods"][method])[:300], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for precision in (("bf16", "fp16") if device == "cuda" else ("bf16",)):
            report[f"train_{precision}"] = guarded("train", train_on_device, precision, work)
            print(f"train {precision}", json.dumps(report[f"train_{precision}"])[:600], flush=True)
        report["measure"] = guarded("measure", measure_on_device, device, work)
        print("measure", json.dumps(report["measure"])[:800], flush=True)
        report["evaluate"] = guarded("evaluate", evaluate_on_device, device, work)
        print("evaluate", json.dumps(report["evaluate"])[:600], flush=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
