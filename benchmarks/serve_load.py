"""Load test of `adapterlab serve` (issue #22): closed-loop HTTP clients against one server, many LoRAs mixed.

SmolLM2-135M on CPU; the server (`python -m adapterlab serve`, --max-rows 32) runs with OMP_NUM_THREADS=1 and this
process runs the clients (asyncio + httpx, streaming completions on 127.0.0.1). Each client sends one request at a
time, forever: a fixed 32-token prompt (token ids, windows of the Zen of Python), 32 new tokens (max_tokens; greedy; the server has no ignore_eos,
so generated counts are reported), an adapter drawn uniformly from the T served. Adapters (serve_load_engine.py
prepare): 16 LoRAs r=16 on q,k,v,o with nonzero random B, and IA3, Pfeiffer, prompt tuning, all random.

Cells over HTTP, C = 1, 8, 32 clients each: `merged` (a model folder with lora0 merged, saved by save_merged, served
without adapters: the single-adapter ceiling), `T1`, `T4`, `T16` (LoRAs mixed in the server's batches), `methods`
(lora0, IA3, Pfeiffer, prompt mixed). PEFT cannot be put behind this server and the server has no one-adapter-per-batch
mode, so PEFT's `adapter_names` batches and adapter switching are measured in an in-process closed loop
(serve_load_engine.py loop) on the same batcher, with adapterlab's mixed batches and the merged model in the same loop
for a like-for-like comparison. Then a soak: 32 clients, T=16, for --soak seconds, counting requests sent, completed
and failed and the server's resident memory (before loading the adapters, after, during and at the end).

Each cell warms up for --warmup seconds, then measures for --seconds: tokens/s counts the tokens streamed in the
window (each chunk one token, the rest of the usage count at the last chunk); latency and time to first token are over
the requests that finished in the window; the spread is the min-max of tokens/s over the window's four quarters.

    flock /tmp/adapterlab-heavy.lock env PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/serve_load.py
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/serve_load.py --quick      # a few 5 s cells, a 10 s soak
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
LORAS = [f"lora{i}" for i in range(16)]
SETS = {"T1": LORAS[:1], "T4": LORAS[:4], "T16": LORAS, "methods": ["lora0", "ia3", "pfeiffer", "prompt"],
        "merged": ["base"]}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def pct(values: list[float], q: float) -> float | None:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3) if values else None


class Server:
    """`adapterlab serve` in a child process on a free port; its resident memory read from /proc."""

    def __init__(self, model: str, adapters: list[str], root: Path, log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "adapterlab", "serve", "--model", model, "--port", str(self.port),
                   "--max-rows", "32", "--max-queue", "64", "--log-level", "warning", "--adapter-root", str(root)]
        for name in adapters:
            command += ["--adapter", f"{name}={root / name}"]
        self.log = log
        self.process = subprocess.Popen(command, env=ENV, stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the server did not come up in 300 s")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        raise RuntimeError("no VmRSS")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def idle(self, timeout: float = 60) -> None:
        """Wait until no row decodes and none waits (cancelled requests leave at the next step)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            h = self.health()
            if h["running"] == 0 and h["waiting"] == 0:
                return
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


class Load:
    """Closed-loop clients: per request its times and token count; every token's time (for windowed tokens/s)."""

    def __init__(self, url: str, names: list[str], prompts: list[list[int]], clients: int) -> None:
        self.url, self.names, self.prompts, self.clients = url, names, prompts, clients
        self.tokens: list[float] = []
        self.done: list[tuple[float, float, float, int]] = []  # start, first token, end, completion tokens
        self.sent = self.failed = 0
        self.errors: list[str] = []

    async def request(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        body = {"model": rng.choice(self.names), "prompt": self.prompts[self.sent % len(self.prompts)],
                "max_tokens": 32, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        self.sent += 1
        start, chunks, usage, finished = time.perf_counter(), [], None, False
        try:
            async with http.stream("POST", self.url + "/v1/completions", json=body) as answer:
                if answer.status_code != 200:
                    raise RuntimeError(f"HTTP {answer.status_code}: {(await answer.aread())[:200]!r}")
                async for line in answer.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        finished = True
                        break
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise RuntimeError(event["error"]["message"])
                    if event.get("usage"):
                        usage = event["usage"]["completion_tokens"]
                    elif event["choices"][0]["text"]:
                        chunks.append(time.perf_counter())
                        self.tokens.append(chunks[-1])
            if not finished or usage is None or not chunks:
                raise RuntimeError(f"stream ended early ({len(chunks)} chunks, usage {usage})")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # counted, and the client goes on
            self.failed += 1
            self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            return
        self.tokens += [chunks[-1]] * max(0, usage - len(chunks))  # tokens that completed no text on their own
        self.done.append((start, chunks[0], time.perf_counter(), usage))

    async def client(self, http: httpx.AsyncClient, index: int, until: float) -> None:
        rng = random.Random(1000 + index)
        while time.perf_counter() < until:
            await self.request(http, rng)

    async def run(self, seconds: float, drain: bool) -> None:
        """Clients start requests for `seconds`; then those in flight finish (`drain`) or are cancelled."""
        limits = httpx.Limits(max_connections=self.clients + 4, max_keepalive_connections=self.clients + 4)
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as http:
            until = time.perf_counter() + seconds
            tasks = [asyncio.create_task(self.client(http, i, until)) for i in range(self.clients)]
            if drain:
                await asyncio.gather(*tasks)
                return
            await asyncio.sleep(max(0.0, until - time.perf_counter()))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def window(self, start: float, stop: float) -> dict:
        """Tokens/s in [start, stop), its spread over four quarters, and percentiles of the requests done in it."""
        quarter = (stop - start) / 4
        rates = [sum(start + q * quarter <= t < start + (q + 1) * quarter for t in self.tokens) / quarter
                 for q in range(4)]
        done = [r for r in self.done if start <= r[2] < stop]
        lat, ttft = [r[2] - r[0] for r in done], [r[1] - r[0] for r in done]
        return {"tokens_per_s": round(sum(start <= t < stop for t in self.tokens) / (stop - start), 1),
                "spread": [round(min(rates), 1), round(max(rates), 1)], "requests": len(done),
                "tokens_per_request": sorted({r[3] for r in done}), "latency_p50": pct(lat, 0.5),
                "latency_p99": pct(lat, 0.99), "ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99)}


def cell(server: Server, name: str, clients: int, prompts: list[list[int]], args: argparse.Namespace) -> dict:
    load = Load(server.url, SETS[name], prompts, clients)
    start = time.perf_counter() + args.warmup
    asyncio.run(load.run(args.warmup + args.seconds, drain=False))
    result = {"cell": name, "clients": clients, **load.window(start, start + args.seconds), "failed": load.failed}
    server.idle()
    print(json.dumps(result), flush=True)
    return result


def engine(root: Path, mode: str, adapters: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, str(HERE / "serve_load_engine.py"), "loop", "--root", str(root), "--mode", mode,
               "--clients", "32", "--adapters", str(adapters), "--warmup", str(args.warmup),
               "--seconds", str(args.seconds)] + (["--profile"] if args.profile and mode == "mixed" else [])
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, check=True)
    if args.profile and mode == "mixed":
        print(done.stderr[-6000:], file=sys.stderr)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def soak(root: Path, prompts: list[list[int]], seconds: float, log: Path) -> dict:
    server = Server("smollm2-135m", [], root, log)
    memory = {"started": server.rss_mb()}
    asyncio.run(Load(server.url, ["base"], prompts, 32).run(min(10.0, seconds), drain=True))  # base rows, warm
    server.idle()
    memory["base_warm"] = server.rss_mb()
    for name in LORAS:
        answer = httpx.post(server.url + "/v1/load_lora_adapter", json={"lora_name": name,
                                                                        "lora_path": str(root / name)}, timeout=120)
        answer.raise_for_status()
    memory["adapters_loaded"] = server.rss_mb()
    load, samples, begin = Load(server.url, LORAS, prompts, 32), [], time.perf_counter()

    async def watch() -> None:
        task = asyncio.create_task(load.run(seconds, drain=True))
        while not task.done():
            await asyncio.sleep(min(30.0, seconds / 4))
            samples.append([round(time.perf_counter() - begin), server.rss_mb()])
        await task

    asyncio.run(watch())
    stop = time.perf_counter()
    server.idle()
    memory["end"], memory["samples"] = server.rss_mb(), samples
    health = server.health()
    server.stop()
    return {"clients": 32, "adapters": 16, "seconds": round(stop - begin, 1), "sent": load.sent,
            "completed": len(load.done), "failed": load.failed, "errors": load.errors[:5],
            "server_cancelled": health["cancelled"], "tokens_per_s": round(len(load.tokens) / (stop - begin), 1),
            "latency_p50": pct([r[2] - r[0] for r in load.done], 0.5),
            "latency_p99": pct([r[2] - r[0] for r in load.done], 0.99),
            "tokens_per_request": sorted({r[3] for r in load.done}), "rss_mb": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per cell")
    parser.add_argument("--soak", type=float, default=600.0, help="soak seconds")
    parser.add_argument("--quick", action="store_true", help="check it works: a few 5 s cells and a 10 s soak")
    parser.add_argument("--profile", action="store_true", help="cProfile the in-process mixed T=16 loop")
    parser.add_argument("--out", default=str(HERE / "results" / "serve_load.json"))
    args = parser.parse_args()
    clients = [1, 8, 32]
    http_cells = {"merged": clients, "T1": clients, "T4": clients, "T16": clients, "methods": clients}
    engine_cells = [("merged", 1), ("mixed", 16), ("peft", 16), ("switch", 16), ("mixed", 4), ("peft", 4),
                    ("switch", 4)]
    if args.quick:
        args.warmup, args.seconds, args.soak = 2.0, 5.0, 10.0
        http_cells = {"merged": [8], "T4": [8], "methods": [8]}
        engine_cells = [("mixed", 4), ("peft", 4), ("switch", 4)]
        args.out = "/tmp/serve_load_quick.json" if args.out.endswith("serve_load.json") else args.out
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        root = Path(tmp)
        made = subprocess.run([sys.executable, str(HERE / "serve_load_engine.py"), "prepare", tmp], env=ENV,
                              capture_output=True, text=True, check=True)
        sizes = json.loads(made.stdout.strip().splitlines()[-1])
        prompts = json.loads((root / "prompts.json").read_text())
        results = []
        for model, adapters, names in ((str(root / "merged"), [], ["merged"]),
                                       ("smollm2-135m", LORAS + ["ia3", "pfeiffer", "prompt"],
                                        [n for n in http_cells if n != "merged"])):
            if not any(n in http_cells for n in names):
                continue
            server = Server(model, adapters, root, root / "server.log")
            try:
                results += [cell(server, n, c, prompts, args) for n in names if n in http_cells for c in http_cells[n]]
            finally:
                server.stop()
        inproc = [engine(root, mode, t, args) for mode, t in engine_cells]
        soaked = soak(root, prompts, args.soak, root / "soak.log")
        print(json.dumps({"soak": soaked}), flush=True)
    http = {(r["cell"], r["clients"]): r["tokens_per_s"] for r in results}
    loop = {(r["mode"], r["adapters"]): r["tokens_per_s"] for r in inproc}
    goals = {}
    if ("T16", 32) in http and ("merged", 32) in http:
        goals["http_T16_vs_merged_32_clients"] = round(http["T16", 32] / http["merged", 32], 3)
        goals["soak_T16_vs_merged_32_clients"] = round(soaked["tokens_per_s"] / http["merged", 32], 3)
    for t in (4, 16):
        if ("mixed", t) in loop and ("peft", t) in loop:
            goals[f"inproc_T{t}_vs_peft"] = round(loop["mixed", t] / loop["peft", t], 3)
            goals[f"inproc_T{t}_vs_switch"] = round(loop["mixed", t] / loop["switch", t], 3)
        if ("mixed", t) in loop and ("merged", 1) in loop:
            goals[f"inproc_T{t}_vs_merged"] = round(loop["mixed", t] / loop["merged", 1], 3)
    summary = {"machine": f"{platform.machine()} {os.cpu_count()} shared cores, {platform.python_version()}",
               "date": time.strftime("%Y-%m-%d"), "server_threads": 1, "max_rows": 32, "prompt_tokens": 32,
               "max_tokens": 32, "warmup_s": args.warmup, "seconds_per_cell": args.seconds,
               "wall_s": round(time.time() - began), "adapter_bytes": sizes, "http": results, "inproc": inproc,
               "soak": soaked, "goals": goals}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
