"""Quantized bases (bitsandbytes 8-bit and 4-bit QLoRA): loading, adapters on bnb layers, training, save/load
onto a float32 base, merge refusal, eval, and one-line errors where bitsandbytes is missing or cannot run."""

from __future__ import annotations

import importlib
import importlib.metadata
import json

import pytest
import torch
import yaml
from torch import nn

from adapterlab import attach, load_adapter, merge
from adapterlab.cli import main
from adapterlab.core.engine import placed
from adapterlab.errors import ModelError, NotMergeableError, UsageError
from adapterlab.models import load_model
from adapterlab.models import quantize as quantize_module
from adapterlab.train import TrainConfig, recipe
from train_helpers import causal_folder, math_records, write_json

bnb = pytest.importorskip("bitsandbytes")

MODES = ("8bit", "4bit")
LAYERS = {"8bit": "Linear8bitLt", "4bit": "Linear4bit"}
# Largest logit difference from the float32 model that quantization may cause on the tiny Llama (measured:
# about 6e-3 in 8 bits, 8e-2 in 4 bits).
TOLERANCE = {"8bit": 0.05, "4bit": 0.4}
pytestmark = pytest.mark.filterwarnings("ignore:MatMul8bitLt", "ignore::UserWarning:bitsandbytes")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny Llama, 64 wide: rows of whole 4-bit quantization blocks (64 values), as real models have."""
    return causal_folder(tmp_path_factory.mktemp("qllama") / "llama", hidden_size=64)


def quiet(_: str) -> None:
    pass


def batch() -> torch.Tensor:
    return torch.randint(4, 250, (2, 10), generator=torch.Generator().manual_seed(0))


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("mode", MODES)
def test_quantized_base_has_bnb_layers_and_lora_attaches_in_float32(llama, mode, single_thread):
    """load_model(quantize=...) gives bitsandbytes linear layers (head dense) close to the float32 model."""
    model, _ = load_model(str(llama), quantize=mode, log=quiet)
    dense, _ = load_model(str(llama), dtype="float32", log=quiet)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == LAYERS[mode] and not q_proj.weight.is_floating_point()
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight.dtype == torch.float32
    gap = (logits(model, batch()) - logits(dense, batch())).abs().max()
    assert 0 < gap < TOLERANCE[mode]
    attach(model, "lora", r=4)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapterlab." in n and p.dtype == torch.float32 for n, p in trainable.items())
    assert (logits(model, batch()) - logits(dense, batch())).abs().max() == gap  # B = 0: outputs unchanged


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["lora", "ia3", "series", "parallel", "bitfit"])
def test_steps_on_a_quantized_base_change_only_the_adapter_and_lower_the_loss(llama, mode, method, single_thread):
    """A few AdamW steps through the bnb layers train the float32 adapter; every base tensor stays as loaded."""
    model, _ = load_model(str(llama), quantize=mode, log=quiet)
    attach(model, method)
    model.train()
    base = {k: v.clone() for k, v in model.state_dict().items() if ".adapterlab." not in k}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = batch()
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())
    assert all(p.dtype == torch.float32 for _, _, a in placed(model) for p in a.parameters())


@pytest.mark.parametrize("hidden", [32, 64])
def test_a_no_grad_evaluation_between_steps_leaves_4bit_layers_trainable(tmp_path, hidden, single_thread):
    """A dev evaluation (eval mode, no grad) mid-run, then a step through biased 4-bit layers, also narrower than a
    64-value block: bitsandbytes' CPU repacking, which broke both, stays off."""
    folder = causal_folder(tmp_path / "llama", hidden_size=hidden, attention_bias=True, mlp_bias=True)
    model, _ = load_model(str(folder), quantize="4bit", log=quiet)
    attach(model, "lora")
    ids = batch()
    model.eval()
    before = logits(model, ids)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    model.eval()
    assert torch.equal(logits(model, ids), before)


@pytest.mark.parametrize("mode", MODES)
def test_merging_into_a_quantized_base_is_refused_and_changes_nothing(llama, mode, single_thread):
    """merge() of LoRA or IA3 on a bnb layer raises NotMergeableError naming the fix; the outputs stay the same."""
    for method in ("lora", "ia3"):
        model, _ = load_model(str(llama), quantize=mode, log=quiet)
        attach(model, method)
        for _, _, adapter in placed(model):  # a non-trivial adapter, so a half-done merge would show
            for p in adapter.parameters():
                nn.init.normal_(p, std=0.1 if method == "lora" else 1.0)
        before = logits(model, batch())
        with pytest.raises(NotMergeableError, match=f"{LAYERS[mode]} stores its weight quantized.*unmerged"):
            merge(model)
        assert not any(a.merged for _, _, a in placed(model))
        assert torch.equal(logits(model, batch()), before)


@pytest.mark.parametrize("mode", MODES)
def test_cli_trains_on_a_quantized_base_and_the_adapter_loads_onto_float32_and_evaluates(
        llama, mode, tmp_path, capsys, single_thread):
    """`adapterlab train --load_8bit` / `--load-in-4bit` trains; the adapter round-trips onto a float32 base and
    `adapterlab eval --load-...` records the quantization."""
    data = write_json(tmp_path / "math.json", math_records(16))
    run = tmp_path / "run"
    # LLM-Adapters' spelling (which alone would select their recipe's defaults: --recipe keeps adapterlab's), and
    # the transformers one
    flag = {"8bit": ["--load_8bit", "--recipe", "adapterlab"], "4bit": ["--load-in-4bit"]}[mode]
    assert main(["train", "--model", str(llama), "--data", str(data), "--output", str(run), *flag,
                 "--max-steps", "6", "--batch-size", "4", "--micro-batch-size", "4", "--lr", "1e-2",
                 "--warmup-steps", "0", "--logging-steps", "1"]) == 0
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) >= 5 and losses[-1] < losses[0]
    assert yaml.safe_load((run / "train_config.yaml").read_text())[f"load_{mode}"] is True  # --resume compares it

    quantized, _ = load_model(str(llama), quantize=mode, log=quiet)
    dense, _ = load_model(str(llama), dtype="float32", log=quiet)
    base_gap = (logits(quantized, batch()) - logits(dense, batch())).abs().max()
    load_adapter(quantized, run)
    load_adapter(dense, run)
    assert (logits(quantized, batch()) - logits(dense, batch())).abs().max() < base_gap + TOLERANCE[mode]
    merge(dense)  # the adapter trained on the quantized base merges into the float32 one

    questions = write_json(tmp_path / "numbers.json", [{"instruction": "tom had 2 apples", "answer": "2"}] * 2)
    capsys.readouterr()
    assert main(["eval", "--model", str(llama), "--adapter-path", str(run), "--datasets", str(questions),
                 "--output", str(tmp_path / "eval"), "--max-new-tokens", "3", "--no-progress",
                 f"--load-{mode}"]) == 0
    recorded = json.loads((tmp_path / "eval" / "summary.json").read_text())["fingerprint"]
    assert recorded["quantization"].startswith(f"bitsandbytes {mode}")


def test_kbit_training_keeps_norms_in_float32_and_the_rest_in_the_given_dtype(llama, single_thread):
    """--dtype bfloat16 --load-4bit: norms are cast to float32 for training (as PEFT's recipe), embeddings not."""
    config = TrainConfig(model=str(llama), data=["d.json"], output="o", dtype="bfloat16", load_4bit=True)
    model, _ = load_model(str(llama), quantize="4bit", dtype="bfloat16", log=quiet)
    assert model.model.norm.weight.dtype == torch.bfloat16
    recipe.make_trainable(model, config, [])
    assert model.model.norm.weight.dtype == torch.float32
    assert model.model.layers[0].input_layernorm.weight.dtype == torch.float32
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("extra, words", [
    (["--load-8bit", "--load-4bit"], "pass one"),
    (["--load-4bit", "--adapter", "full"], "--adapter full"),
])
def test_conflicting_quantization_settings_are_refused_by_name(llama, tmp_path, capsys, extra, words):
    """Two quantizations, or full fine-tuning of a quantized base, are refused in one line before any output."""
    data = write_json(tmp_path / "math.json", math_records(4))
    assert main(["train", "--model", str(llama), "--data", str(data), "--output", str(tmp_path / "run"), *extra]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and words in error[0] and "--load-4bit" in error[0]
    assert not (tmp_path / "run").exists()


def without_bitsandbytes(monkeypatch) -> None:
    """Make bitsandbytes look not installed."""
    real = importlib.metadata.version

    def version(name: str) -> str:
        if name == "bitsandbytes":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(quantize_module.importlib.metadata, "version", version)


def broken_bitsandbytes(monkeypatch) -> None:
    """Make bitsandbytes installed but unable to load (as a wheel without a build for this machine)."""
    real = importlib.import_module

    def import_module(name: str, *args):
        if name == "bitsandbytes":
            raise OSError("libbitsandbytes_cuda121.so: cannot open shared object file\nmore detail")
        return real(name, *args)

    monkeypatch.setattr(quantize_module.importlib, "import_module", import_module)


@pytest.mark.reliability
@pytest.mark.parametrize("command", ["train", "eval"])
def test_quantizing_without_bitsandbytes_is_one_line_naming_the_install(llama, tmp_path, capsys, monkeypatch, command):
    """--load-4bit without bitsandbytes installed -> one-line error saying pip install bitsandbytes, no output"""
    without_bitsandbytes(monkeypatch)
    data = write_json(tmp_path / "math.json", math_records(4))
    argv = (["train", "--data", str(data)] if command == "train" else ["eval", "--datasets", str(data)])
    assert main([*argv, "--model", str(llama), "--output", str(tmp_path / "out"), "--load-4bit"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "pip install bitsandbytes" in error[0] and "--load-4bit" in error[0], error
    assert not (tmp_path / "out").exists()
    with pytest.raises(ModelError, match="quantize='8bit'.*pip install bitsandbytes"):
        load_model(str(llama), quantize="8bit", log=quiet)


@pytest.mark.reliability
def test_bitsandbytes_that_cannot_load_is_one_line_naming_a_cuda_device(llama, tmp_path, capsys, monkeypatch):
    """bitsandbytes installed but unable to load here -> one-line error naming its reason and a CUDA device"""
    broken_bitsandbytes(monkeypatch)
    data = write_json(tmp_path / "math.json", math_records(4))
    assert main(["train", "--model", str(llama), "--data", str(data), "--output", str(tmp_path / "run"),
                 "--load_8bit"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "cannot open shared object" in error[0] and "CUDA device" in error[0], error


def test_quantize_refuses_an_unknown_mode_and_a_second_quantization_config(llama):
    """quantize='3bit' names the modes; quantize with an explicit quantization_config is refused as ambiguous."""
    with pytest.raises(UsageError, match="8bit, 4bit"):
        load_model(str(llama), quantize="3bit", log=quiet)
    with pytest.raises(UsageError, match="quantization_config=... both"):
        load_model(str(llama), quantize="4bit", quantization_config=object(), log=quiet)


@pytest.mark.slow
def test_smollm2_gguf_is_dequantised_then_quantized_to_4_bits():
    """The default small model is a GGUF: --load-4bit dequantises it into a temporary folder and loads that in NF4."""
    model, tokenizer = load_model("smollm2-135m", quantize="4bit", log=quiet)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert model.config._name_or_path == "smollm2-135m"
    attach(model, "lora")
    ids = tokenizer("What is 2+3?", return_tensors="pt").input_ids
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)
