"""Conformer adapter: the conv module's math, placements, BatchNorm modes, locality, training and I/O."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_bottleneck import TOY, Toy
from tiny_models import output_of, randomize_adapters, tiny_inputs, tiny_model

import adapterlab as al
from adapterlab.engine import placed


def conv_module(adapter, h: torch.Tensor) -> torch.Tensor:
    """The conformer adapter written out with functional ops (BatchNorm with running statistics)."""
    h = F.layer_norm(h, h.shape[-1:], adapter.input_norm.weight, adapter.input_norm.bias).transpose(1, 2)
    h = F.conv1d(h, adapter.pointwise_in.weight, adapter.pointwise_in.bias)
    size = h.shape[1] // 2
    h = h[:, :size] * torch.sigmoid(h[:, size:])
    k = adapter.depthwise.kernel_size[0]
    h = F.pad(h, ((k - 1) // 2, k // 2))  # PyTorch's "same" (and the paper's code): the odd one out goes after
    h = F.conv1d(h, adapter.depthwise.weight, groups=size)
    bn = adapter.norm
    h = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)
    h = h * torch.sigmoid(h)
    return F.conv1d(h, adapter.pointwise_out.weight, adapter.pointwise_out.bias).transpose(1, 2)


def trained_toy(placement: str, kernel_size: int = 3) -> Toy:
    toy = Toy()
    al.attach(toy, "conformer", targets=["mlp"], size=4, kernel_size=kernel_size, placement=placement,
              architecture=TOY)
    randomize_adapters(toy)
    toy.train()
    toy(torch.randn(3, 9, 6))  # move BatchNorm's running statistics away from (0, 1)
    return toy.eval()


@pytest.mark.parametrize("placement", ["parallel", "series"])
def test_series_and_parallel_match_the_formula(placement):
    toy = trained_toy(placement)
    mlp = toy.blocks[0].mlp
    adapter = mlp.fc2.adapterlab["default"]
    assert adapter.norm.running_mean.abs().sum() > 0
    x = torch.randn(2, 7, 6)
    with al.disabled(toy):
        y = mlp(x)
    expected = y + conv_module(adapter, y if placement == "series" else x)
    torch.testing.assert_close(mlp(x), expected)


def test_the_depthwise_conv_only_mixes_positions_within_the_kernel():
    toy = trained_toy("parallel")
    mlp = toy.blocks[0].mlp
    x = torch.randn(1, 11, 6)
    moved = x.clone()
    moved[0, 5] += torch.randn(6)  # not a constant shift, which the input LayerNorm would remove
    changed = (mlp(moved) - mlp(x)).abs().amax(-1)[0] > 0
    assert changed.nonzero().flatten().tolist() == [4, 5, 6]  # kernel 3: one neighbour each side


@pytest.mark.parametrize("kernel_size", [8, 31])
def test_paper_kernel_sizes_keep_the_length_and_match_the_hand_conv(kernel_size):
    """PETL-for-AST's best audio kernel (8, even) and their default (31) on a tiny AST's 14 positions."""
    model = tiny_model("ast")
    al.attach(model, "conformer", targets=["mlp"], layers=[0], size=4, kernel_size=kernel_size)
    randomize_adapters(model)
    model.train()
    model(**tiny_inputs("ast"))  # move BatchNorm's running statistics away from (0, 1)
    model.eval()
    mlp = model.audio_spectrogram_transformer.layers[0].mlp
    adapter = mlp.fc2.adapterlab["default"]
    x = torch.randn(2, 14, 32)
    with torch.no_grad():
        assert adapter.convolve(x).shape == x.shape
        with al.disabled(model):
            y = mlp(x)
        torch.testing.assert_close(mlp(x), y + conv_module(adapter, x))


def test_an_even_kernel_reads_one_more_position_after_than_before():
    toy = trained_toy("parallel", kernel_size=8)
    mlp = toy.blocks[0].mlp
    x = torch.randn(1, 13, 6)
    moved = x.clone()
    moved[0, 6] += torch.randn(6)
    with torch.no_grad():
        changed = (mlp(moved) - mlp(x)).abs().amax(-1)[0] > 0
    # output i reads inputs i-3 .. i+4, so input 6 reaches outputs 2 .. 9
    assert changed.nonzero().flatten().tolist() == list(range(2, 10))


@pytest.mark.parametrize("family", ["ast", "vit", "bert"])
@pytest.mark.parametrize("placement", ["parallel", "series"])
def test_zero_init_leaves_the_model_unchanged(family, placement):
    model = tiny_model(family)
    inputs = tiny_inputs(family)
    base = output_of(model, inputs)
    al.attach(model, "conformer", targets=["attn", "mlp"], size=4, kernel_size=3, placement=placement, init="zero")
    torch.testing.assert_close(output_of(model, inputs), base, rtol=0, atol=0)
    randomize_adapters(model)
    assert not torch.allclose(output_of(model, inputs), base, atol=1e-4), "the adapters never ran"


@pytest.mark.parametrize("family, norm", [("ast", "batch"), ("bert", "layer")])
def test_training_step_updates_only_adapters(family, norm):
    model = tiny_model(family)
    al.attach(model, "conformer", size=4, kernel_size=5, norm=norm)
    model.train()
    adapter_names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert adapter_names and all(".adapterlab." in n for n in adapter_names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    output_of(model, tiny_inputs(family)).square().mean().backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == (name in adapter_names), name
    optimizer.step()
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]) != (name in adapter_names), name


def test_batchnorm_statistics_follow_the_mode_and_survive_save_load(tmp_path):
    model = tiny_model("ast")
    al.attach(model, "conformer", size=4, kernel_size=3)
    inputs = tiny_inputs("ast")
    norms = [a.norm for _, _, a in placed(model)]
    model.train()
    output_of(model, inputs)
    assert all(n.num_batches_tracked.item() == 1 and n.running_mean.abs().sum() > 0 for n in norms)
    model.eval()
    expected = output_of(model, inputs)
    assert all(n.num_batches_tracked.item() == 1 for n in norms), "eval must not update running statistics"
    al.save_adapter(model, tmp_path)
    fresh = al.load_adapter(tiny_model("ast"), tmp_path)
    torch.testing.assert_close(output_of(fresh, inputs), expected, rtol=0, atol=0)


def test_counts_follow_the_paper_layout():
    model = tiny_model("ast")  # hidden 32, 2 layers, MLP (Pfeiffer) sites by default, parallel
    al.attach(model, "conformer", size=4, kernel_size=3)
    d, s, k = 32, 4, 3
    per_site = 2 * d + (d * 2 * s + 2 * s) + s * k + 2 * s + (s * d + d)  # LN, pw_in, dw (no bias), BN, pw_out
    assert al.count_parameters(model)[0] == 2 * per_site


def test_causal_lms_are_refused():
    with pytest.raises(al.AdapterError, match="KV cache"):
        al.attach(tiny_model("llama"), "conformer")


def test_inputs_without_a_sequence_axis_are_refused():
    toy = Toy()
    al.attach(toy, "conformer", targets=["fc2"], kernel_size=3)
    with pytest.raises(al.AdapterError, match="batch, seq, features"):
        toy(torch.randn(4, 6))


def test_merge_raises_a_clear_error():
    model = al.attach(tiny_model("ast"), "conformer", size=4)
    with pytest.raises(al.NotMergeableError, match="cannot be merged"):
        al.merge(model)


@pytest.mark.parametrize("options, option", [
    ({"kernel_size": 0}, "kernel_size"),
    ({"size": 0}, "size"),
    ({"placement": "diagonal"}, "placement"),
    ({"norm": "group"}, "norm"),
    ({"init": "bert"}, "init"),
    ({"input_norm": "maybe"}, "input_norm"),
    ({"dropout": -0.1}, "dropout"),
])
def test_bad_options_name_the_option(options, option):
    with pytest.raises(al.AdapterError, match=f"`{option}`"):
        al.make_config("conformer", **options)
