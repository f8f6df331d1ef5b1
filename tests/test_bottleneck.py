"""Bottleneck adapters (series, houlsby, pfeiffer, parallel, scaled_parallel): counts, math, placement, I/O."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from tiny_models import ALL, output_of, randomize_adapters, tiny_inputs, tiny_model
from torch import nn

import adapterlab as al
from adapterlab.core.architectures import Architecture
from adapterlab.core.engine import placed


class ToyMLP(nn.Module):
    def __init__(self, d: int = 6, hidden: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ToyBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = ToyMLP()


class Toy(nn.Module):
    """One residual MLP block: enough to check the formulas by hand."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([ToyBlock()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.blocks[0].mlp(x)


TOY = Architecture("toy", blocks="blocks", up="mlp.fc1", down="mlp.fc2")


def bottleneck(adapter, h: torch.Tensor, act=torch.tanh) -> torch.Tensor:
    """s * up(act(down(h))) written out with the adapter's weights."""
    down = F.linear(h, adapter.down.weight, adapter.down.bias)
    return F.linear(act(down), adapter.up.weight, adapter.up.bias) * adapter.scaling


def llama_7b_on_meta() -> nn.Module:
    config = T.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                           num_attention_heads=32, vocab_size=32000)
    with torch.device("meta"):
        return T.AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("method, targets, expected, percent", [
    ("series", ["down_proj"], 67_108_864, 0.99),
    ("parallel", ["up_proj", "down_proj"], 247_463_936, 3.54),
])
def test_llama_7b_parameter_counts(method, targets, expected, percent):
    model = llama_7b_on_meta()
    al.attach(model, method, size=256, targets=targets, bias=False)
    trainable, total = al.count_parameters(model)
    assert trainable == expected
    assert round(100 * trainable / total, 2) == percent
    assert all(p.is_meta for p in model.parameters())


def test_series_on_a_linear_layer_matches_the_formula():
    toy = Toy()
    al.attach(toy, "series", targets=["fc2"], size=3, scaling=0.5)
    randomize_adapters(toy)
    adapter = toy.blocks[0].mlp.fc2.adapterlab["default"]
    h = torch.randn(2, 4, 10)
    y = F.linear(h, toy.blocks[0].mlp.fc2.weight, toy.blocks[0].mlp.fc2.bias)
    torch.testing.assert_close(toy.blocks[0].mlp.fc2(h), y + bottleneck(adapter, y))
    assert adapter.down.weight.shape == (3, 6) and adapter.up.weight.shape == (6, 3)


def test_parallel_on_a_linear_layer_matches_the_formula():
    toy = Toy()
    al.attach(toy, "parallel", targets=["fc1"], size=3, activation="relu", scaling=2.0)
    randomize_adapters(toy)
    fc1 = toy.blocks[0].mlp.fc1
    adapter = fc1.adapterlab["default"]
    x = torch.randn(2, 4, 6)
    expected = F.linear(x, fc1.weight, fc1.bias) + bottleneck(adapter, x, torch.relu)
    torch.testing.assert_close(fc1(x), expected)
    assert adapter.down.weight.shape == (3, 6) and adapter.up.weight.shape == (10, 3)


@pytest.mark.parametrize("method", ["series", "parallel"])
def test_sublayer_sites_match_the_formula_with_learned_scaling(method):
    toy = Toy()
    al.attach(toy, method, targets=["mlp"], size=3, scaling="learned", architecture=TOY)
    randomize_adapters(toy)
    mlp = toy.blocks[0].mlp
    adapter = mlp.fc2.adapterlab["default"]
    assert isinstance(adapter.scaling, nn.Parameter) and adapter.scaling.requires_grad
    x = torch.randn(2, 4, 6)
    with al.disabled(toy):
        y = mlp(x)
    expected = y + bottleneck(adapter, y if method == "series" else x)
    torch.testing.assert_close(mlp(x), expected)
    mlp(x).sum().backward()
    assert adapter.scaling.grad is not None and adapter.scaling.grad.abs().item() > 0


def test_parallel_mlp_on_llama_adds_the_branch_to_the_mlp_output():
    model = tiny_model("llama")
    al.attach(model, "parallel", targets=["mlp"], size=4, layers=[0], scaling=0.3)
    randomize_adapters(model)
    mlp = model.model.layers[0].mlp
    adapter = mlp.down_proj.adapterlab["default"]
    x = torch.randn(2, 5, 32)
    with al.disabled(model):
        y = mlp(x)
    torch.testing.assert_close(mlp(x), y + bottleneck(adapter, x))


@pytest.mark.parametrize("family", ALL)
@pytest.mark.parametrize("method, options", [
    ("houlsby", {"init": "zero"}),
    ("parallel", {"targets": ["attn", "mlp"], "init": "zero", "scaling": "learned"}),
    ("series", {"targets": ["down"], "init": "zero"}),
])
def test_zero_init_leaves_every_family_unchanged(family, method, options):
    model = tiny_model(family).requires_grad_(False)  # as attach leaves it: frozen Swin rounds differently
    inputs = tiny_inputs(family)
    base = output_of(model, inputs)
    al.attach(model, method, size=4, **options)
    torch.testing.assert_close(output_of(model, inputs), base, rtol=0, atol=0)
    randomize_adapters(model)
    assert not torch.allclose(output_of(model, inputs), base, atol=1e-4), "the adapters never ran"


def sites_per_layer(model: nn.Module) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _, _, adapter in placed(model):
        counts[adapter._site.layer] = counts.get(adapter._site.layer, 0) + 1
    return counts


@pytest.mark.parametrize("family", ["llama", "opt", "bert", "vit"])
def test_houlsby_places_two_adapters_per_block_and_pfeiffer_one(family):
    houlsby = al.attach(tiny_model(family), "houlsby", size=4)
    assert sites_per_layer(houlsby) == {0: 2, 1: 2}
    kinds = {a._site.target for _, _, a in placed(houlsby)}
    assert kinds == {"attn", "mlp"}
    pfeiffer = al.attach(tiny_model(family), "pfeiffer", size=4)
    assert sites_per_layer(pfeiffer) == {0: 1, 1: 1}
    assert {a._site.target for _, _, a in placed(pfeiffer)} == {"mlp"}


@pytest.mark.parametrize("family, method", [("llama", "houlsby"), ("bert", "parallel"), ("gpt2", "parallel")])
def test_gradients_reach_only_adapter_parameters(family, method):
    model = tiny_model(family)
    al.attach(model, method, size=4, scaling="learned")
    randomize_adapters(model)
    output_of(model, tiny_inputs(family)).square().mean().backward()
    for name, parameter in model.named_parameters():
        is_adapter = ".adapterlab." in name
        assert parameter.requires_grad == is_adapter, name
        assert (parameter.grad is not None) == is_adapter, name


@pytest.mark.parametrize("method, options", [
    ("parallel", {"scaling": "learned", "activation": "gelu"}),
    ("houlsby", {"bias": False, "dropout": 0.1}),
])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, method, options):
    model = tiny_model("llama")
    al.attach(model, method, size=4, **options)
    randomize_adapters(model)
    inputs = tiny_inputs("llama")
    expected = output_of(model, inputs)
    al.save_adapter(model, tmp_path)
    fresh = al.load_adapter(tiny_model("llama"), tmp_path)
    torch.testing.assert_close(output_of(fresh, inputs), expected, rtol=0, atol=0)
    assert al.get_config(fresh).to_dict() == al.get_config(model).to_dict()


def test_presets_fill_in_their_options_and_users_can_override():
    houlsby = al.make_config("houlsby")
    assert (houlsby.method, houlsby.resolved_targets) == ("houlsby", ["attn", "mlp"])
    assert al.make_config("pfeiffer").resolved_targets == ["mlp"]
    scaled = al.make_config("scaled_parallel")
    assert (scaled.method, scaled.scaling, scaled.init, scaled.resolved_targets) == (
        "scaled_parallel", 4.0, "zero", ["mlp"])
    assert al.make_config("pfeiffer", targets=["down"]).resolved_targets == ["down"]
    assert al.make_config("series", scaling="0.5").scaling == 0.5


@pytest.mark.parametrize("method", ["series", "houlsby", "parallel"])
def test_merge_raises_a_clear_error(method):
    model = al.attach(tiny_model("llama"), method, size=4)
    with pytest.raises(al.NotMergeableError, match=rf"\({method}\) cannot be merged"):
        al.merge(model)


@pytest.mark.parametrize("method, options, option", [
    ("series", {"size": 0}, "size"),
    ("parallel", {"size": -4}, "size"),
    ("series", {"activation": "swishy"}, "activation"),
    ("parallel", {"init": "xavier"}, "init"),
    ("series", {"scaling": "big"}, "scaling"),
    ("parallel", {"scaling": True}, "scaling"),
    ("houlsby", {"dropout": 1.5}, "dropout"),
    ("series", {"bias": "maybe"}, "bias"),
])
def test_bad_options_name_the_option(method, options, option):
    with pytest.raises(al.AdapterError, match=f"`{option}`"):
        al.make_config(method, **options)


def test_a_non_linear_target_is_refused_with_the_fix():
    with pytest.raises(al.AdapterError, match="linear layer"):
        al.attach(tiny_model("llama"), "series", targets=["self_attn"])


def test_a_size_not_below_the_width_is_named_in_a_warning():
    """The default size 256 on a 128-wide model widens instead of bottlenecking: the user is told, with the fix."""
    with pytest.warns(UserWarning, match=r"series: size 256 is not below the width it adapts \(6\)"):
        al.attach(Toy(), "series", architecture=TOY)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        al.attach(Toy(), "series", size=4, architecture=TOY)
