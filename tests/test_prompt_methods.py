"""Prompt tuning, P-tuning and prefix tuning: same logits as PEFT, and correct under generate()."""

from __future__ import annotations

import copy

import peft
import pytest
import torch

import adapterlab as al
from tiny_models import randomize_adapters, tiny_inputs, tiny_model

N = 3
FAMILIES = ["llama", "gpt2", "opt", "bloom", "gpt_neox"]


def peft_twin(model: torch.nn.Module, method: str, options: dict, task: str = "CAUSAL_LM") -> torch.nn.Module:
    """PEFT's version of our adapter on a copy of the bare model, holding the same weights."""
    bare = copy.deepcopy(model)
    al.detach(bare, "default")
    configs = {
        "prompt": lambda: peft.PromptTuningConfig(task_type=task, num_virtual_tokens=N),
        "ptuning": lambda: peft.PromptEncoderConfig(task_type=task, num_virtual_tokens=N, **options),
        "prefix": lambda: peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=N, **options),
    }
    twin = peft.get_peft_model(bare, configs[method]())
    state = {k.removeprefix("encoder."): v for k, v in model.adapterlab["default"].state_dict().items()}
    twin.prompt_encoder["default"].load_state_dict(state)
    return twin.eval()


CASES = [
    ("prompt", {}),
    ("prefix", {}),
    ("prefix", {"prefix_projection": True, "encoder_hidden_size": 24}),
    ("ptuning", {}),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method,options", CASES)
def test_logits_equal_peft(family, method, options):
    model = tiny_model(family)
    ours = {"prefix": {"prefix_projection", "encoder_hidden_size"}}.get(method, set())
    al.attach(model, method, num_virtual_tokens=N, **{k: v for k, v in options.items() if k in ours})
    randomize_adapters(model, std=0.5)
    twin = peft_twin(model, method, options)
    inputs = tiny_inputs(family)
    inputs["attention_mask"][0, :2] = 0  # left padding in the first row
    labels = inputs["input_ids"].clone()
    with torch.no_grad():
        got = model(**inputs, labels=labels)
        want = twin(**inputs, labels=labels)
    # prompt-style methods keep the virtual positions' logits in front, as PEFT does; prefix adds none
    extra = 0 if method == "prefix" else N
    batch, length = inputs["input_ids"].shape
    assert got.logits.shape[:2] == (batch, length + extra)
    assert (got.logits - want.logits).abs().max() < 1e-5
    assert (got.loss - want.loss).abs() < 1e-5


def test_lstm_ptuning_equals_peft():
    model = tiny_model("llama")
    al.attach(model, "ptuning", num_virtual_tokens=N, encoder="lstm", encoder_hidden_size=16)
    randomize_adapters(model, std=0.5)
    twin = peft_twin(model, "ptuning", {"encoder_reparameterization_type": "LSTM", "encoder_hidden_size": 16})
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        assert (model(**inputs).logits - twin(**inputs).logits).abs().max() < 1e-5


def test_bert_sequence_classification_prompt_equals_peft():
    model = tiny_model("bert")
    al.attach(model, "prompt", num_virtual_tokens=N)
    randomize_adapters(model, std=0.5)
    twin = peft_twin(model, "prompt", {}, task="SEQ_CLS")
    inputs = tiny_inputs("bert")
    inputs["attention_mask"][1, -3:] = 0
    inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
    inputs["token_type_ids"][:, 4:] = 1
    with torch.no_grad():
        assert (model(**inputs).logits - twin(**inputs).logits).abs().max() < 1e-5


PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
GREEDY = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
@pytest.mark.parametrize("method,options", [("prompt", {}), ("prompt", {"deep": True}), ("prefix", {}),
                                            ("ptuning", {})])
def test_generate_batched_left_padding_and_cache(family, method, options):
    model = tiny_model(family)
    al.attach(model, method, num_virtual_tokens=N, **options)
    randomize_adapters(model, std=1.0)
    ids, mask = left_padded(PROMPTS)
    batched = model.generate(input_ids=ids, attention_mask=mask, **GREEDY)[:, ids.shape[1]:]
    uncached = model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **GREEDY)[:, ids.shape[1]:]
    assert torch.equal(batched, uncached)
    for row, prompt in zip(batched, PROMPTS):
        single = torch.tensor([prompt])
        alone = model.generate(input_ids=single, attention_mask=torch.ones_like(single), **GREEDY)[0, len(prompt):]
        assert torch.equal(row, alone)
    with al.disabled(model):
        assert not torch.equal(model.generate(input_ids=ids, attention_mask=mask, **GREEDY)[:, ids.shape[1]:], batched)


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_generate_matches_peft(method):
    model = tiny_model("llama")
    al.attach(model, method, num_virtual_tokens=N)
    randomize_adapters(model, std=1.0)
    twin = peft_twin(model, method, {})
    ids = torch.tensor([PROMPTS[0]])
    mask = torch.ones_like(ids)
    ours = model.generate(input_ids=ids, attention_mask=mask, **GREEDY)
    theirs = twin.generate(input_ids=ids, attention_mask=mask, **GREEDY)
    assert torch.equal(ours, theirs)


def test_manual_cache_continuation_equals_full_forward():
    """A plain forward that returns the cache, then one more token with it, equals one full forward."""
    model = tiny_model("llama")
    al.attach(model, "prefix", num_virtual_tokens=N)
    randomize_adapters(model, std=1.0)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        first = model(input_ids=ids[:, :3], attention_mask=torch.ones(1, 3, dtype=torch.long), use_cache=True)
        step = model(input_ids=ids[:, 3:], attention_mask=torch.ones(1, 4, dtype=torch.long),
                     past_key_values=first.past_key_values).logits
    assert (step[:, -1] - full[:, -1]).abs().max() < 1e-5


@pytest.mark.reliability
@pytest.mark.parametrize("options, named", [
    ({"init": "text", "init_token_ids": [1, 999]}, "holds id 999, but this model's vocabulary has 64 tokens"),
    ({"init": "text", "init_token_ids": [3, -1]}, "integers >= 0"),
    ({"init": "text", "init_token_ids": []}, "non-empty list"),
    ({"init": "random", "init_token_ids": [1, 2]}, "read by init='text' only"),
])
def test_prompt_init_token_ids_out_of_the_vocabulary_are_refused(options, named):
    """prompt init_token_ids past the vocabulary, negative, empty, or given without init='text' -> AdapterError
    naming init_token_ids and the fix, not an IndexError (or a silent wrap-around); nothing attached"""
    model = tiny_model("llama")
    with pytest.raises(al.AdapterError, match=named) as err:
        al.attach(model, "prompt", num_virtual_tokens=N, **options)
    assert "init_token_ids" in str(err.value) and "\n" not in str(err.value)
    assert al.adapter_names(model) == []
