"""MoSA's modules as a user meets them: merge and save as the plain base adapter, identity at init, gradients
only in the drawn module, memory of the plain adapter, refused options, and the per-step draws."""

from __future__ import annotations

import contextlib
import json
from collections import Counter

import pytest
import torch
import transformers as T
from test_mosa import SEED, split_layers, without_dropout
from tiny_models import VOCAB, output_of, randomize_adapters, tiny_inputs, tiny_model
from torch import nn

import adapterlab as al
from adapterlab.core.engine import placed
from adapterlab.core.stochastic import Draws, draw_context, stochastic_modules

pytestmark = pytest.mark.usefixtures("single_thread")

BASES = {"lora": dict(base="lora", targets=["q", "v"], r=4), "parallel": dict(base="parallel", size=8),
         "adaptformer": dict(base="adaptformer", size=8)}


def plain_options(options: dict) -> tuple[str, dict]:
    """The base method and its options for the plain adapter a MoSA adapter saves as (MoSA sets init="zero")."""
    base = {k: v for k, v in options.items() if k not in ("base", "split", "modules")}
    return options["base"], base if options["base"] == "lora" else {**base, "init": "zero"}


def trainable_count(model: nn.Module) -> int:
    return al.count_parameters(model)[0]


def test_eval_output_equals_the_merged_lora_model():
    model = tiny_model("bert")
    al.attach(model, "mosa", split="both", **BASES["lora"])
    randomize_adapters(model)
    x = tiny_inputs("bert")
    expected = output_of(model, x)
    al.merge(model)
    assert all(adapter.merged for _, _, adapter in placed(model))
    torch.testing.assert_close(output_of(model, x), expected, atol=1e-5, rtol=1e-5)
    al.unmerge(model)
    torch.testing.assert_close(output_of(model, x), expected, atol=1e-5, rtol=1e-5)


def test_a_bottleneck_base_is_not_mergeable():
    model = al.attach(tiny_model("bert"), "mosa", **BASES["parallel"])
    with pytest.raises(al.NotMergeableError, match=r"\(mosa\) cannot be merged"):
        al.merge(model)


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("split", ["up", "both"])
def test_saved_adapter_is_the_plain_base_adapter_with_the_same_outputs(base, split, tmp_path):
    options = {**BASES[base], "split": split}
    model = al.attach(tiny_model("bert"), "mosa", **options)
    randomize_adapters(model)
    x = tiny_inputs("bert")
    expected = output_of(model, x)  # eval mode: the merged modules
    al.save_adapter(model, tmp_path)
    method, plain = plain_options(options)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["method"] == method
    loaded = al.load_adapter(tiny_model("bert"), tmp_path, trainable=True)
    torch.testing.assert_close(output_of(loaded, x), expected, atol=1e-6, rtol=1e-6)
    reference = al.attach(tiny_model("bert"), method, **plain)
    assert al.get_config(loaded).to_dict() == al.get_config(reference).to_dict()
    assert trainable_count(loaded) == trainable_count(reference)


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("split", ["up", "down", "both"])
def test_identity_at_init(base, split):
    model = without_dropout(tiny_model("bert"))
    x = tiny_inputs("bert")
    before = output_of(model, x)
    al.attach(model, "mosa", split=split, **BASES[base])
    torch.testing.assert_close(output_of(model, x), before, atol=1e-6, rtol=1e-6)
    model.train()
    with draw_context(model, step=3, seed=SEED):
        torch.testing.assert_close(output_of(model, x), before, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("groups", [1, 2])
def test_gradients_reach_only_the_drawn_modules(groups):
    model = al.attach(without_dropout(tiny_model("bert")), "mosa", split="both", **BASES["parallel"])
    randomize_adapters(model)
    model.train()
    x = {k: torch.cat([v] * groups) for k, v in tiny_inputs("bert").items()}
    with draw_context(model, step=5, groups=groups, seed=SEED):
        output_of(model, x).pow(2).mean().backward()
    layers = split_layers(model)
    assert len(layers) == 4  # down and up in two layers
    for name, layer in layers.items():
        drawn = {Draws(SEED, 5).choice(layer.draw_key, layer.n, g) for g in range(groups)}
        for i in range(layer.n):
            for parameter in (layer.parts[i], layer.biases[i]):
                assert (parameter.grad is not None) == (i in drawn), (name, i, drawn)
                assert parameter.grad is None or parameter.grad.abs().sum() > 0, (name, i)


def checkpointing_gradients(checkpointing: bool, in_context: bool) -> dict[str, torch.Tensor | None]:
    model = al.attach(tiny_model("llama"), "mosa", size=8)
    randomize_adapters(model)
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    model.train()
    x = tiny_inputs("llama")
    with draw_context(model, step=0, seed=SEED) if in_context else contextlib.nullcontext():
        model(**x, labels=x["input_ids"]).loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("in_context", [True, False])
def test_activation_checkpointing_recomputes_the_same_draws(in_context):
    """Recomputation in the backward sees the forward's draws, in a draw_context or (your own loop) outside one,
    where the model's forward pre-hook makes each call a step."""
    plain, recomputed = checkpointing_gradients(False, in_context), checkpointing_gradients(True, in_context)
    assert plain.keys() == recomputed.keys()
    for name, grad in plain.items():
        assert (grad is None) == (recomputed[name] is None), name
        if grad is not None:
            torch.testing.assert_close(recomputed[name], grad, msg=name)


def adapter_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the adapter's parameters, buffers, gradients and optimizer state."""
    adapter = [m for n, m in model.named_modules() if n.endswith("adapterlab")]
    tensors = [t for m in adapter for t in (*m.parameters(), *m.buffers())]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


def trained_bytes(method: str, steps: int, **options) -> int:
    """Adapter bytes after AdamW steps on a BERT of hidden size 256 until every module had a step."""
    torch.manual_seed(0)
    config = T.BertConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=1, num_attention_heads=4,
                          vocab_size=VOCAB, num_labels=3)
    model = al.attach(T.AutoModelForSequenceClassification.from_config(config), method, **options).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    for step in range(steps):
        with draw_context(model, step=step, seed=SEED):
            output_of(model, tiny_inputs("bert")).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if all(p in optimizer.state for p in trainable):
            break
    assert all(p in optimizer.state for p in trainable), "some module was never drawn"
    output_of(model, tiny_inputs("bert")).pow(2).mean().backward()  # gradients held, as between two steps
    return adapter_bytes(model, optimizer)


@pytest.mark.parametrize("split", ["up", "both"])
def test_memory_is_that_of_the_plain_adapter(split):
    plain = trained_bytes("parallel", 1, size=64, init="zero")
    mosa = trained_bytes("mosa", 64, base="parallel", size=64, modules=4, split=split)
    assert mosa <= 1.15 * plain, (mosa, plain)


def attach_error(**options) -> str:
    """The message of the AdapterError that attaching MoSA with `options` raises; the model is left bare."""
    model = tiny_model("bert")
    with pytest.raises(al.AdapterError) as caught:
        al.attach(model, "mosa", **options)
    assert not hasattr(model, "adapterlab_configs") and "\n" not in str(caught.value)
    return str(caught.value)


@pytest.mark.reliability
def test_unknown_base_is_refused():
    """mosa base="nope" -> error naming the bases that can be split"""
    assert "choose one of lora, series, pfeiffer, houlsby, parallel, scaled_parallel" in attach_error(base="nope")


@pytest.mark.reliability
@pytest.mark.parametrize("base", ["prompt", "prefix", "ia3", "bitfit", "conformer"])
def test_base_without_projections_is_refused(base):
    """mosa over prompt, prefix, ia3, bitfit or conformer -> error: no down/up projections, choose a splittable base"""
    message = attach_error(base=base)
    assert f"`base` {base!r} cannot be split" in message and "choose one of lora" in message


@pytest.mark.reliability
@pytest.mark.parametrize("modules", [1, 0, -3, 2.5, True, "four"])
def test_modules_not_an_integer_of_at_least_2(modules):
    """mosa modules=1, 0, 2.5, True or "four" -> error naming `modules` and what it must be"""
    message = attach_error(modules=modules)
    assert "`modules`" in message and ("at least 2" in message or "must be an integer" in message), message


@pytest.mark.reliability
def test_unknown_split_is_refused():
    """mosa split="left" -> error naming up, down and both"""
    assert "`split` must be one of ['up', 'down', 'both'], got 'left'" in attach_error(split="left")


@pytest.mark.reliability
def test_weight_with_fewer_entries_than_modules():
    """mosa modules=100 on a 32-entry projection -> error naming the layer and 'use fewer modules'; model unchanged"""
    message = attach_error(size=1, modules=100)
    assert "has 32 entries, too few for 100 modules" in message and "use fewer modules" in message, message


@pytest.mark.reliability
def test_bottleneck_init_bert_is_refused():
    """mosa over a bottleneck base with init="bert" -> error: drop init or pass init='zero'"""
    assert "drop init='bert' or pass init='zero'" in attach_error(base="series", init="bert")


@pytest.mark.reliability
def test_option_of_another_method_is_refused_by_the_base():
    """mosa base="parallel" with r=4 -> error naming r and the valid options (MoSA's own and parallel's)"""
    message = attach_error(base="parallel", r=4)
    assert "unknown option(s) ['r']" in message and "'size'" in message and "'modules'" in message, message


@pytest.mark.reliability
def test_misspelt_mosa_option_names_mosas_own_options():
    """mosa modlues=4 (a typo) -> error naming the unknown option and MoSA's own options beside the base's"""
    message = attach_error(modlues=4)
    assert "unknown option(s) ['modlues']" in message and "'modules'" in message and "'size'" in message, message


def test_draws_are_uniform_and_differ_by_step_group_and_key():
    counts = Counter(Draws(SEED, step).choice("layer.0:up", 4) for step in range(4000))
    assert sorted(counts) == [0, 1, 2, 3] and all(900 < c < 1100 for c in counts.values()), counts

    def sequence(key: str = "a", group: int = 0, seed: int = SEED) -> list[int]:
        return [Draws(seed, step).choice(key, 4, group) for step in range(64)]

    assert len(set(sequence())) == 4
    assert sequence() == sequence()  # a function of its inputs only
    assert sequence() != sequence(key="b") and sequence() != sequence(group=1) and sequence() != sequence(seed=1)
    assert Draws(SEED, 3, groups=2).choice("a", 4) == Draws(SEED, 3).choice("a", 4)  # groups only splits the batch


def test_draw_context_restores_the_previous_draws():
    model = al.attach(tiny_model("bert"), "mosa", split="both", **BASES["parallel"])
    modules = stochastic_modules(model)
    assert len(modules) == 4 and all(m.draws is None for m in modules)
    outer = Draws(7, 1)
    modules[0].draws = outer
    with draw_context(model, step=2, groups=2, seed=SEED):
        assert all(m.draws == Draws(SEED, 2, 2) for m in modules)
        with pytest.raises(RuntimeError), draw_context(model, step=9):
            assert all(m.draws == Draws(0, 9) for m in modules)
            raise RuntimeError("a failing step")
        assert all(m.draws == Draws(SEED, 2, 2) for m in modules)
    assert modules[0].draws is outer and all(m.draws is None for m in modules[1:])


@pytest.mark.reliability
def test_not_mergeable_message_lists_mosa_only_with_a_lora_base():
    """merging a non-mergeable adapter -> NotMergeableError listing bitfit, ia3, lora and 'mosa with base=lora',
    not mosa as mergeable whatever its base"""
    from adapterlab.core.engine import check_mergeable

    with pytest.raises(al.NotMergeableError, match=r"Mergeable methods: bitfit, ia3, lora, mosa with base=lora\. "):
        al.merge(al.attach(tiny_model("bert"), "series", size=4))
    with pytest.raises(al.NotMergeableError, match=r"\(mosa\) cannot be merged"):
        check_mergeable(al.config_class("mosa"))  # the class: its default base, adaptformer, does not merge


def test_mosa_facts_are_read_as_every_methods():
    """Class attributes on the class (its default base's), the base's on a config: one way for every method."""
    cls = al.config_class("mosa")
    base = al.config_class("adaptformer")
    assert (cls.mergeable, cls.site_kinds, cls.default_targets) == (base.mergeable, base.site_kinds,
                                                                    base.default_targets)
    lora = al.make_config("mosa", base="lora")
    assert (lora.mergeable, lora.site_kinds, lora.default_targets) == (True, ("module",), ("q", "v"))
    assert all(not isinstance(getattr(cls, fact), property) for fact in ("mergeable", "site_kinds", "default_targets"))
