"""The engine on its own: switching, disabling, detaching, merging, copies, dtypes, checkpointing, counts, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as T
from probes import SideConfig
from tiny_models import output_of, randomize_adapters, tiny_inputs, tiny_model

import adapterlab as al
from adapterlab.core.composition import Composing
from adapterlab.core.engine import placed
from adapterlab.core.stochastic import stochastic_modules

pytestmark = pytest.mark.usefixtures("single_thread")


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def two_loras_on_one_layer(family: str = "llama") -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    model = tiny_model(family)
    al.attach(model, "lora", "a", targets=["q", "v"], r=4)
    randomize_adapters(model, seed=1)
    al.attach(model, "lora", "b", targets=["q", "o"], r=2)
    randomize_adapters(model, seed=2)
    return model, tiny_inputs(family)


def test_switching_disabling_and_stacking_two_adapters_on_one_layer():
    model, x = two_loras_on_one_layer()
    base = tiny_model("llama")
    only_a = copy.deepcopy(model)
    al.detach(only_a, "b")
    only_b = copy.deepcopy(model)
    al.detach(only_b, "a")
    al.set_active(only_a, "a")

    assert al.active_adapters(model) == ["b"]  # the last attached one is the active one
    torch.testing.assert_close(output_of(model, x), output_of(only_b, x))
    al.set_active(model, "a")
    torch.testing.assert_close(output_of(model, x), output_of(only_a, x))
    with al.disabled(model):
        torch.testing.assert_close(output_of(model, x), output_of(base, x))
    torch.testing.assert_close(output_of(model, x), output_of(only_a, x))  # re-enabled on exit

    # both active: each LoRA adds its own update, the same as folding both into the weights
    al.set_active(model, ["a", "b"])
    stacked = output_of(model, x)
    assert not torch.allclose(stacked, output_of(only_a, x))
    al.merge(model)
    torch.testing.assert_close(output_of(model, x), stacked, atol=1e-5, rtol=1e-5)
    with al.disabled(model):  # merged adapters are taken out for the block and put back after
        torch.testing.assert_close(output_of(model, x), output_of(base, x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output_of(model, x), stacked, atol=1e-5, rtol=1e-5)
    al.unmerge(model)
    for (name, p), q in zip(base.state_dict().items(), [model.state_dict()[k] for k in base.state_dict()]):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)


def test_only_active_adapters_train():
    model, x = two_loras_on_one_layer()
    al.set_active(model, "a")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapterlab.a." in n for n in trainable)
    al.set_active(model, "b", trainable=False)
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(al.AdapterError, match=r"Unknown adapter\(s\) \['c'\].*\['a', 'b'\]"):
        al.set_active(model, "c")


def test_detach_restores_the_base_model():
    base = tiny_model("gpt2")
    x = tiny_inputs("gpt2")
    model = tiny_model("gpt2")
    hooks, keys = hook_count(model), list(model.state_dict())
    al.attach(model, "lora", "a", targets=["qkv", "down"])
    al.attach(model, SideConfig(), "b")
    randomize_adapters(model)
    al.set_active(model, ["a", "b"])
    al.merge(model, "a")
    al.detach(model, "a")  # merged: unmerged first
    al.detach(model, "b")
    assert al.adapter_names(model) == [] and al.active_adapters(model) == []
    assert list(model.state_dict()) == keys and hook_count(model) == hooks
    torch.testing.assert_close(output_of(model, x), output_of(base, x), atol=1e-6, rtol=0)
    with pytest.raises(al.AdapterError, match="No adapter named 'a'"):
        al.detach(model, "a")


def test_deepcopy_of_an_adapted_model_is_independent():
    model = tiny_model("llama")
    x = tiny_inputs("llama")
    al.attach(model, SideConfig(), "side")  # sublayer sites: entry->exit hand-over must be copied too
    al.attach(model, "lora", "lora", targets=["q", "v"])
    al.set_active(model, ["side", "lora"])
    randomize_adapters(model)
    before = output_of(model, x)
    twin = copy.deepcopy(model)
    torch.testing.assert_close(output_of(twin, x), before)
    with torch.no_grad():
        for _, _, adapter in placed(twin):
            for p in adapter.parameters():
                p.zero_()
    assert not torch.allclose(output_of(twin, x), before)  # the copy runs its own adapters
    torch.testing.assert_close(output_of(model, x), before)  # and the original is untouched
    al.detach(twin, "side")
    al.detach(twin, "lora")
    torch.testing.assert_close(output_of(twin, x), output_of(tiny_model("llama"), x))
    torch.testing.assert_close(output_of(model, x), before)


def test_model_to_dtype_moves_adapters_along():
    model = tiny_model("llama")
    x = tiny_inputs("llama")
    al.attach(model, "lora", targets=["q", "v", "down"])
    randomize_adapters(model)
    expected = output_of(model, x).double()
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    torch.testing.assert_close(output_of(model, x), expected, atol=1e-5, rtol=1e-5)


def test_float32_adapters_over_a_bfloat16_base_train_and_merge():
    model = tiny_model("llama").to(torch.bfloat16)
    x = tiny_inputs("llama")
    al.attach(model, "lora", targets=["q", "v"], r=4)
    al.attach(model, SideConfig(), "side")
    al.set_active(model, ["default", "side"])
    for _, _, adapter in placed(model):
        adapter.float()
    randomize_adapters(model)
    model.train()
    out = model(**x, labels=x["input_ids"])
    assert out.logits.dtype == torch.bfloat16
    out.loss.backward()
    grads = [p.grad for _, _, a in placed(model) for p in a.parameters()]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    assert all(p.grad is None for n, p in model.named_parameters() if ".adapterlab." not in n)
    model.eval()
    al.set_active(model, "default")
    unmerged = output_of(model, x)
    al.merge(model)
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    torch.testing.assert_close(output_of(model, x), unmerged, atol=0.1, rtol=0.05)  # bf16 rounding of W + BA


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_with_a_sublayer_adapter(use_reentrant):
    """The attn/mlp sublayer hand-over (input of q_proj -> output of o_proj) survives recomputation."""
    x = tiny_inputs("llama")

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = tiny_model("llama")
        al.attach(model, SideConfig())
        randomize_adapters(model)
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": use_reentrant})
        model.train()  # the adapters' dropout must replay identically in the recomputation
        torch.manual_seed(0)
        model(**x, labels=x["input_ids"]).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) == 2 * 2 * 4  # 2 layers x (attn, mlp) x a,b
    for name in plain:
        assert plain[name].abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


def test_dropout_in_train_mode_only():
    model = tiny_model("llama")
    x = tiny_inputs("llama")
    al.attach(model, "lora", targets=["q", "v"], dropout=0.5)
    randomize_adapters(model)
    model.train()
    assert not torch.allclose(output_of(model, x), output_of(model, x))
    model.eval()
    torch.testing.assert_close(output_of(model, x), output_of(model, x), atol=0, rtol=0)


def test_unmerge_all_skips_unmergeable_adapters():
    model = tiny_model("llama")
    x = tiny_inputs("llama")
    al.attach(model, SideConfig(), "side")
    al.attach(model, "lora", "lora")
    randomize_adapters(model)
    before = output_of(model, x)
    al.merge(model)
    al.unmerge(model)  # only 'lora' was merged; the unmergeable 'side' is no reason to fail
    torch.testing.assert_close(output_of(model, x), before, atol=1e-5, rtol=1e-5)
    with pytest.raises(al.NotMergeableError, match=r"'side' \(side\) cannot be merged.*lora"):
        al.merge(model, "side")


def test_count_parameters_includes_adapters():
    model = tiny_model("llama")
    _, total = al.count_parameters(model)
    al.attach(model, "lora", targets=["q", "v"], r=4)
    trainable, total_after = al.count_parameters(model)
    # q: 32 -> 32; v: 32 -> 16 (2 of 4 heads are key/value heads); A is r x in, B is out x r
    assert trainable == 2 * (4 * (32 + 32) + 4 * (32 + 16))
    assert total_after == total + trainable


def test_lora_count_on_a_meta_llama_7b():
    """LoRA r=32 on q,k,v,up,down of LLaMA-7B: 56,098,816 trainable, 0.83% of base + adapter (LLM-Adapters)."""
    config = T.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                           vocab_size=32000)
    with torch.device("meta"):
        model = T.LlamaForCausalLM(config)
    _, base = al.count_parameters(model)
    assert base == 6_738_415_616
    al.attach(model, "lora", targets=["q", "k", "v", "up", "down"], r=32)
    trainable, total = al.count_parameters(model)
    assert trainable == 56_098_816
    assert total == base + trainable
    assert f"{100 * trainable / total:.2f}" == "0.83"
    assert all(p.is_meta for p in model.parameters())


def test_bad_input_errors_name_the_problem():
    model = tiny_model("llama")
    with pytest.raises(al.AdapterError, match="Unknown adapter method 'lorra'.*lora"):
        al.attach(model, "lorra")
    with pytest.raises(al.AdapterError, match=r"unknown option\(s\) \['rank'\].*'r'"):
        al.attach(model, "lora", rank=8)
    for bad in (0, -1):
        with pytest.raises(al.AdapterError, match="`r` must be a positive integer"):
            al.attach(model, "lora", r=bad)
    for bad in (2.5, True):  # "8" becomes 8 (test_config_options.py)
        with pytest.raises(al.AdapterError, match="`r` is .*, but it must be an integer"):
            al.attach(model, "lora", r=bad)
    with pytest.raises(al.AdapterError, match="`dropout` must be in"):
        al.attach(model, "lora", dropout=1.5)
    with pytest.raises(al.AdapterError, match="`targets` is empty"):
        al.attach(model, "lora", targets=[])
    with pytest.raises(al.AdapterError, match="must be a Python identifier"):
        al.attach(model, "lora", "my adapter")
    with pytest.raises(al.AdapterError, match="set them on the config"):
        al.attach(model, al.make_config("lora"), r=4)
    with pytest.raises(al.AdapterError, match="lora adapts linear layers.*'model.layers.0.mlp'"):
        al.attach(model, "lora", targets=["layers.0.mlp"])
    with pytest.raises(al.AdapterError, match="lora cannot be placed at sublayer site 'attn'"):
        al.attach(model, "lora", targets=["attn"])
    assert al.adapter_names(model) == [] and not list(placed(model))  # failed attaches leave nothing behind
    al.attach(model, "lora", targets="q, v")  # a comma-separated string is a list of targets
    with pytest.raises(al.AdapterError, match="already attached"):
        al.attach(model, "lora", targets=["q"])
    with pytest.raises(al.AdapterError, match="No adapter named 'other'.*'default'"):
        al.get_config(model, "other")


def test_switching_away_from_a_merged_adapter_unmerges_it():
    model, x = two_loras_on_one_layer()
    al.set_active(model, "a")
    only_a = output_of(model, x)
    al.set_active(model, "b")
    only_b = output_of(model, x)
    al.set_active(model, "a")
    al.merge(model)
    torch.testing.assert_close(output_of(model, x), only_a, atol=1e-5, rtol=1e-5)
    al.set_active(model, "b")  # 'a' must leave the weights, not linger in them while inactive
    assert not any(a.merged for _, _, a in placed(model))
    torch.testing.assert_close(output_of(model, x), only_b, atol=1e-5, rtol=1e-5)


def test_two_site_kinds_on_one_layer_is_an_error():
    model = tiny_model("llama")
    with pytest.raises(al.AdapterError, match=r"Targets 'attn' and 'o' both place an adapter at "
                                              r"'model.layers.0.self_attn.o_proj'"):
        al.attach(model, SideConfig(targets=["attn", "o"]))
    al.attach(model, SideConfig(targets=["o", "o_proj"]))  # the same site named twice is one site
    assert len(list(placed(model))) == 2


def test_a_merged_adapter_is_frozen_until_unmerged():
    """Merged, an adapter's hooks are off and it would silently get no gradient: it is frozen instead."""
    model = tiny_model("llama")
    al.attach(model, "lora", r=2)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    al.merge(model)
    assert not any(p.requires_grad for p in lora)
    al.unmerge(model)
    assert all(p.requires_grad for p in lora)
    al.set_active(model, "default", trainable=False)
    al.merge(model)
    al.unmerge(model)
    assert not any(p.requires_grad for p in lora)


def test_the_routing_hooks_leave_with_the_last_adapter():
    """Mixed-adapter batches (adapter_names=, tests/test_mixed_batches.py) add model hooks and standby hooks."""
    model, x = two_loras_on_one_layer()
    model(**x, adapter_names=["a", "b"])
    output_of(model, x)
    al.detach(model, "a")
    al.detach(model, "b")
    assert hook_count(model) == hook_count(tiny_model("llama"))  # the guard leaves with the last adapter


# every method that applies to a causal LM, and conformer (encoders only) on BERT
DTYPE_CASES = [("conformer", "bert") if m == "conformer" else (m, "llama") for m in al.method_names()]
SMALL = {"lora": dict(r=4), "conformer": dict(size=8, kernel_size=3), "prompt": dict(num_virtual_tokens=3),
         "prefix": dict(num_virtual_tokens=3), "ptuning": dict(num_virtual_tokens=3, encoder_hidden_size=16)}


@pytest.mark.parametrize("method, family", DTYPE_CASES)
def test_adapters_stay_float32_over_a_bfloat16_base(method, family):
    """By default adapters over a bf16 base are float32 (PEFT's autocast_adapter_dtype); forward, backward
    and merge run, and the outputs stay bf16."""
    model = tiny_model(family).to(torch.bfloat16)
    x = tiny_inputs(family)
    options = {**SMALL.get(method, {}), **({"size": 8} if "size" in al.config_class(method).option_names() else {})}
    if issubclass(al.config_class(method), Composing):  # fusion: over two attached series adapters
        for member in ("m0", "m1"):
            al.attach(model, "pfeiffer", member, size=8)
        options["adapters"] = ["m0", "m1"]
    al.attach(model, method, **options)
    dtypes = {p.dtype for _, _, a in placed(model) for p in a.parameters()}
    assert dtypes == {torch.float32}
    randomize_adapters(model)
    model.train()
    labels = x["input_ids"] if family == "llama" else torch.tensor([0, 2])
    out = model(**x, labels=labels)
    assert out.logits.dtype == torch.bfloat16
    out.loss.backward()
    drawn = {id(p) for m in stochastic_modules(model) for p in m.parameters()}  # MoSA: only drawn modules train
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for _, _, a in placed(model)
               for p in a.parameters() if p.requires_grad and not (id(p) in drawn and p.grad is None))
    model.eval()
    if al.get_config(model).mergeable and method != "bitfit":  # bitfit cannot merge into LLaMA's bias-free layers
        unmerged = output_of(model, x)
        al.merge(model)
        assert all(p.dtype == torch.bfloat16 for n, p in model.named_parameters() if ".adapterlab." not in n)
        torch.testing.assert_close(output_of(model, x), unmerged, atol=0.1, rtol=0.05)  # bf16 rounding


def test_adapter_dtype_base_and_a_bfloat16_round_trip(tmp_path):
    """adapter_dtype="base" gives adapters the base dtype; a saved float32 adapter reloads the same."""
    x = tiny_inputs("llama")
    model = al.attach(tiny_model("llama").to(torch.bfloat16), "lora", adapter_dtype="base")
    assert {p.dtype for _, _, a in placed(model) for p in a.parameters()} == {torch.bfloat16}
    model = al.attach(tiny_model("llama").to(torch.bfloat16), "bitfit", norms=False, targets=["q", "k", "v"])
    randomize_adapters(model)
    al.save_adapter(model, tmp_path)
    loaded = al.load_adapter(tiny_model("llama").to(torch.bfloat16), tmp_path)
    assert {p.dtype for _, _, a in placed(loaded) for p in a.parameters()} == {torch.float32}
    torch.testing.assert_close(output_of(loaded, x), output_of(model, x), atol=0, rtol=0)
    with pytest.raises(al.AdapterError, match="adapter_dtype must be 'float32'.*'base'.*'fp32'"):
        al.attach(tiny_model("llama"), "lora", adapter_dtype="fp32")
