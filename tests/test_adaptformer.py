"""AdaptFormer as MoSA's code builds it, against a reference written from their forward (vit_mosa.py, STYLE
"AdaptFormer"): x = ffn(ffn_norm(h)) + scale * up(dropout(gelu(down(adapter_norm(h))))), h the residual stream."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from tiny_models import output_of, randomize_adapters, tiny_inputs, tiny_model

import adapterlab as al
from adapterlab.core.engine import placed
from adapterlab.methods.bottleneck import AdaptFormerConfig, BottleneckOptions

# family -> (module whose input is the MLP's residual stream, the MLP's exit layer), block-relative
RESIDUAL = {"vit": ("layernorm_after", "mlp.fc2"), "ast": ("layernorm_after", "mlp.fc2"),
            "llama": ("post_attention_layernorm", "mlp.down_proj"), "gpt2": ("ln_2", "mlp.c_proj"),
            "bert": ("intermediate.dense", "output.dense")}  # BERT is post-norm: the MLP reads the stream itself
def blocks_of(model):
    """The model's list of transformer blocks."""
    return next(m for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and "embed" not in n)


def reference_forward(base, adapters, family, inputs):
    """Their AdaptFormer forward on an untouched copy of the base, with the trained adapters' weights."""
    model = copy.deepcopy(base)
    handles, seen = [], {}
    norm_path, exit_path = RESIDUAL[family]
    for i, (block, adapter) in enumerate(zip(blocks_of(model), adapters)):
        def capture(module, args, i=i):
            seen[i] = args[0]

        def add(module, args, output, i=i, a=adapter):
            h = F.layer_norm(seen.pop(i), a.norm.normalized_shape, a.norm.weight, a.norm.bias, eps=1e-6)
            h = F.gelu(F.linear(h, a.down.weight, a.down.bias))
            return output + 0.1 * F.linear(h, a.up.weight, a.up.bias)

        handles.append(block.get_submodule(norm_path).register_forward_pre_hook(capture))
        handles.append(block.get_submodule(exit_path).register_forward_hook(add))
    return output_of(model, inputs)


@pytest.mark.parametrize("family", sorted(RESIDUAL))
def test_adaptformer_matches_their_forward_on_the_residual_stream(family):
    base = tiny_model(family)
    model = al.attach(copy.deepcopy(base), "adaptformer", size=8)
    randomize_adapters(model)
    adapters = [adapter for _, _, adapter in placed(model)]
    x = tiny_inputs(family)
    ours = output_of(model, x)
    torch.testing.assert_close(ours, reference_forward(base, adapters, family, x), atol=1e-5, rtol=1e-5)
    assert (ours - output_of(base, x)).abs().max() > 1e-4, "the adapter changed nothing"


def test_adaptformer_defaults_are_their_config():
    """MODEL.ADAPTER in their config: BOTTLENECK_SIZE 64, SCALAR 0.1, DROPOUT 0.1, BIAS True; GELU; LN in."""
    config = al.make_config("adaptformer")
    assert (config.size, config.scaling, config.dropout, config.bias, config.activation) == (64, 0.1, 0.1, True, "gelu")
    assert (config.layer_norm, config.dropout_at, config.source, config.init) == (True, "hidden", "residual", "zero")
    assert al.get_config(al.attach(tiny_model("bert"), "mosa")).base == "adaptformer"


def test_adaptformer_parameter_count():
    """Per block: LayerNorm (2d) + down (d*64 + 64) + up (64*d + d); ViT-B (d 768, 12 blocks): 1,208,064."""
    model = al.attach(tiny_model("vit"), "adaptformer", size=8)
    d, blocks = 32, 2
    per_block = 2 * d + (d * 8 + 8) + (8 * d + d)
    head = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "classifier" in n)
    assert al.count_parameters(model)[0] - head == blocks * per_block
    assert 12 * (2 * 768 + (768 * 64 + 64) + (64 * 768 + 768)) == 1_208_064


@pytest.mark.parametrize("where", ["input", "hidden"])
def test_dropout_sits_where_chosen(where):
    """dropout_at="hidden" drops the activation (AdaptFormer); "input" drops what the adapter reads."""
    model = al.attach(tiny_model("bert"), "parallel", size=8, dropout=0.5, dropout_at=where, layer_norm=True)
    randomize_adapters(model)
    adapter = next(a for _, _, a in placed(model)).train()
    h = torch.randn(3, 5, 32)
    torch.manual_seed(7)
    ours = adapter.delta(h)
    torch.manual_seed(7)
    n = adapter.norm(h)
    if where == "input":
        expected = adapter.up(torch.tanh(adapter.down(F.dropout(n, 0.5))))
    else:
        expected = adapter.up(F.dropout(torch.tanh(adapter.down(n)), 0.5))
    torch.testing.assert_close(ours, expected)


def test_residual_source_on_a_linear_target_is_refused():
    with pytest.raises(al.AdapterError, match=r"source='residual' reads a sublayer's residual stream"):
        al.attach(tiny_model("llama"), "parallel", targets=["down"], source="residual")


def test_residual_source_without_a_norm_row_names_the_field():
    """OPT has no norm in its row (opt-350m is post-norm, the rest pre-norm): the user is told what to pass."""
    with pytest.raises(al.AdapterError, match=r"mlp_norm"):
        al.attach(tiny_model("opt"), "adaptformer")
    model = al.attach(tiny_model("opt"), "adaptformer", architecture={"mlp_norm": "final_layer_norm"})
    assert al.count_parameters(model)[0] > 0


@pytest.mark.parametrize("option, value", [("dropout_at", "output"), ("source", "stream"), ("layer_norm", "maybe")])
def test_bad_values_are_refused_by_name(option, value):
    with pytest.raises(al.AdapterError, match=option):
        al.attach(tiny_model("bert"), "adaptformer", **{option: value})


def test_saved_adaptformer_round_trips(tmp_path):
    model = al.attach(tiny_model("vit"), "adaptformer", size=8)
    randomize_adapters(model)
    x = tiny_inputs("vit")
    al.save_adapter(model, tmp_path)
    loaded = al.load_adapter(tiny_model("vit"), tmp_path)
    torch.testing.assert_close(output_of(loaded, x), output_of(model, x))
    assert isinstance(al.get_config(loaded), AdaptFormerConfig)
    assert issubclass(AdaptFormerConfig, BottleneckOptions)
