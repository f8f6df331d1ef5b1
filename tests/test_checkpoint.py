"""Saved adapters: what the files hold, atomic writes, and refusing to load into the wrong model."""

from __future__ import annotations

import json
import os

import pytest
import torch
import transformers as T
from safetensors.torch import load_file
from tiny_models import output_of, randomize_adapters, tiny_config, tiny_inputs, tiny_model

import adapterlab as al
import adapterlab.files as files
from adapterlab.core.engine import placed
from adapterlab.errors import CorruptFileError

pytestmark = pytest.mark.usefixtures("single_thread")


def saved_lora(tmp_path, family: str = "llama", **options) -> torch.nn.Module:
    model = tiny_model(family)
    al.attach(model, "lora", **{"targets": ["q", "v"], "r": 4, **options})
    randomize_adapters(model)
    al.save_adapter(model, tmp_path)
    return model


def test_files_hold_the_config_base_model_and_only_adapter_weights(tmp_path):
    model = saved_lora(tmp_path, alpha=8.0)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["method"] == "lora" and config["r"] == 4 and config["alpha"] == 8.0
    assert config["targets"] == ["q", "v"]
    assert config["base_model"]["model_type"] == "llama" and config["base_model"]["hidden_size"] == 32
    weights = load_file(tmp_path / "adapter.safetensors")
    assert sorted(weights) == sorted(
        f"model.layers.{i}.self_attn.{p}.{m}.weight" for i in (0, 1) for p in ("q_proj", "v_proj")
        for m in ("lora_A", "lora_B"))
    assert sum(t.numel() for t in weights.values()) == al.count_parameters(model)[0]


def test_load_under_another_name_and_for_training(tmp_path):
    model = saved_lora(tmp_path)
    x = tiny_inputs("llama")
    fresh = tiny_model("llama")
    al.attach(fresh, "lora", "other", targets=["o"])
    al.load_adapter(fresh, tmp_path, "math", trainable=True)
    assert al.adapter_names(fresh) == ["other", "math"] and al.active_adapters(fresh) == ["math"]
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == {
        n.replace(".default.", ".math.") for n, p in model.named_parameters() if p.requires_grad}
    torch.testing.assert_close(output_of(fresh, x), output_of(model, x))
    with pytest.raises(al.AdapterError, match="already attached"):
        al.load_adapter(fresh, tmp_path, "math")


def test_saving_again_replaces_the_files_atomically(tmp_path, monkeypatch):
    model = saved_lora(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    randomize_adapters(model, seed=9)
    monkeypatch.setattr(files, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        al.save_adapter(model, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old adapter intact, no temp files
    monkeypatch.undo()
    al.save_adapter(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.safetensors", "adapter_config.json"]
    assert (tmp_path / "adapter.safetensors").read_bytes() != before["adapter.safetensors"]


def test_adapter_from_another_architecture_is_refused(tmp_path):
    saved_lora(tmp_path, "llama")
    mistral = tiny_model("mistral")
    with pytest.raises(al.IncompatibleAdapterError, match="made for a llama model with model_type=llama.*mistral"):
        al.load_adapter(mistral, tmp_path)
    assert al.adapter_names(mistral) == [] and not list(placed(mistral))


def test_adapter_from_another_size_is_refused(tmp_path):
    saved_lora(tmp_path, "llama")
    config = tiny_config("llama")
    config.hidden_size = 64
    with pytest.raises(al.IncompatibleAdapterError, match="hidden_size=32.*hidden_size=64"):
        al.load_adapter(T.LlamaForCausalLM(config), tmp_path)


def test_mismatched_shapes_are_refused_and_leave_nothing_behind(tmp_path):
    saved_lora(tmp_path, "llama", targets=["up"])
    config = tiny_config("llama")
    config.intermediate_size = 48  # same hidden size and depth, other MLP width
    model = T.LlamaForCausalLM(config)
    with pytest.raises(al.IncompatibleAdapterError, match=r"shape \(64, 4\).*needs \(48, 4\).*another size"):
        al.load_adapter(model, tmp_path)
    assert al.adapter_names(model) == [] and not list(placed(model))


def test_other_targets_are_refused(tmp_path):
    saved_lora(tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(path.read_text().replace('"v"', '"k"'))
    with pytest.raises(al.IncompatibleAdapterError, match="4 missing entries.*k_proj.*4 unexpected.*v_proj"):
        al.load_adapter(tiny_model("llama"), tmp_path)


def test_bad_folders_are_clear_errors(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)  # no network in tests
    model = tiny_model("llama")
    with pytest.raises(al.AdapterError, match="has no adapter_config.json"):
        al.load_adapter(model, tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(al.AdapterError, match="is a file; pass the folder"):
        al.load_adapter(model, tmp_path / "file.txt")
    with pytest.raises(al.AdapterError, match="No adapter folder 'no/such-adapter' here"):
        al.load_adapter(model, "no/such-adapter")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(al.AdapterError, match="holds a PEFT adapter; load it with adapterlab.load_peft"):
        al.load_adapter(model, tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"method": "dora"}))
    with pytest.raises(al.AdapterError, match="Unknown adapter method 'dora'"):
        al.load_adapter(model, tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="adapter_config.json is not valid JSON"):
        al.load_adapter(model, tmp_path)
    assert al.adapter_names(model) == []


def test_meta_models_cannot_be_saved_or_loaded(tmp_path):
    saved_lora(tmp_path)
    with torch.device("meta"):
        meta = T.LlamaForCausalLM(tiny_config("llama"))
    with pytest.raises(al.AdapterError, match="meta device"):
        al.load_adapter(meta, tmp_path)
    al.attach(meta, "lora")
    with pytest.raises(al.AdapterError, match="meta device"):
        al.save_adapter(meta, tmp_path / "meta")


def test_unknown_saved_options_are_refused_not_dropped(tmp_path):
    saved_lora(tmp_path)
    path = tmp_path / "adapter_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "rank_pattern": {"q_proj": 8}}))
    with pytest.raises(al.AdapterError, match=r"unknown option\(s\) \['rank_pattern'\]"):
        al.load_adapter(tiny_model("llama"), tmp_path)


def test_saved_files_are_readable_by_others(tmp_path):
    """Atomic saves go through a private temp file; the result still gets the usual umask permissions."""
    model = tiny_model("llama")
    al.attach(model, "lora", r=2)
    old = os.umask(0o022)
    try:
        al.save_adapter(model, tmp_path)
    finally:
        os.umask(old)
    for name in ("adapter_config.json", "adapter.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
