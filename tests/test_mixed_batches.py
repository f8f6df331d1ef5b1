"""Mixed-adapter batches: `model(**batch, adapter_names=[...])` and `routed(model, names)` around generate().

Every registered method on every family: each row of a mixed call equals that row run with only its adapter active
(or with adapters disabled, for "__base__"), in fp32, a named adapter need not be active, and the model is as it was
after the call; greedy generation with a KV cache and left padding on every causal family. Refusals by name.
"""

from __future__ import annotations

import pytest
import torch
from test_matrix import attach_or_skip
from tiny_models import ALL, CAUSAL, VISION_AUDIO, randomize_adapters, tiny_inputs, tiny_model

import adapterlab as al
from adapterlab.core.registry import METHODS
from adapterlab.methods.ia3 import IA3Rows
from adapterlab.methods.lora import LoraRows

pytestmark = pytest.mark.usefixtures("single_thread")

# the second adapter differs in size where a method can: LoRA ranks, numbers of virtual tokens
SECOND = {"lora": dict(r=2), "prompt": dict(num_virtual_tokens=5), "ptuning": dict(num_virtual_tokens=5,
          encoder_hidden_size=16), "prefix": dict(num_virtual_tokens=5)}
NAMES = ["a", "__base__", "b", "a"]
VIRTUAL = ("prompt", "ptuning", "prefix")
ENCODERS_OF = {"bert", "roberta", "xlm-roberta"}


def refused(method: str, family: str) -> str | None:
    """The words of the AdapterError a mixed batch of NAMES gets, where the method cannot run one there."""
    if method in VIRTUAL and family in VISION_AUDIO:
        return "cannot run in a mixed-adapter batch"
    if method == "prefix" and family in ENCODERS_OF:
        return "joins an encoder's attention"
    if method in ("prompt", "ptuning") and family in ENCODERS_OF:
        return "different numbers of virtual tokens"
    return None


def two_adapters(method: str, family: str) -> torch.nn.Module:
    """A tiny model with adapters 'a' (active) and 'b' (inactive) of `method`, both moved off their init."""
    model = tiny_model(family)
    attach_or_skip(model, method, family, "a")
    randomize_adapters(model, seed=1)
    attach_or_skip(model, method, family, "b", **SECOND.get(method, {}))
    randomize_adapters(model, seed=2)
    al.set_active(model, "a")
    return model


def alone(model: torch.nn.Module, name: str, run) -> object:
    """run() with only `name` active (the base model for '__base__'), the active set restored after."""
    active = al.active_adapters(model)
    if name == "__base__":
        with al.disabled(model):
            result = run()
    else:
        al.set_active(model, name)
        result = run()
    al.set_active(model, active)
    return result


def close_rows(mixed: torch.Tensor, single: torch.Tensor, i: int) -> None:
    """Row i of a mixed output equals the row alone (virtual-token logits: the last positions, `logits[:, N:]`)."""
    row, ref = mixed[i], single[i]
    if row.dim() >= 2 and row.shape[0] > ref.shape[0]:
        row = row[-ref.shape[0]:]
    torch.testing.assert_close(row, ref, atol=1e-5, rtol=1e-5)


def logits(model: torch.nn.Module, x: dict, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**x, **kwargs).logits


@pytest.mark.parametrize("method,family", [pytest.param(m, f, id=f"{m}-{f}") for m in sorted(METHODS) for f in ALL])
def test_each_row_equals_its_adapter_alone(method, family):
    model = two_adapters(method, family)
    x = tiny_inputs(family, batch=len(NAMES))
    words = refused(method, family)
    if words:
        with pytest.raises(al.AdapterError, match=words):
            logits(model, x, adapter_names=NAMES)
        return
    mixed = logits(model, x, adapter_names=NAMES)
    for i, name in enumerate(NAMES):
        close_rows(mixed, alone(model, name, lambda: logits(model, x)), i)
    assert al.active_adapters(model) == ["a"]
    torch.testing.assert_close(logits(model, x), alone(model, "a", lambda: logits(model, x)), atol=0, rtol=0)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("family", CAUSAL)
def test_greedy_generation_with_cache_and_left_padding(method, family):
    model = two_adapters(method, family)
    x = tiny_inputs(family, batch=len(NAMES), length=6)
    x["attention_mask"][1, :2] = 0  # left padding on a base row and an adapter row
    x["attention_mask"][2, :3] = 0
    x["input_ids"] = x["input_ids"].masked_fill(x["attention_mask"] == 0, 0)
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
                    output_logits=True)

    def generate() -> object:
        with torch.no_grad():
            return model.generate(**x, **settings)

    with al.routed(model, NAMES):
        mixed = generate()
    for i, name in enumerate(NAMES):
        single = alone(model, name, generate)
        row, ref = mixed.sequences[i].tolist(), single.sequences[i].tolist()
        # a batch whose every row ended (EOS) stops early; the same row in a longer mixed batch is then padded
        ended = ref[-1] == model.generation_config.eos_token_id
        assert row[:len(ref)] == ref and (row[len(ref):] == [0] * (len(row) - len(ref)) if ended else row == ref), name
        for step, step_logits in enumerate(single.logits):
            torch.testing.assert_close(mixed.logits[step][i], step_logits[i], atol=1e-5, rtol=1e-5)
    assert al.active_adapters(model) == ["a"]


def test_beams_and_returned_sequences_repeat_each_name():
    model = two_adapters("lora", "llama")
    x = tiny_inputs("llama", batch=2, length=5)
    settings = dict(max_new_tokens=3, do_sample=False, num_beams=2, num_return_sequences=2, pad_token_id=0)
    with torch.no_grad(), al.routed(model, ["b", "__base__"]):
        mixed = model.generate(**x, **settings)
    with torch.no_grad():
        b = alone(model, "b", lambda: model.generate(**x, **settings))
        base = alone(model, "__base__", lambda: model.generate(**x, **settings))
    assert mixed[:2].tolist() == b[:2].tolist() and mixed[2:].tolist() == base[2:].tolist()


def test_a_batch_k_times_the_names_repeats_each_name():
    model = two_adapters("series", "llama")
    x = tiny_inputs("llama", batch=4)
    mixed = logits(model, x, adapter_names=["b", "a"])
    close_rows(mixed, alone(model, "b", lambda: logits(model, x)), 1)
    close_rows(mixed, alone(model, "a", lambda: logits(model, x)), 2)


def test_loras_of_different_ranks_and_ia3_stack_and_follow_weight_changes():
    model = two_adapters("lora", "llama")
    al.attach(model, "ia3", "c")
    randomize_adapters(model, seed=3)
    x = tiny_inputs("llama", batch=3)
    names = ["c", "a", "b"]
    logits(model, x, adapter_names=names)
    q = model.model.layers[0].self_attn.q_proj.adapterlab
    assert isinstance(q["a"]._row_plan.stack, LoraRows) and q["a"]._row_plan is q["b"]._row_plan
    v = model.model.layers[0].self_attn.v_proj.adapterlab
    assert isinstance(v["c"]._row_plan.stack, IA3Rows)
    handles = list(q["b"]._hook_handles)
    with torch.no_grad():  # an in-place change (an optimizer step) is seen: the stacked weights are rebuilt
        q["b"].lora_B.weight.mul_(3.0)
        v["c"].ia3_l.add_(0.5)
    mixed = logits(model, x, adapter_names=names)
    assert q["b"]._hook_handles == handles  # the same set of names: hooks left as they were
    for i, name in enumerate(names):
        close_rows(mixed, alone(model, name, lambda: logits(model, x)), i)


def test_virtual_tokens_of_prompt_and_ptuning_mix_in_one_call():
    model = tiny_model("llama")
    al.attach(model, "prompt", "p", num_virtual_tokens=2)
    randomize_adapters(model, seed=1)
    al.attach(model, "ptuning", "t", num_virtual_tokens=4, encoder_hidden_size=16)
    randomize_adapters(model, seed=2)
    al.attach(model, "lora", "l", r=2)
    randomize_adapters(model, seed=3)
    x = tiny_inputs("llama", batch=4)
    names = ["t", "p", "l", "__base__"]
    mixed = logits(model, x, adapter_names=names)
    assert mixed.shape[1] == 4 + x["input_ids"].shape[1]  # N = 4 virtual positions in front of every row
    for i, name in enumerate(names):
        close_rows(mixed, alone(model, name, lambda: logits(model, x)), i)


def test_encoder_rows_with_prompts_of_one_length_run_unpadded():
    model = tiny_model("bert")
    for name, seed in (("a", 1), ("b", 2)):
        al.attach(model, "prompt", name, num_virtual_tokens=3)
        randomize_adapters(model, seed=seed)
    x = tiny_inputs("bert", batch=2)
    mixed = logits(model, x, adapter_names=["a", "b"])
    close_rows(mixed, alone(model, "a", lambda: logits(model, x)), 0)
    close_rows(mixed, alone(model, "b", lambda: logits(model, x)), 1)


@pytest.mark.parametrize("names,words", [
    (["a", "nope", "b", "a"], r"unknown adapter\(s\) \['nope'\].*'__base__'"),
    (["a", "b", "a"], "3 names for a batch of 4 rows"),
    ("a", "non-empty list of adapter names"),
    ([], "non-empty list of adapter names"),
])
def test_bad_names_are_refused_by_name(names, words):
    model = two_adapters("lora", "llama")
    with pytest.raises(al.AdapterError, match=words):
        logits(model, tiny_inputs("llama", batch=4), adapter_names=names)


def test_merged_adapters_and_training_mode_are_refused():
    model = two_adapters("lora", "llama")
    x = tiny_inputs("llama", batch=4)
    al.merge(model, "a")
    with pytest.raises(al.AdapterError, match=r"\['a'\] are merged.*unmerge"):
        logits(model, x, adapter_names=NAMES)
    al.unmerge(model)
    model.train()
    with pytest.raises(al.AdapterError, match="eval mode only.*model.eval()"):
        model(**x, adapter_names=NAMES)
    model.eval()
    torch.testing.assert_close(logits(model, x), alone(model, "a", lambda: logits(model, x)))


def test_prompt_and_prefix_rows_in_one_call_are_refused():
    model = tiny_model("llama")
    al.attach(model, "prompt", "p", num_virtual_tokens=2)
    al.attach(model, "prefix", "f", num_virtual_tokens=2)
    with pytest.raises(al.AdapterError, match="prefix and prompt.*one of them per call"):
        logits(model, tiny_inputs("llama"), adapter_names=["p", "f"])


def test_routed_blocks_do_not_nest_or_disagree_with_the_call():
    model = two_adapters("lora", "llama")
    x = tiny_inputs("llama", batch=2)
    with al.routed(model, ["a", "b"]):
        with pytest.raises(al.AdapterError, match="do not nest"), al.routed(model, ["b", "a"]):
            pass
        with pytest.raises(al.AdapterError, match="name the rows' adapters once"):
            logits(model, x, adapter_names=["b", "b"])
        inside = logits(model, x)
    torch.testing.assert_close(inside, logits(model, x, adapter_names=["a", "b"]))
    torch.testing.assert_close(logits(model, x), alone(model, "a", lambda: logits(model, x)))


@pytest.mark.parametrize("method", ["lora", "ia3", "pfeiffer", "prompt"])
def test_a_call_naming_fewer_adapters_after_a_larger_one_equals_alone(method):
    """A batcher prefills a newcomer alone (one name) between steps that name every running adapter: the smaller call
    reuses the larger call's plans where they do not depend on the set (layer adapters) and plans anew where they do
    (virtual tokens, whose pads follow the call's longest count); either way each row equals its adapter alone."""
    model = two_adapters(method, "llama").eval()
    x = tiny_inputs("llama", batch=len(NAMES))
    logits(model, x, adapter_names=NAMES)  # plans for {a, b}
    for names in (["b"] * len(NAMES), ["__base__", "a", "a", "__base__"]):
        mixed = logits(model, x, adapter_names=names)
        for i, name in enumerate(names):
            close_rows(mixed, alone(model, name, lambda: logits(model, x)), i)
        logits(model, x, adapter_names=NAMES)


@pytest.mark.parametrize("method", ["lora", "pfeiffer"])
def test_plans_grow_with_new_names_and_every_call_equals_alone(method):
    """Calls naming one new adapter after another (a batcher's newcomers) widen the plans instead of replacing them;
    each call still equals its adapters alone."""
    model = two_adapters(method, "llama").eval()
    x = tiny_inputs("llama", batch=len(NAMES))
    calls = (["a"] * 4, ["b"] * 4, NAMES, ["a", "a", "__base__", "a"])
    outputs = [logits(model, x, adapter_names=names) for names in calls]
    assert model.adapterlab_routing.names == {"a", "b"}  # widened once, not replaced at each call
    for names, mixed in zip(calls, outputs):
        for i, name in enumerate(names):
            close_rows(mixed, alone(model, name, lambda: logits(model, x)), i)
