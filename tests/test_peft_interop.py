"""adapterlab's LoRA and IA3 against PEFT: same logits for the same adapter, and checkpoints both ways.

For each family the PEFT config is written by hand (the module names PEFT users write), adapterlab
places its adapter by logical names, and both must adapt the same layers and give the same logits.
"""

from __future__ import annotations

import pytest
import torch

import adapterlab
from adapterlab.core.checkpoint import adapter_state_dict

from tiny_models import randomize_adapters, tiny_inputs, tiny_model

peft = pytest.importorskip("peft")

FAMILIES = ["llama", "gpt2", "opt", "bloom", "gpt_neox", "bert"]
ATOL = 1e-5

# LoRA on every attention and MLP projection (up/down), written as PEFT users write target_modules.
BERT_BLOCK = r".*encoder\.layer\.\d+\."
PEFT_LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "bloom": ["query_key_value", "self_attention.dense", "dense_h_to_4h", "dense_4h_to_h"],
    "gpt_neox": ["query_key_value", "attention.dense", "dense_h_to_4h", "dense_4h_to_h"],
    "bert": BERT_BLOCK
    + r"(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)",
}
OUR_LORA_TARGETS = ["q", "k", "v", "o", "up", "down"]

# IA3 as PEFT's per-family defaults place it: k and v (the fused qkv where there is one), and the down
# projection as a feed-forward module. adapterlab's ia3 defaults must pick the same layers.
PEFT_IA3 = {
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
    "opt": (["k_proj", "v_proj", "fc2"], ["fc2"]),
    "bloom": (["query_key_value", "dense_4h_to_h"], ["dense_4h_to_h"]),
    "gpt_neox": (["query_key_value", "dense_4h_to_h"], ["dense_4h_to_h"]),
    "bert": (BERT_BLOCK + r"(attention\.self\.(key|value)|output\.dense)", BERT_BLOCK + r"output\.dense"),
}


def peft_config(method: str, family: str):
    task = "SEQ_CLS" if family == "bert" else "CAUSAL_LM"
    if method == "lora":
        return peft.LoraConfig(r=4, lora_alpha=8, target_modules=PEFT_LORA_TARGETS[family],
                               fan_in_fan_out=family == "gpt2", task_type=task)
    targets, feedforward = PEFT_IA3[family]
    return peft.IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type=task,
                          fan_in_fan_out=family == "gpt2")


def ours(method: str, family: str) -> torch.nn.Module:
    model = tiny_model(family)
    if method == "lora":
        adapterlab.attach(model, "lora", r=4, alpha=8, targets=OUR_LORA_TARGETS)
    else:
        adapterlab.attach(model, "ia3")
    randomize_adapters(model, std=0.2)  # non-zero B, vectors away from ones
    return model


def peft_name(key: str) -> str:
    """PEFT's state_dict name for the adapter tensor that adapterlab calls `key` (adapter 'default')."""
    for part in ("lora_A", "lora_B"):
        if f".{part}." in key:
            return "base_model.model." + key.replace(f".{part}.", f".{part}.default.")
    return "base_model.model." + key + ".default"


def peft_adapter_tensors(peft_model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in peft_model.state_dict().items() if "lora_" in k or "ia3_l" in k}


def outputs(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """Logits and last hidden state, flattened: BERT's classifier logits are ~0.02, its hidden states ~1."""
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    return torch.cat([out.logits.flatten(), out.hidden_states[-1].flatten()])


def assert_close(a: torch.Tensor, b: torch.Tensor, base: torch.Tensor) -> None:
    assert (a - base).abs().max() > 1e-2, "the adapter barely changes the output; the comparison would be vacuous"
    assert (a - b).abs().max().item() < ATOL


@pytest.mark.parametrize("method", ["lora", "ia3"])
@pytest.mark.parametrize("family", FAMILIES)
def test_same_logits_as_peft(method: str, family: str) -> None:
    model = ours(method, family)
    peft_model = peft.get_peft_model(tiny_model(family), peft_config(method, family))
    theirs = peft_adapter_tensors(peft_model)
    mine = {peft_name(k): v for k, v in adapter_state_dict(model).items()}
    assert sorted(mine) == sorted(theirs), "adapterlab and PEFT adapt different layers"
    with torch.no_grad():
        for key, tensor in mine.items():
            assert tensor.shape == theirs[key].shape, key
            theirs[key].copy_(tensor)
    inputs = tiny_inputs(family)
    with adapterlab.disabled(model):
        base = outputs(model, inputs)
    assert_close(outputs(model, inputs), outputs(peft_model, inputs), base)


@pytest.mark.parametrize("method", ["lora", "ia3"])
@pytest.mark.parametrize("family", FAMILIES)
def test_export_peft_loads_in_peft(method: str, family: str, tmp_path) -> None:
    model = ours(method, family)
    adapterlab.export_peft(model, tmp_path)
    loaded = peft.PeftModel.from_pretrained(tiny_model(family), str(tmp_path))
    inputs = tiny_inputs(family)
    assert_close(outputs(model, inputs), outputs(loaded, inputs), outputs(tiny_model(family), inputs))


@pytest.mark.parametrize("method", ["lora", "ia3"])
@pytest.mark.parametrize("family", FAMILIES)
def test_load_peft_reads_peft_checkpoint(method: str, family: str, tmp_path) -> None:
    peft_model = peft.get_peft_model(tiny_model(family), peft_config(method, family))
    randomize_adapters(peft_model, std=0.2)
    peft_model.save_pretrained(str(tmp_path))
    model = adapterlab.load_peft(tiny_model(family), tmp_path)
    inputs = tiny_inputs(family)
    assert_close(outputs(model, inputs), outputs(peft_model, inputs), outputs(tiny_model(family), inputs))
    assert adapterlab.count_parameters(model)[0] == 0, "an imported adapter is frozen unless asked otherwise"


def saved_peft_lora(tmp_path, family: str = "llama", **options):
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", **options)
    peft_model = peft.get_peft_model(tiny_model(family), config)
    randomize_adapters(peft_model, std=0.2)
    peft_model.save_pretrained(str(tmp_path))
    return peft_model


@pytest.mark.parametrize("options, named", [
    ({"lora_bias": True}, "lora_bias"),
    ({"rank_pattern": {"q_proj": 2}}, "rank_pattern"),
    ({"alpha_pattern": {"v_proj": 4}}, "alpha_pattern"),
    ({"bias": "all"}, "bias"),
])
def test_load_peft_refuses_features_it_cannot_import(options: dict, named: str, tmp_path) -> None:
    saved_peft_lora(tmp_path, **options)
    model = tiny_model("llama")
    with pytest.raises(adapterlab.AdapterError, match=named):
        adapterlab.load_peft(model, tmp_path)
    assert adapterlab.adapter_names(model) == []


def test_load_peft_imports_rslora_by_rescaling_alpha(tmp_path) -> None:
    peft_model = saved_peft_lora(tmp_path, use_rslora=True)
    model = adapterlab.load_peft(tiny_model("llama"), tmp_path)
    inputs = tiny_inputs("llama")
    assert_close(outputs(model, inputs), outputs(peft_model, inputs), outputs(tiny_model("llama"), inputs))


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_export_then_load_peft_round_trip(method: str, tmp_path) -> None:
    model = ours(method, "gpt2")
    adapterlab.export_peft(model, tmp_path)
    loaded = adapterlab.load_peft(tiny_model("gpt2"), tmp_path)
    inputs = tiny_inputs("gpt2")
    torch.testing.assert_close(outputs(loaded, inputs), outputs(model, inputs), atol=0, rtol=0)


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_gpt2_conv1d_merge_equals_peft_merge(method: str) -> None:
    """Merging into GPT-2's transposed Conv1D weights gives PEFT's merged weights; in float64 the merged
    model equals the unmerged one to 1e-12, so float32 differences of ~1e-6 are rounding, not layout."""
    model = ours(method, "gpt2")
    peft_model = peft.get_peft_model(tiny_model("gpt2"), peft_config(method, "gpt2"))
    with torch.no_grad():
        theirs = peft_adapter_tensors(peft_model)
        for key, tensor in adapter_state_dict(model).items():
            theirs[peft_name(key)].copy_(tensor)
    peft_merged = peft_model.merge_and_unload()
    adapterlab.merge(model)
    mine = {k: v for k, v in model.state_dict().items() if "adapterlab" not in k}
    for key, value in peft_merged.state_dict().items():
        torch.testing.assert_close(mine[key], value, atol=1e-6, rtol=1e-6)

    model = ours(method, "gpt2").double()
    inputs = tiny_inputs("gpt2")
    unmerged = outputs(model, inputs)
    adapterlab.merge(model)
    assert (outputs(model, inputs) - unmerged).abs().max().item() < 1e-12


def test_mosa_lora_exports_its_merged_lora_to_peft(tmp_path) -> None:
    """A trained MoSA-LoRA exports as the plain LoRA it merges into; PEFT loads it with the merged outputs."""
    model = tiny_model("llama")
    adapterlab.attach(model, "mosa", base="lora", r=4, targets=["q", "v"], split="both")
    randomize_adapters(model)
    model.eval()
    adapterlab.export_peft(model, tmp_path)
    loaded = peft.PeftModel.from_pretrained(tiny_model("llama"), str(tmp_path))
    inputs = tiny_inputs("llama")
    assert_close(outputs(model, inputs), outputs(loaded, inputs), outputs(tiny_model("llama"), inputs))


@pytest.mark.reliability
def test_load_peft_with_an_invalid_target_regex_is_one_line(tmp_path) -> None:
    """load_peft of an adapter_config.json whose target_modules is an invalid regex -> CorruptFileError naming the
    file, the pattern and the fix; nothing attached"""
    import json

    from adapterlab.errors import CorruptFileError

    adapterlab.export_peft(ours("lora", "llama"), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "target_modules": "(q_proj|v_proj"}))
    model = tiny_model("llama")
    with pytest.raises(CorruptFileError, match=r"target_modules '\(q_proj\|v_proj' is not a valid regular") as err:
        adapterlab.load_peft(model, tmp_path)
    assert "\n" not in str(err.value) and "adapter_config.json" in str(err.value)
    assert adapterlab.adapter_names(model) == []
