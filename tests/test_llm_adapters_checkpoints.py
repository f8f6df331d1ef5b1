"""Checkpoints of LLM-Adapters' fork of PEFT (adapter_model.bin + adapter_config.json) load with their outputs.

The folders are built by hand with their key names and config fields; the references compute their formulas
directly (LoRA: W x + (alpha / r) B A x; bottleneck: mh_adapter feeds x + s up(act(down(x))) to the layer,
output_adapter adds s up(act(down(y))) to its output y, parallel adds s up(act(down(x))) to it; prefix: their
view/permute of the saved prompt_embeddings into per-layer keys and values)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import transformers as T
from torch import nn
from transformers.activations import ACT2FN

import adapterlab as al
from adapterlab.cli import main
from adapterlab.errors import CorruptFileError
from train_helpers import causal_folder

PREFIX = "base_model.model."


def tiny_llama(kv_heads: int = 2) -> T.LlamaForCausalLM:
    torch.manual_seed(0)
    config = T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=kv_heads, vocab_size=50)
    return T.LlamaForCausalLM(config).eval()


def write_fork(folder: Path, config: dict, state: dict[str, torch.Tensor]) -> Path:
    """A folder as their PeftModel.save_pretrained writes it: torch.save'd adapter_model.bin + the config."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "adapter_model.bin")
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "yahma/llama-7b-hf",
                                                            "inference_mode": True, "task_type": "CAUSAL_LM",
                                                            **config}, indent=2, sort_keys=True))
    return folder


INPUT = torch.tensor([[3, 7, 1, 9, 4, 2], [5, 5, 8, 1, 0, 6]])


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT).logits


def lora_folder(model: nn.Module, folder: Path) -> tuple[Path, dict]:
    """Their LoRA (r 4, alpha 16, q/v) with random A and B; returns the folder and the tensors."""
    gen = torch.Generator().manual_seed(3)
    state = {}
    for i in range(model.config.num_hidden_layers):
        for name in ("q_proj", "v_proj"):
            layer = model.get_submodule(f"model.layers.{i}.self_attn.{name}")
            key = f"{PREFIX}model.layers.{i}.self_attn.{name}"
            state[f"{key}.lora_A.weight"] = torch.randn(4, layer.in_features, generator=gen) * 0.3
            state[f"{key}.lora_B.weight"] = torch.randn(layer.out_features, 4, generator=gen) * 0.3
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 16, "lora_dropout": 0.05, "bias": "none",
              "target_modules": ["q_proj", "v_proj"], "merge_weights": False, "fan_in_fan_out": False,
              "enable_lora": None, "modules_to_save": None}
    return write_fork(folder, config, state), state


def test_their_lora_bin_gives_w_x_plus_alpha_over_r_b_a_x(tmp_path):
    base = tiny_llama()
    folder, state = lora_folder(base, tmp_path / "lora")
    reference = tiny_llama()
    with torch.no_grad():
        for key in [k for k in state if k.endswith("lora_A.weight")]:
            layer = reference.get_submodule(key.removeprefix(PREFIX).removesuffix(".lora_A.weight"))
            layer.weight += (16 / 4) * state[key.replace("lora_A", "lora_B")] @ state[key]
    loaded = al.load_peft(base, folder)
    assert torch.allclose(logits(loaded), logits(reference), atol=1e-5)
    assert not torch.allclose(logits(tiny_llama()), logits(reference), atol=1e-3)  # the adapter matters


class TheirBottleneck(nn.Module):
    """Their bottleneck Linear's forward, written from their formulas (test reference)."""

    def __init__(self, base: nn.Linear, kind: str, down: torch.Tensor, up: torch.Tensor, act: str, s: float):
        super().__init__()
        self.base, self.kind, self.down, self.up, self.act, self.s = base, kind, down, up, ACT2FN[act], s

    def f(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(h @ self.down.T) @ self.up.T * self.s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "mh_adapter":
            return self.base(x + self.f(x))
        if self.kind == "output_adapter":
            y = self.base(x)
            return y + self.f(y)
        return self.base(x) + self.f(x)  # parallel_adapter


BOTTLENECKS = {
    # their AdapterH command: --target_modules '["up_proj", "gate_proj", "down_proj"]'
    "adapterh": ({}, {"gate_proj": "mh_adapter", "up_proj": "mh_adapter", "down_proj": "output_adapter"}, "series"),
    "adapterp": ({"use_adapterp": True}, {"down_proj": "output_adapter"}, "pfeiffer"),
    "parallel": ({"use_parallel_adapter": True},
                 {"q_proj": "parallel_adapter", "v_proj": "parallel_adapter", "up_proj": "parallel_adapter"}, "parallel"),
}


@pytest.mark.parametrize("case", sorted(BOTTLENECKS))
def test_their_bottleneck_bin_loads_with_their_outputs(case, tmp_path):
    flags, kinds, method = BOTTLENECKS[case]
    base, reference = tiny_llama(), tiny_llama()
    gen = torch.Generator().manual_seed(4)
    state = {}
    for path, layer in list(reference.named_modules()):
        name = path.rsplit(".", 1)[-1]
        if name not in kinds:
            continue
        kind = kinds[name]
        width_in = layer.out_features if kind == "output_adapter" else layer.in_features
        width_out = layer.in_features if kind == "mh_adapter" else layer.out_features
        down = torch.randn(8, width_in, generator=gen) * 0.2
        up = torch.randn(width_out, 8, generator=gen) * 0.2
        state[f"{PREFIX}{path}.adapter_down.weight"], state[f"{PREFIX}{path}.adapter_up.weight"] = down, up
        parent, _, child = path.rpartition(".")
        setattr(reference.get_submodule(parent), child, TheirBottleneck(layer, kind, down, up, "relu", 0.5))
    config = {"peft_type": "BOTTLENECK", "bottleneck_size": 8, "non_linearity": "relu", "adapter_dropout": 0.0,
              "target_modules": list(kinds), "use_parallel_adapter": False, "use_adapterp": False, "scaling": 0.5,
              "bias": "none", "init_weights": "bert", "modules_to_save": None, **flags}
    folder = write_fork(tmp_path / case, config, state)
    loaded = al.load_peft(base, folder)
    assert al.get_config(loaded).method == method
    assert torch.allclose(logits(loaded), logits(reference), atol=1e-5)
    assert not torch.allclose(logits(tiny_llama()), logits(reference), atol=1e-3)


def test_their_learned_scaling_is_read_from_adapter_scaling(tmp_path):
    base = tiny_llama()
    state = {}
    for i in range(2):
        key = f"{PREFIX}model.layers.{i}.mlp.down_proj"
        state[f"{key}.adapter_down.weight"] = torch.full((4, 32), 0.05)
        state[f"{key}.adapter_up.weight"] = torch.full((32, 4), 0.05)
        state[f"{key}.adapter_scaling"] = torch.tensor([2.5])
    folder = write_fork(tmp_path / "learned", {"peft_type": "BOTTLENECK", "bottleneck_size": 4, "scaling": "learned",
                                               "target_modules": ["down_proj"], "non_linearity": "tanh"}, state)
    loaded = al.load_peft(base, folder)
    scalings = [p for n, p in loaded.named_parameters() if n.endswith("scaling")]
    assert len(scalings) == 2 and all(float(p) == 2.5 for p in scalings)


def test_their_prefix_bin_gives_the_cache_their_get_prompt_builds(tmp_path):
    base, reference = tiny_llama(kv_heads=4), tiny_llama(kv_heads=4)
    n, layers, heads, dim = 3, 2, 4, 32
    torch.manual_seed(5)
    prompt_embeddings = torch.randn(n, layers * 2 * dim)
    folder = write_fork(tmp_path / "prefix", {
        "peft_type": "PREFIX_TUNING", "num_virtual_tokens": n, "token_dim": dim, "num_transformer_submodules": 1,
        "num_attention_heads": heads, "num_layers": layers, "encoder_hidden_size": dim, "prefix_projection": False,
    }, {"prompt_embeddings": prompt_embeddings})
    batch = INPUT.shape[0]
    kv = prompt_embeddings.repeat(batch, 1, 1).view(batch, n, layers * 2, heads, dim // heads)
    kv = kv.permute([2, 0, 3, 1, 4]).split(2)  # per layer: (2, batch, heads, n, head_dim), as their get_prompt
    cache = T.DynamicCache()
    for i, pair in enumerate(kv):
        cache.update(pair[0], pair[1], i)
    mask = torch.ones(batch, n + INPUT.shape[1], dtype=torch.long)
    with torch.no_grad():
        expected = reference(input_ids=INPUT, attention_mask=mask, past_key_values=cache).logits
    loaded = al.load_peft(base, folder)
    assert torch.allclose(logits(loaded), expected, atol=1e-5)


class Payload:
    """Not a tensor: weights_only loading refuses it."""


@pytest.mark.reliability
def test_bin_that_needs_more_than_weights_is_refused(tmp_path):
    """adapter_model.bin that unpickles a non-tensor object -> one-line error naming the file, nothing run"""
    folder, state = lora_folder(tiny_llama(), tmp_path / "evil")
    torch.save({**state, "extra": Payload()}, folder / "adapter_model.bin")
    with pytest.raises(CorruptFileError) as err:
        al.load_peft(tiny_llama(), folder)
    message = str(err.value)
    assert "\n" not in message and str(folder / "adapter_model.bin") in message and "weights_only" in message


@pytest.mark.reliability
def test_truncated_bin_is_refused(tmp_path):
    """truncated adapter_model.bin -> one-line error naming the file"""
    folder, _ = lora_folder(tiny_llama(), tmp_path / "torn")
    data = (folder / "adapter_model.bin").read_bytes()
    (folder / "adapter_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="adapter_model.bin is not a complete") as err:
        al.load_peft(tiny_llama(), folder)
    assert "\n" not in str(err.value)


class Hostile:
    """A pickle that would run a command when unpickled (what a malicious checkpoint holds)."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.reliability
def test_hostile_bin_is_refused_as_holding_objects(tmp_path, monkeypatch):
    """adapter_model.bin whose pickle calls os.system (__reduce__) -> one line: it holds objects other than tensors,
    which adapterlab never unpickles; nothing runs"""
    monkeypatch.chdir(tmp_path)
    folder, state = lora_folder(tiny_llama(), tmp_path / "hostile")
    torch.save({**state, "payload": Hostile()}, folder / "adapter_model.bin")
    with pytest.raises(CorruptFileError) as err:
        al.load_peft(tiny_llama(), folder)
    message = str(err.value)
    assert "\n" not in message and str(folder / "adapter_model.bin") in message
    assert "objects other than tensors" in message and "never unpickles" in message
    assert "not a complete" not in message and not (tmp_path / "PWNED").exists()


@pytest.mark.reliability
def test_bin_that_is_a_text_file_is_refused(tmp_path):
    """adapter_model.bin that is a symlink to a text file (no pickle at all) -> one line: not a PyTorch weight file"""
    folder, _ = lora_folder(tiny_llama(), tmp_path / "text")
    text = tmp_path / "notes.txt"
    text.write_text("hello, these are notes\nnot weights at all\n")
    (folder / "adapter_model.bin").unlink()
    (folder / "adapter_model.bin").symlink_to(text)
    with pytest.raises(CorruptFileError, match="adapter_model.bin is not a PyTorch weight file") as err:
        al.load_peft(tiny_llama(), folder)
    assert "\n" not in str(err.value) and "save the adapter again" in str(err.value)


@pytest.mark.reliability
def test_bin_with_a_damaged_pickle_is_refused(tmp_path):
    """adapter_model.bin with pickle bytes cut after the opening -> one line: not a complete PyTorch weight file"""
    folder, _ = lora_folder(tiny_llama(), tmp_path / "cut")
    (folder / "adapter_model.bin").write_bytes(b"\x80\x02}q\x00(X")
    with pytest.raises(CorruptFileError, match="adapter_model.bin is not a complete PyTorch weight file") as err:
        al.load_peft(tiny_llama(), folder)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["llm-adapters-bin", "peft-safetensors"])
def test_eval_adapter_path_runs_peft_checkpoints(kind, tmp_path, capsys):
    base = causal_folder(tmp_path / "base")
    model = T.AutoModelForCausalLM.from_pretrained(base)
    folder = tmp_path / "trained_models" / "llama-lora"
    if kind == "llm-adapters-bin":
        lora_folder(model, folder)
    else:
        al.attach(model, "lora", r=2)
        al.export_peft(model, folder)
    data = tmp_path / "numbers.json"
    data.write_text(json.dumps([{"instruction": f"{i} + 1?", "input": "", "output": str(i + 1),
                                 "answer": str(i + 1)} for i in range(4)]))
    code = main(["eval", "--model", str(base), "--adapter-path", str(folder), "--datasets", str(data),
                 "--limit", "2", "--max-new-tokens", "3", "--no-progress", "--output", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["datasets"]["numbers"]["n"] == 2 and summary["metadata"]["adapter"] == str(folder)


# --- their evaluate.py / commonsense_evaluate.py command lines ----------------------------------------------

# Their README's evaluate.py command and a commonsense_evaluate.py one, `python X.py` replaced by `adapterlab eval`.
THEIR_EVAL = ["--model", "LLaMA-7B", "--adapter", "LoRA", "--dataset", "SVAMP", "--base_model", "yahma/llama-7b-hf",
              "--lora_weights", "./trained_models/llama-lora"]
THEIR_COMMONSENSE = ["--model", "LLaMA-13B", "--adapter", "AdapterH", "--dataset", "ARC-Challenge", "--base_model",
                     "yahma/llama-13b-hf", "--batch_size", "8", "--lora_weights", "./trained_models/llama-adapterh",
                     "--load_8bit"]


def their_args(argv: list[str]):
    from adapterlab.cli import build_parser
    from adapterlab.interop.llm_adapters.evaluate import read_their_flags

    args = build_parser().parse_args(["eval", *argv])
    return args, read_their_flags(args)


def test_their_evaluate_command_parses_into_adapterlab_settings():
    args, notes = their_args(THEIR_EVAL)
    assert (args.model, args.adapter_path, args.datasets) == ("yahma/llama-7b-hf", "./trained_models/llama-lora", "SVAMP")
    assert (args.model_label, args.their_adapter) == ("LLaMA-7B", "LoRA")
    assert (args.num_beams, args.template, args.mode) == (4, "llm-adapters", "llm-adapters")  # their settings
    assert len(notes) == 3 and "num_beams 4" in notes[0] and "LLaMA-7B" in notes[1] and "lora" in notes[2]


def test_their_commonsense_command_parses_and_keeps_given_settings():
    args, _ = their_args([*THEIR_COMMONSENSE, "--num-beams", "1"])
    assert (args.model, args.batch_size, args.quantize, args.datasets) == ("yahma/llama-13b-hf", 8, "8bit", "ARC-Challenge")
    assert args.num_beams == 1 and args.their_adapter == "AdapterH"


def test_adapterlab_command_keeps_adapterlab_defaults():
    args, notes = their_args(["--model", "smollm2-135m", "--datasets", "gsm8k"])
    assert notes == [] and args.num_beams is None and args.model_label is None


@pytest.mark.parametrize("argv, named", [
    (["--model", "LLaMA-7B", "--dataset", "gsm8k"], "--base_model"),
    (["--model", "gpt2", "--base_model", "x", "--dataset", "gsm8k"], "both name the base model"),
    (["--base_model", "x", "--adapter", "LoRA", "--dataset", "gsm8k"], "--adapter LoRA labels"),
])
def test_their_flags_that_cannot_fit_are_refused_by_name(argv, named, capsys):
    assert main(["eval", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1


def test_their_command_runs_on_their_checkpoint_and_checks_the_labels(tmp_path, capsys):
    base = causal_folder(tmp_path / "base")
    folder, _ = lora_folder(T.AutoModelForCausalLM.from_pretrained(base), tmp_path / "llama-lora")
    data = tmp_path / "numbers.json"
    data.write_text(json.dumps([{"instruction": f"{i} + 1?", "input": "", "output": "", "answer": str(i + 1)}
                                for i in range(3)]))
    common = ["eval", "--base_model", str(base), "--lora_weights", str(folder), "--dataset", str(data),
              "--limit", "2", "--max-new-tokens", "3", "--no-progress"]
    assert main([*common, "--model", "LLaMA-7B", "--adapter", "LoRA"]) == 0
    assert "LLM-Adapters' evaluate.py command" in capsys.readouterr().out
    assert main([*common, "--adapter", "AdapterP"]) == 2
    assert "holds a lora adapter" in capsys.readouterr().err
    assert main([*common, "--model", "BLOOM-7B"]) == 2
    assert "is a llama model" in capsys.readouterr().err


def test_mathqa_name_resolves_and_names_its_missing_file(tmp_path, capsys):
    from adapterlab.evaluate.datasets import canonical_name

    assert canonical_name("mathqa") == canonical_name("MathQA") == "mathqa"
    assert main(["eval", "--model", "x", "--dataset", "mathqa", "--data-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "mathqa.json" in err and "--data-dir" in err
