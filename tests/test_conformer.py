"""Conformer adapter: the conv module's math, placements, BatchNorm modes, locality, training and I/O."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_bottleneck import TOY, Toy
from tiny_models import output_of, randomize_adapters, tiny_inputs, tiny_model

import adapterlab as al
from adapterlab.core.engine import placed


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


# PETL for AST's configuration (umbertocappellazzo/PETL_AST), on AST-base (ASTConfig() defaults: 12 layers, d 768),
# built on the meta device. Their counts, written from their code:
D, LAYERS = 768, 12


def petl_conformer(b: int, k: int) -> int:
    """src/AST_adapters.py, Conformer_adapter.__init__: lnorm (2d), pwise_conv1 d -> 2b (bias), dwise_conv b -> b
    groups b kernel k (Conv1d's default bias=True), bnorm (2b), pwise_conv2 b -> d (bias)."""
    return 2 * D + (D * 2 * b + 2 * b) + (b * k + b) + 2 * b + (b * D + D)


def petl_bottleneck(b: int) -> int:
    """src/AST_adapters.py, Bottleneck_adapter.__init__: linear_downsample d -> b, linear_upsample b -> d."""
    return (D * b + b) + (b * D + D)


def ast_base_adapter_count(method: str, **options) -> int:
    import transformers as T

    with torch.device("meta"):
        model = T.ASTForAudioClassification(T.ASTConfig(num_labels=50))
    al.attach(model, method, **options)
    return sum(p.numel() for name, p in model.named_parameters() if "adapterlab" in name.split("."))


def test_petl_ast_conformer_count_on_ast_base_with_conv_bias():
    """Their conformer (size 8 = 768 / 96, kernel 31) has a depthwise bias: conv_bias=True counts as they do."""
    assert petl_conformer(8, 31) * LAYERS == 252_288
    assert ast_base_adapter_count("conformer", size=8, kernel_size=31, conv_bias=True) == 252_288
    assert ast_base_adapter_count("conformer", size=8, kernel_size=31) == 252_288 - 8 * LAYERS  # the default


def test_petl_ast_train_norms_counts_on_ast_base():
    """AST_adapter._unfreeze_adapters trains layernorm_after beside a Pfeiffer adapter (and layernorm_before
    beside Houlsby's second one): 248,976 = 230,544 + 12 x 1,536 with reduction rate 64 (b = 12)."""
    assert petl_bottleneck(12) * LAYERS == 230_544
    assert ast_base_adapter_count("pfeiffer", size=12) == 230_544
    assert ast_base_adapter_count("pfeiffer", size=12, train_norms=True) == 248_976 == (petl_bottleneck(12) + 2 * D) * LAYERS
    assert ast_base_adapter_count("houlsby", size=12, train_norms=True) == (2 * petl_bottleneck(12) + 4 * D) * LAYERS
    assert ast_base_adapter_count("conformer", size=12, kernel_size=8, conv_bias=True, train_norms=True) == \
        (petl_conformer(12, 8) + 2 * D) * LAYERS


def test_train_norms_trains_the_norm_in_front_of_the_adapted_sublayer_and_saves_it(tmp_path):
    model = tiny_model("ast")
    al.attach(model, "conformer", size=4, kernel_size=3, train_norms=True)
    norms = {name for name, _, _ in placed(model) if name.endswith("layernorm_after")}
    assert norms == {f"audio_spectrogram_transformer.layers.{i}.layernorm_after" for i in (0, 1)}
    randomize_adapters(model)
    x = tiny_inputs("ast")
    expected = output_of(model, x)
    with al.disabled(model):  # the trained norm runs with weight + delta: switched off with the adapter
        assert not torch.allclose(output_of(model, x), expected)
    al.save_adapter(model, tmp_path)
    loaded = al.load_adapter(tiny_model("ast"), tmp_path)
    torch.testing.assert_close(output_of(loaded, x), expected)


@pytest.mark.reliability
def test_train_norms_on_a_post_norm_model_is_refused():
    """train_norms on post-norm BERT (no norm in front of a sublayer) -> AdapterError naming it, nothing attached"""
    model = tiny_model("bert")
    with pytest.raises(al.AdapterError, match=r"conformer: train_norms .* bert is post-norm .* drop train_norms"):
        al.attach(model, "conformer", size=4, kernel_size=3, train_norms=True)
    assert not list(placed(model))


def test_conv_bias_false_is_honoured_with_layer_norm():
    model = al.attach(tiny_model("bert"), "conformer", size=4, kernel_size=3, norm="layer", conv_bias=False)
    assert all(adapter.depthwise.bias is None for _, _, adapter in placed(model))
    model = al.attach(tiny_model("bert"), "conformer", size=4, kernel_size=3, norm="layer")
    assert all(adapter.depthwise.bias is not None for _, _, adapter in placed(model))  # unset: as before
