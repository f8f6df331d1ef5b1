"""The checks that need a GPU, in one short script: what the CPU test suite cannot show.

For every registered method on a tiny Llama held in bf16 on the device: adapters stay float32, forward and
backward run under the base dtype, gradients reach only the adapter, merge equals the unmerged output; then the
training recipe with `--precision bf16` and fp16 on the device (the HF Trainer's mixed-precision paths),
`measure --device cuda`, and batched evaluation on the device against the CPU; then quantized bases through
bitsandbytes: 8-bit and 4-bit adapters' backward on the device, and QLoRA steps (`--load-4bit`, bf16) on SmolLM2
(a random model of its shapes where the checkpoint is not cached). Writes one JSON of results.

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
from adapterlab.core.registry import config_class, method_names  # noqa: E402

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


def kbit_methods_on_device(device: str, workdir: Path) -> dict:
    """Adapters on bitsandbytes 8-bit and 4-bit layers on the device: float32 adapters, finite gradients on them
    only, and merge refused."""
    from adapterlab.models import load_model

    folder = causal_folder(workdir / "model-kbit", hidden_size=64)
    inputs = {k: v.to(device) for k, v in tiny_inputs("llama").items()}
    rows = {}
    for mode in ("8bit", "4bit"):
        for method in ("lora", "ia3", "series", "parallel", "bitfit", "prefix"):
            model, _ = load_model(str(folder), quantize=mode, dtype="bfloat16", device=device, log=lambda _: None)
            al.attach(model, method, **options_for(method))
            out = model(input_ids=inputs["input_ids"], labels=inputs["input_ids"])
            out.loss.backward()
            trainable = [p for p in model.parameters() if p.requires_grad]
            try:
                al.merge(model)
                merge = "merged"
            except AdapterError as exc:
                merge = f"refused: {str(exc)[:80]}"
            rows[f"{mode}/{method}"] = {
                "layer": type(model.model.layers[0].self_attn.q_proj).__name__,
                "device": str(next(p for p in trainable).device), "loss": out.loss.item(),
                "adapter_dtypes": sorted({str(p.dtype) for p in trainable}),
                "all_grads_finite": all(p.grad is not None and torch.isfinite(p.grad).all().item() for p in trainable),
                "frozen_with_grad": [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None],
                "merge": merge}
    return {"status": "ok", "rows": rows}


SMOLLM2_SHAPES = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, tie_word_embeddings=True)


def qlora_model(spec: str, workdir: Path) -> tuple[str, str]:
    """(model spec, what it is): `spec` where it can load without a network, else a random Llama of SmolLM2-135M's
    shapes (its bnb kernels see the same matrix sizes)."""
    import transformers as T
    from train_helpers import make_tokenizer

    from adapterlab.models import KNOWN_MODELS, is_cached

    if spec not in KNOWN_MODELS or is_cached(spec):
        return spec, spec
    folder = workdir / "smollm2-shaped"
    tok = make_tokenizer(folder)
    T.set_seed(0)
    T.LlamaForCausalLM(T.LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id, **SMOLLM2_SHAPES)).save_pretrained(folder)
    return str(folder), f"random Llama of SmolLM2-135M's shapes ({spec} is not cached here)"


def qlora_on_device(spec: str, device: str, workdir: Path) -> dict:
    """QLoRA through the recipe: 4-bit NF4 base, float32 LoRA on every projection, bf16, gradient checkpointing;
    the loss falls, and the saved adapter gives on the 4-bit base what it gives on the bf16 base within NF4's error."""
    from adapterlab.models import load_model
    from adapterlab.train import TrainConfig, train

    model_spec, what = qlora_model(spec, workdir)
    data = workdir / "qlora.json"
    data.write_text(json.dumps(math_records(160)))
    run = workdir / "run-qlora"
    config = TrainConfig(model=model_spec, data=[str(data)], output=str(run), adapter="lora", load_4bit=True,
                         adapter_options={"r": 8, "targets": ["q", "k", "v", "o", "gate", "up", "down"]},
                         max_steps=20, batch_size=8, micro_batch_size=8, lr=2e-3, warmup_steps=0, logging_steps=1,
                         precision="bf16", gradient_checkpointing=True, val_size=0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    summary = train(config)
    seconds = time.perf_counter() - start
    losses = [row["loss"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in row]
    quantized, tokenizer = load_model(model_spec, quantize="4bit", dtype="bfloat16", device=device)
    dense, _ = load_model(model_spec, dtype="bfloat16", device=device)
    inputs = tokenizer(["tom had 3 apples and got 4 more. how many apples?"], return_tensors="pt").to(device)
    with torch.no_grad():
        base_gap = (quantized(**inputs).logits.float() - dense(**inputs).logits.float()).abs().max().item()
        for model in (quantized, dense):
            al.load_adapter(model, run)
        q, d = quantized(**inputs).logits.float(), dense(**inputs).logits.float()
    try:
        al.merge(quantized)
        merge = "merged"
    except AdapterError as exc:
        merge = f"refused: {str(exc)[:80]}"
    return {"status": "ok", "model": what, "steps": summary["steps"], "seconds": round(seconds, 1),
            "first_loss": losses[0], "last_loss": losses[-1], "loss_fell": losses[-1] < losses[0],
            "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None,
            "layer": type(quantized.model.layers[0].self_attn.q_proj).__name__,
            "adapter_dtypes": sorted({str(p.dtype) for n, p in quantized.named_parameters() if ".adapterlab." in n}),
            "base_4bit_vs_bf16_max_abs": base_gap, "adapted_4bit_vs_bf16_max_abs": (q - d).abs().max().item(),
            "top1_agreement": (q.argmax(-1) == d.argmax(-1)).float().mean().item(), "merge": merge}


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
    parser.add_argument("--qlora-model", default="smollm2-135m", help="model of the QLoRA check")
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
        report["kbit_methods"] = guarded("kbit", kbit_methods_on_device, device, work)
        print("kbit methods", json.dumps(report["kbit_methods"])[:1200], flush=True)
        report["qlora"] = guarded("qlora", qlora_on_device, args.qlora_model, device, work)
        print("qlora", json.dumps(report["qlora"])[:1000], flush=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
