"""Prompt tuning, P-tuning and prefix tuning to and from PEFT's format: the same logits both ways.

PEFT saves these adapters as the virtual tokens (prefixes) they compute; adapterlab exports that tensor,
and imports it as the adapter that holds it (P-tuning as prompt, projected prefix as plain prefix).
"""

from __future__ import annotations

import pytest
import torch

import adapterlab
from tiny_models import randomize_adapters, tiny_inputs, tiny_model

peft = pytest.importorskip("peft")

N = 3
# (adapterlab options, the PEFT config of the same adapter)
CASES = {
    "prompt": ({"method": "prompt"}, lambda task: peft.PromptTuningConfig(task_type=task, num_virtual_tokens=N)),
    "ptuning-mlp": ({"method": "ptuning", "encoder_hidden_size": 16},
                    lambda task: peft.PromptEncoderConfig(task_type=task, num_virtual_tokens=N,
                                                          encoder_hidden_size=16)),
    "ptuning-lstm": ({"method": "ptuning", "encoder": "lstm", "encoder_hidden_size": 16},
                     lambda task: peft.PromptEncoderConfig(task_type=task, num_virtual_tokens=N, encoder_hidden_size=16,
                                                           encoder_reparameterization_type="LSTM")),
    "prefix": ({"method": "prefix"}, lambda task: peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=N)),
    "prefix-projection": ({"method": "prefix", "prefix_projection": True, "encoder_hidden_size": 24},
                          lambda task: peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=N,
                                                               prefix_projection=True, encoder_hidden_size=24)),
}


def ours(case: str, family: str = "llama") -> torch.nn.Module:
    options = dict(CASES[case][0])
    model = tiny_model(family)
    adapterlab.attach(model, options.pop("method"), num_virtual_tokens=N, **options)
    randomize_adapters(model, std=0.5)
    return model


def theirs(case: str, family: str = "llama") -> torch.nn.Module:
    task = "SEQ_CLS" if family == "bert" else "CAUSAL_LM"
    model = peft.get_peft_model(tiny_model(family), CASES[case][1](task))
    randomize_adapters(model, std=0.5)
    return model.eval()


def inputs_with_padding(family: str = "llama") -> dict:
    inputs = tiny_inputs(family)
    inputs["attention_mask"][0, :2] = 0  # left padding in the first row
    return inputs


def assert_same_logits(a: torch.nn.Module, b: torch.nn.Module, family: str = "llama") -> None:
    inputs = inputs_with_padding(family)
    with torch.no_grad():
        got, want = a(**inputs).logits, b(**inputs).logits
        bare = tiny_model(family)(**inputs).logits
    n = got.shape[1] - bare.shape[1]  # prompt-style methods keep the virtual positions' logits in front
    assert (got[:, n:] - bare).abs().max() > 1e-2, "the adapter barely changes the output; the check would be vacuous"
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-5


@pytest.mark.parametrize("case", list(CASES))
def test_export_peft_loads_in_peft_with_equal_logits(case: str, tmp_path) -> None:
    model = ours(case)
    adapterlab.export_peft(model, tmp_path)
    loaded = peft.PeftModel.from_pretrained(tiny_model("llama"), str(tmp_path)).eval()
    assert_same_logits(model, loaded)


@pytest.mark.parametrize("case", list(CASES))
def test_load_peft_reads_peft_saved_adapter_with_equal_logits(case: str, tmp_path) -> None:
    peft_model = theirs(case)
    peft_model.save_pretrained(str(tmp_path))
    model = adapterlab.load_peft(tiny_model("llama"), tmp_path)
    assert_same_logits(model, peft_model)
    assert adapterlab.count_parameters(model)[0] == 0, "an imported adapter is frozen unless asked otherwise"


@pytest.mark.parametrize("case", list(CASES))
def test_export_then_load_peft_round_trip(case: str, tmp_path) -> None:
    model = ours(case)
    adapterlab.export_peft(model, tmp_path)
    assert_same_logits(adapterlab.load_peft(tiny_model("llama"), tmp_path), model)


def test_ptuning_from_peft_loads_as_prompt_holding_the_encoded_tokens(tmp_path) -> None:
    """PEFT keeps no encoder in its file: the import is a prompt adapter with PEFT's encoded tokens."""
    peft_model = theirs("ptuning-mlp")
    peft_model.save_pretrained(str(tmp_path))
    model = adapterlab.load_peft(tiny_model("llama"), tmp_path)
    assert adapterlab.get_config(model).method == "prompt"
    tokens = model.adapterlab["default"].embedding.weight
    torch.testing.assert_close(tokens, peft_model.get_prompt_embedding_to_save("default"))


@pytest.mark.parametrize("case", ["prompt", "ptuning-mlp"])
def test_bert_classifier_prompt_round_trips_with_its_head(case: str, tmp_path) -> None:
    """A SEQ_CLS prompt adapter carries the classifier PEFT keeps beside it, under PEFT's prompt-learning key."""
    model = ours(case, "bert")
    with torch.no_grad():
        model.classifier.weight.normal_()  # a trained head, which the export must carry
    adapterlab.export_peft(model, tmp_path / "ours")
    loaded = peft.PeftModel.from_pretrained(tiny_model("bert"), str(tmp_path / "ours")).eval()
    assert_same_logits(model, loaded, "bert")
    peft_model = theirs(case, "bert")
    peft_model.save_pretrained(str(tmp_path / "theirs"))
    assert_same_logits(adapterlab.load_peft(tiny_model("bert"), tmp_path / "theirs"), peft_model, "bert")


def test_export_refuses_encoder_prefix_and_writes_nothing(tmp_path) -> None:
    model = tiny_model("bert")
    adapterlab.attach(model, "prefix", num_virtual_tokens=N)
    with pytest.raises(adapterlab.AdapterError, match="encoder.*past_key_values"):
        adapterlab.export_peft(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_peft_refuses_encoder_prefix(tmp_path) -> None:
    theirs("prefix", "bert").save_pretrained(str(tmp_path))
    model = tiny_model("bert")
    with pytest.raises(adapterlab.AdapterError, match="encoder.*past_key_values"):
        adapterlab.load_peft(model, tmp_path)
    assert adapterlab.adapter_names(model) == []


@pytest.mark.parametrize("family, options, named", [
    ("llama", {"deep": True}, "deep=True"),
    ("vit", {}, "vision model"),
])
def test_export_refuses_prompts_peft_cannot_run(family: str, options: dict, named: str, tmp_path) -> None:
    model = tiny_model(family)
    adapterlab.attach(model, "prompt", num_virtual_tokens=N, **options)
    with pytest.raises(adapterlab.AdapterError, match=named):
        adapterlab.export_peft(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_peft_refuses_encoder_decoder_prompt(tmp_path) -> None:
    tiny_model_prompt = theirs("prompt")
    tiny_model_prompt.save_pretrained(str(tmp_path))
    config = (tmp_path / "adapter_config.json")
    config.write_text(config.read_text().replace('"num_transformer_submodules": 1', '"num_transformer_submodules": 2'))
    with pytest.raises(adapterlab.AdapterError, match="num_transformer_submodules=2"):
        adapterlab.load_peft(tiny_model("llama"), tmp_path)
