"""AdapterDrop (Rücklé et al. 2021) on the bottleneck adapters: dropped adapters cost nothing at inference, the
robust variant's per-step skips are reproducible and get no gradient, the options survive save/load."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from tiny_models import output_of, randomize_adapters, tiny_config, tiny_inputs

import adapterlab as al
from adapterlab.core.engine import placed
from adapterlab.errors import AdapterError
from adapterlab.measure.costs import Settings, measure_method
from adapterlab.core.stochastic import Draws, draw_context

pytestmark = pytest.mark.usefixtures("single_thread")

BLOCKS = 5
KEY = "adapterdrop:default"  # the draw key of adapter "default"
METHODS = [("series", {"targets": ["down"]}), ("houlsby", {}), ("parallel", {}), ("adaptformer", {"dropout": 0.0})]


def deep_model(family: str = "llama") -> torch.nn.Module:
    """A tiny model with BLOCKS blocks (AdapterDrop needs a few), dropout off, in eval mode."""
    torch.manual_seed(0)
    config = tiny_config(family)
    config.num_hidden_layers = BLOCKS
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if hasattr(config, name):
            setattr(config, name, 0.0)
    if family == "bert":
        config.num_labels = 3
        return T.AutoModelForSequenceClassification.from_config(config).eval()
    return T.AutoModelForCausalLM.from_config(config).eval()


def copy_adapters(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Give each adapter of `target` the weights of `source`'s adapter at the same layer."""
    sources = {path: adapter for path, _, adapter in placed(source)}
    for path, _, adapter in placed(target):
        adapter.load_state_dict(sources[path].state_dict())


def hooked_blocks(model: torch.nn.Module) -> set[int]:
    """Blocks whose adapters have hooks installed."""
    return {adapter._site.layer for _, _, adapter in placed(model) if adapter._hook_handles}


def with_dropped(method: str, options: dict, k: int, family: str = "llama", training: str = "robust"):
    """(model with drop_layers=k, model with the same adapters attached only to blocks k..)."""
    dropped = al.attach(deep_model(family), method, size=4, drop_layers=k, drop_training=training, **options)
    randomize_adapters(dropped)
    plain = al.attach(deep_model(family), method, size=4, layers=list(range(k, BLOCKS)), **options)
    copy_adapters(dropped, plain)
    return dropped, plain


@pytest.mark.parametrize("family", ["llama", "bert"])
@pytest.mark.parametrize("method, options", METHODS)
def test_eval_output_is_that_of_the_adapter_without_the_lowest_k_blocks(family, method, options):
    inputs = tiny_inputs(family)
    dropped, plain = with_dropped(method, options, 2, family)
    torch.testing.assert_close(output_of(dropped, inputs), output_of(plain, inputs), rtol=0, atol=0)
    assert hooked_blocks(dropped) == {2, 3, 4}  # the dropped adapters run no hook at all


def test_dropped_adapters_are_never_called_at_inference():
    dropped, _ = with_dropped("houlsby", {}, 3)
    calls = []
    for _, _, adapter in placed(dropped):
        adapter.down.register_forward_hook(lambda m, a, o, layer=adapter._site.layer: calls.append(layer))
    output_of(dropped, tiny_inputs("llama"))
    assert sorted(set(calls)) == [3, 4]


def test_fixed_places_no_adapter_below_k_and_equals_layers_option():
    dropped, plain = with_dropped("parallel", {}, 2, training="fixed")
    assert al.count_parameters(dropped) == al.count_parameters(plain)
    inputs = tiny_inputs("llama")
    for mode in (True, False):
        dropped.train(mode), plain.train(mode)
        torch.testing.assert_close(output_of(dropped, inputs), output_of(plain, inputs), rtol=0, atol=0)


@pytest.mark.parametrize("training", ["fixed", "robust"])
def test_k_zero_is_the_plain_adapter_in_eval(training):
    torch.manual_seed(3)
    with_drop = al.attach(deep_model(), "houlsby", size=4, drop_layers=0, drop_training=training)
    torch.manual_seed(3)
    plain = al.attach(deep_model(), "houlsby", size=4)
    randomize_adapters(with_drop), randomize_adapters(plain)
    inputs = tiny_inputs("llama")
    torch.testing.assert_close(output_of(with_drop, inputs), output_of(plain, inputs), rtol=0, atol=0)
    assert (al.get_config(with_drop, "default").adapter_drop() is None) == (training == "fixed")


def step_with(k: int) -> int:
    """A training step whose robust draw skips the lowest `k` blocks (seed 7)."""
    return next(s for s in range(1000) if Draws(7, s).choice(KEY, BLOCKS) == k)


def gradients_at(model: torch.nn.Module, step: int) -> tuple[set[int], torch.Tensor]:
    """(blocks whose adapters got a gradient, the logits) of one training step under draw_context."""
    model.zero_grad(set_to_none=True)
    with draw_context(model, step=step, seed=7):
        logits = output_of(model, tiny_inputs("llama"))
        logits.sum().backward()
    return {a._site.layer for _, _, a in placed(model) if a.down.weight.grad is not None}, logits.detach()


def test_robust_training_skips_the_drawn_lowest_blocks_reproducibly():
    model = al.attach(deep_model(), "series", size=4, drop_training="robust").train()
    randomize_adapters(model)
    got, logits = gradients_at(model, step_with(3))
    assert got == {3, 4}  # the skipped adapters got no gradient
    again, logits_again = gradients_at(model, step_with(3))
    assert again == {3, 4} and torch.equal(logits, logits_again)  # same step and seed: same skip
    assert gradients_at(model, step_with(1))[0] == {1, 2, 3, 4}
    assert gradients_at(model, step_with(0))[0] == set(range(BLOCKS))
    drawn = {Draws(7, s).choice(KEY, BLOCKS) for s in range(200)}
    assert drawn == set(range(BLOCKS))  # the paper's k in {0, ..., n-1}: the top block always keeps its adapter


def test_an_eval_round_trip_keeps_stacked_adapters_in_order():
    model = al.attach(deep_model(), "series", size=4, drop_layers=2, drop_training="robust")
    al.attach(model, "series", "second", size=4)
    al.set_active(model, ["default", "second"])
    randomize_adapters(model)
    model.train()
    before = gradients_at(model, step_with(0))[1]
    model.eval()
    output_of(model, tiny_inputs("llama"))  # removes the dropped adapters' hooks
    model.train()
    torch.testing.assert_close(gradients_at(model, step_with(0))[1], before, rtol=0, atol=0)


def test_set_drop_layers_chooses_k_after_training_and_is_saved(tmp_path):
    dropped, _ = with_dropped("houlsby", {}, 1)
    _, plain = with_dropped("houlsby", {}, 3)
    copy_adapters(dropped, plain)
    al.set_drop_layers(dropped, 3)
    inputs = tiny_inputs("llama")
    torch.testing.assert_close(output_of(dropped, inputs), output_of(plain, inputs), rtol=0, atol=0)
    al.save_adapter(dropped, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["drop_layers"] == 3


@pytest.mark.parametrize("training", ["fixed", "robust"])
def test_save_and_load_keep_adapterdrop(tmp_path, training):
    dropped, _ = with_dropped("parallel", {}, 2, training=training)
    al.save_adapter(dropped, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (saved["drop_layers"], saved["drop_training"]) == (2, training)
    loaded = al.load_adapter(deep_model(), tmp_path)
    assert al.get_config(loaded, "default") == al.get_config(dropped, "default")
    inputs = tiny_inputs("llama")
    torch.testing.assert_close(output_of(loaded, inputs), output_of(dropped, inputs), rtol=0, atol=0)
    assert hooked_blocks(loaded) == {2, 3, 4}


@pytest.mark.parametrize("options, match", [
    ({"drop_layers": -1}, "`drop_layers` must be an integer of at least 0"),
    ({"drop_layers": "two"}, "`drop_layers`"),
    ({"drop_layers": True}, "`drop_layers` is True, but it must be an integer"),
    ({"drop_training": "sometimes"}, "`drop_training` must be one of"),
    ({"drop_layers": BLOCKS}, f"`drop_layers` is {BLOCKS}, but this model has {BLOCKS} blocks"),
    ({"drop_layers": 2, "layers": [0, 1]}, "no adapter is left"),
])
def test_bad_adapterdrop_values_are_refused_by_name(options, match):
    with pytest.raises(AdapterError, match=match):
        al.attach(deep_model(), "series", size=4, **options)


@pytest.mark.parametrize("method, options, match", [
    ("lora", {"drop_layers": 1}, "`drop_layers` is an option of adaptformer, compacter, compacterpp, houlsby"),
    ("ia3", {"drop_training": "robust"}, "`drop_training` is an option of"),
    ("mosa", {"drop_layers": 1}, "mosa: AdapterDrop"),
])
def test_adapterdrop_is_refused_on_methods_without_it(method, options, match):
    with pytest.raises(AdapterError, match=match):
        al.attach(deep_model(), method, **options)


def test_set_drop_layers_refuses_a_fixed_adapter_and_too_many_blocks():
    fixed = al.attach(deep_model(), "series", size=4, drop_layers=1)
    with pytest.raises(AdapterError, match="drop_training='robust'"):
        al.set_drop_layers(fixed, 2)
    robust = al.attach(deep_model(), "series", size=4, drop_training="robust")
    with pytest.raises(AdapterError, match="this model has 5 blocks"):
        al.set_drop_layers(robust, BLOCKS)


def test_measure_times_a_robust_adapterdrop_adapter():
    settings = Settings(seq_len=8, micro_batch_size=2, steps=1, warmup=0, decode_tokens=2)
    row = measure_method(deep_model, "series", {"size": 4, "drop_layers": 3, "drop_training": "robust"},
                         settings, "cpu", threads=1)
    assert row["status"] == "ok" and row["prefill_ms"] > 0 and row["options"]["drop_layers"] == 3
