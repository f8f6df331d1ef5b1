"""Evaluation speed: adapterlab's batched greedy eval against LLM-Adapters' protocol and against batch-1 greedy.

LLM-Adapters' evaluate.py generates one example at a time with 4-beam search and the KV cache off, then
reads the answer with its own rules (restated below as a reference, independently of adapterlab's code).
This script times the three protocols on the first GSM8K items with the same prompt and max_new_tokens,
and checks that adapterlab's `llm-adapters` extraction gives the reference's answer on every generation.

    flock /tmp/heavy.lock .venv/bin/python benchmarks/eval_speed.py --n 32 --baseline-n 32 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from adapterlab.data.templates import build_prompt
from adapterlab.evaluate import extract_answer, generate, is_correct, load_dataset
from adapterlab.models import load_model


def reference_number(sentence: str) -> float:
    """LLM-Adapters' extract_answer_number: commas dropped, the last match of -?digits[.digits], inf if none."""
    found = re.findall(r"-?\d+\.?\d*", sentence.replace(",", ""))
    return float(found[-1]) if found else float("inf")


def reference_correct(sentence: str, label: str) -> bool:
    return abs(float(label) - reference_number(sentence)) <= 0.001


def their_protocol(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """One example: no padding, 4 beams, KV cache off; the decoded text after '### Response:', stripped."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, num_beams=4, do_sample=False, use_cache=False,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0]).split("### Response:")[1].strip()


def agreement(texts: list[str], labels: list[str]) -> dict[str, int]:
    """How often adapterlab's llm-adapters mode agrees with the reference, answer by answer and in correctness."""
    same_answer = same_correct = 0
    for text, label in zip(texts, labels):
        ours = extract_answer(text, "number", mode="llm-adapters")
        theirs = reference_number(text)
        same_answer += (ours is None and theirs == float("inf")) or ours == theirs
        same_correct += is_correct(ours, label, "number", mode="llm-adapters") == reference_correct(text, label)
    return {"items": len(texts), "same_answer": same_answer, "same_correctness": same_correct}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "math"))
    parser.add_argument("--n", type=int, default=32, help="GSM8K items for our eval and batch-1 greedy")
    parser.add_argument("--baseline-n", type=int, default=32, help="items run with LLM-Adapters' protocol")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", default="benchmarks/results/eval_speed.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, dtype="float32", device="cpu")
    data = load_dataset("gsm8k", [args.data_dir], limit=args.n)
    labels = [str(r["answer"]) for r in data.records]
    prompts = [build_prompt(r, "alpaca", tokenizer) for r in data.records]
    result = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                         f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "args": vars(args)}

    def timed(name, fn, n):
        start = time.perf_counter()
        texts = fn()
        seconds = time.perf_counter() - start
        result[name] = {"items": n, "seconds": round(seconds, 1), "seconds_per_item": round(seconds / n, 3),
                        "llm_adapters_accuracy": sum(reference_correct(t, label) for t, label in zip(texts, labels)) / n,
                        "extraction_agreement": agreement(texts, labels[:n])}
        print(name, json.dumps(result[name]), flush=True)
        return texts

    ours = timed("adapterlab_batched_greedy", lambda: generate(
        model, tokenizer, prompts, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens), args.n)
    single = timed("batch1_greedy", lambda: generate(
        model, tokenizer, prompts, batch_size=1, max_new_tokens=args.max_new_tokens), args.n)
    result["batched_equals_batch1_generations"] = sum(a == b for a, b in zip(ours, single))
    theirs = timed("llm_adapters_protocol", lambda: [
        their_protocol(model, tokenizer, p, args.max_new_tokens) for p in prompts[: args.baseline_n]], args.baseline_n)
    # The same decoding as theirs (4 beams, no stop string), batched with the cache: are the answers the same?
    beams = timed("adapterlab_batched_beam4", lambda: generate(
        model, tokenizer, prompts[: args.baseline_n], batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        num_beams=4, stop_strings=()), args.baseline_n)
    clean = [t.replace(tokenizer.eos_token, "").strip() for t in theirs]
    result["beam4_same_as_theirs"] = {
        "items": len(theirs), "same_generation": sum(a == b for a, b in zip(beams, clean)),
        "same_llm_adapters_answer": sum(extract_answer(a, "number", mode="llm-adapters") == reference_number(b)
                                        or (extract_answer(a, "number", mode="llm-adapters") is None
                                            and reference_number(b) == float("inf")) for a, b in zip(beams, theirs)),
    }
    per_item = {k: result[k]["seconds_per_item"] for k in ("adapterlab_batched_greedy", "batch1_greedy", "llm_adapters_protocol")}
    result["speedup_vs_llm_adapters"] = round(per_item["llm_adapters_protocol"] / per_item["adapterlab_batched_greedy"], 1)
    result["speedup_vs_batch1_greedy"] = round(per_item["batch1_greedy"] / per_item["adapterlab_batched_greedy"], 1)
    result["examples"] = [{"ours_greedy": o, "ours_beam4": b, "theirs": t} for o, b, t in zip(ours, beams, theirs)][:3]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=2))


if __name__ == "__main__":
    main()
