"""What the `adapterlab serve` tests share: a tiny Llama with a byte tokenizer saved as a model folder, adapters of
several methods saved beside it (one inside a training run folder that recorded the alpaca template), the
library's own greedy tokens as the reference, and a real server in a subprocess on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
import transformers as T
from test_eval import byte_tokenizer

import adapterlab as al
from adapterlab.models import load_model

CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")
ADAPTERS = {"lora": ("lora", {"r": 4}), "ia3": ("ia3", {}), "prompt": ("prompt", {"num_virtual_tokens": 3}),
            "prefix": ("prefix", {"num_virtual_tokens": 2})}
SRC = str(Path(__file__).resolve().parents[1] / "src")


def save_model(folder: Path, *, context: int = 128, eos: bool = True, width: int = 32, layers: int = 2) -> Path:
    """A tiny random Llama and the byte tokenizer (with a chat template) saved in `folder`; `eos` False: no EOS."""
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = T.LlamaConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
                           max_position_embeddings=context, eos_token_id=0 if eos else None, pad_token_id=1)
    model = T.LlamaForCausalLM(config).eval()
    if not eos:
        model.generation_config.eos_token_id = None
        tokenizer.eos_token = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_adapters(model_dir: Path, root: Path) -> dict[str, Path]:
    """Each method of ADAPTERS with random weights, saved under `root`; `run`: a LoRA in a run folder (alpaca)."""
    paths = {}
    for seed, (name, (method, options)) in enumerate(ADAPTERS.items()):
        model, _ = load_model(str(model_dir), log=lambda _: None)
        al.attach(model, method, **options)
        torch.manual_seed(10 + seed)
        for p in model.parameters():
            if p.requires_grad:
                p.data.normal_(0, 0.5)
        paths[name] = al.save_adapter(model, root / name)
    run = root / "run"
    al.save_adapter(load_adapted(model_dir, paths["lora"]), run)
    (run / "train_config.yaml").write_text(f"model: {model_dir}\ntemplate: alpaca\nadapter: lora\n")
    paths["run"] = run
    return paths


def load_adapted(model_dir: Path, adapter: Path | None):
    model, _ = load_model(str(model_dir), log=lambda _: None)
    if adapter is not None:
        al.load_adapter(model, adapter)
    return model


def reference_tokens(model, ids: list[int], new: int) -> list[int]:
    """The library's greedy tokens: generate() on the prompt alone (stopping at the model's EOS, if any)."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=new, do_sample=False, pad_token_id=1)
    return out[0, len(ids):].tolist()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`adapterlab serve ARGS` in a subprocess on a free port, up once /health answers."""

    def __init__(self, *args: str, timeout: float = 120.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "adapterlab", "serve", *args, "--port", str(self.port),
                                         "--log-level", "warning"], env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stdout.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the server did not come up")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def wait_for(self, condition, what: str, timeout: float = 60.0) -> dict:
        """Poll /health until `condition(health)` holds (a failure after `timeout` names `what`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.health()
            if condition(health):
                return health
            time.sleep(0.05)
        raise AssertionError(f"the server never reached: {what} (last /health: {self.health()})")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
