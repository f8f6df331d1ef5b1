"""The model side of benchmarks/serve_load.py (issue #22), run in its own process with one torch thread.

`prepare DIR`: the adapters the load test serves, made once: 16 LoRAs (r=16, alpha 32 on q,k,v,o) and one each of
IA3, Pfeiffer and prompt tuning, every parameter of each perturbed with seeded noise (so LoRA's B is nonzero and every
adapter changes the outputs), saved with adapterlab.save_adapter; and `merged/`, the base with lora0 merged
(save_merged), the single-adapter ceiling; `prompts.json`, the fixed prompts. Prints one JSON line: the adapters' sizes on disk.

`loop --mode M --clients C --adapters T`: the in-process closed loop, for what the server cannot do over HTTP (PEFT's
mixed batches, one adapter per batch). C requests are always outstanding: when one finishes, a new one takes its
place at the next step, with an adapter drawn uniformly from the first T (seeded). Every mode runs the same
evaluate.scheduler.ContinuousBatcher the server's worker runs, on the same prompts and lengths:

* `merged`: the base with lora0 merged, no adapter names;
* `mixed`: adapterlab, all rows in one batch, `adapter_names=` per row (what `adapterlab serve` does);
* `peft`: PEFT's LoRA (init_lora_weights=False, its own random weights), `adapter_names=` per row;
* `switch`: adapterlab, one batch per adapter, the batches taking turns one decode step each with
  `set_active(model, name)` before each step (serving by switching adapters between batches).

Prints one JSON line: generated tokens/s over the window, per-request latency and time to first token.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import cProfile
import io
import json
import pstats
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

import adapterlab as al
from adapterlab.core.site_hooks import HOST_ATTR
from adapterlab.evaluate.scheduler import ContinuousBatcher, Request
from adapterlab.models.loading import load_model

LORA = dict(targets=["q", "k", "v", "o"], r=16, alpha=32.0)
LORAS = 16
OTHERS = {"ia3": dict(), "pfeiffer": dict(), "prompt": dict(num_virtual_tokens=20)}


def prompts(tokenizer: Any, length: int = 32, stride: int = 8) -> list[list[int]]:
    """Fixed prompts of `length` tokens: windows of the Zen of Python (the `this` module, the same text in every
    Python 3). Plain English keeps greedy decoding off EOS for 32 tokens, where random ids often end early."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    ids = tokenizer(codecs.decode(this.s, "rot13"), add_special_tokens=False)["input_ids"]
    return [ids[i:i + length] for i in range(0, len(ids) - length + 1, stride)]


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Seeded noise (std 0.02) on every adapter parameter of `model` (one adapter attached)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if HOST_ATTR in name.split("."):
                p.add_(torch.randn(p.shape, generator=g) * 0.02)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def prepare(out: Path) -> dict:
    model, tokenizer = load_model("smollm2-135m", log=lambda _: None)
    model.eval()
    made = [(f"lora{i}", "lora", LORA) for i in range(LORAS)] + [(m, m, o) for m, o in OTHERS.items()]
    for seed, (name, method, options) in enumerate(made, start=1):
        al.attach(model, method, name, **options)
        perturb(model, seed)
        al.save_adapter(model, out / name, name)
        al.detach(model, name)
    al.load_adapter(model, out / "lora0", "lora0")
    al.merge_and_unload(model, "lora0")
    al.save_merged(model, out / "merged", tokenizer)
    (out / "prompts.json").write_text(json.dumps(prompts(tokenizer)))
    sizes = {name: folder_bytes(out / name) for name, _, _ in made}
    return {"adapter_bytes": sizes, "loras_16_bytes": sum(sizes[f"lora{i}"] for i in range(LORAS))}


def build(mode: str, adapters: int, root: Path) -> tuple[torch.nn.Module, list[str]]:
    """The model a mode runs and the adapter names its requests draw from."""
    if mode == "merged":
        model, _ = load_model(str(root / "merged"), log=lambda _: None)
        return model.eval(), ["base"]
    model, _ = load_model("smollm2-135m", log=lambda _: None)
    names = [f"lora{i}" for i in range(adapters)]
    if mode == "peft":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                            init_lora_weights=False)
        model = get_peft_model(model, config, adapter_name=names[0])
        for name in names[1:]:
            model.add_adapter(name, config)
        return model.eval(), names
    for name in names:
        al.load_adapter(model, root / name, name)
    return model.eval(), names


class Loop:
    """C requests always outstanding on one or more ContinuousBatchers; tokens and latencies recorded by time."""

    def __init__(self, mode: str, model: torch.nn.Module, names: list[str], clients: int, eos: list[int],
                 root: Path) -> None:
        self.mode, self.model, self.names, self.clients = mode, model, names, clients
        self.rng = random.Random(1)
        self.prompts = json.loads((root / "prompts.json").read_text())
        self.eos = eos
        self.batchers: dict[str, ContinuousBatcher] = {}
        self.token_times: list[float] = []
        self.requests: list[tuple[float, float, float, int]] = []  # start, first token, end, tokens
        self.sent = 0

    def batcher(self, name: str) -> ContinuousBatcher:
        key = name if self.mode == "switch" else ""
        if key not in self.batchers:
            b = ContinuousBatcher(self.model, eos_ids=self.eos, max_rows=self.clients,
                                  per_row_adapters=self.mode in ("mixed", "peft"))
            if self.mode == "peft":  # PeftModel.forward takes them through **kwargs; pass them as to the base
                b.positions, b.last_only = True, {"logits_to_keep": 1}
            self.batchers[key] = b
        return self.batchers[key]

    def send(self) -> None:
        name = self.rng.choice(self.names)
        start = time.perf_counter()
        first: list[float] = []

        def on_token(request: Request, token: int) -> None:
            now = time.perf_counter()
            self.token_times.append(now)
            if not first:
                first.append(now)
            if request.finish is not None:
                self.requests.append((start, first[0], now, len(request.out)))
                self.send()

        request = Request(self.sent, self.prompts[self.sent % len(self.prompts)], 32, on_token=on_token,
                          adapter=None if self.mode == "merged" else name)
        self.sent += 1
        self.batcher(name).add(request)

    def run(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            for key, batcher in list(self.batchers.items()):
                if batcher.busy():
                    if self.mode == "switch":
                        al.set_active(self.model, key, trainable=False)
                    batcher.step()


def summary(loop: Loop, start: float, stop: float) -> dict:
    """Tokens/s in [start, stop] and latency/TTFT percentiles of the requests that finished in it (seconds)."""
    tokens = sum(start <= t < stop for t in loop.token_times)
    done = [r for r in loop.requests if start <= r[2] < stop]

    def pct(values: list[float], q: float) -> float | None:
        if not values:
            return None
        values = sorted(values)
        return round(values[min(len(values) - 1, int(q * len(values)))], 3)

    lat = [r[2] - r[0] for r in done]
    ttft = [r[1] - r[0] for r in done]
    return {"tokens_per_s": round(tokens / (stop - start), 1), "requests": len(done),
            "tokens_per_request": sorted({r[3] for r in done}), "latency_p50": pct(lat, 0.5),
            "latency_p99": pct(lat, 0.99), "ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99)}


def loop_main(args: argparse.Namespace) -> dict:
    model, names = build(args.mode, args.adapters, Path(args.root))
    eos = [model.config.eos_token_id] if isinstance(model.config.eos_token_id, int) else model.config.eos_token_id
    loop = Loop(args.mode, model, names, args.clients, list(eos or []), Path(args.root))
    for _ in range(args.clients):
        loop.send()
    loop.run(args.warmup)
    start = time.perf_counter()
    profile = cProfile.Profile() if args.profile else None
    if profile:
        profile.enable()
    loop.run(args.seconds)
    if profile:
        profile.disable()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(25)
        print(text.getvalue(), file=sys.stderr)
    result = summary(loop, start, time.perf_counter())
    return {"mode": args.mode, "clients": args.clients, "adapters": len(names), **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("root")
    p = sub.add_parser("loop")
    p.add_argument("--root", required=True)
    p.add_argument("--mode", choices=("merged", "mixed", "peft", "switch"), required=True)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--adapters", type=int, default=16)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--profile", action="store_true", help="cProfile the measured window (top 25 to stderr)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = prepare(Path(args.root)) if args.command == "prepare" else loop_main(args)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
