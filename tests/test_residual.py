"""The residual ablation of PETL for AST (`--apply_residual`): {series, parallel} x {with, without residual}."""

from __future__ import annotations

import pytest
import torch
from test_bottleneck import TOY, Toy, bottleneck
from tiny_models import output_of, randomize_adapters, tiny_inputs, tiny_model

import adapterlab as al

# (method, residual) -> the MLP sublayer's output from F (its output), x (its input) and A (the adapter)
CELLS = {
    ("series", True): lambda F, x, A: F + A(F),
    ("series", False): lambda F, x, A: A(F),
    ("parallel", False): lambda F, x, A: F + A(x),
    ("parallel", True): lambda F, x, A: F + A(x) + x,
}


@pytest.mark.parametrize("method,residual", list(CELLS))
def test_each_cell_matches_its_formula_on_a_toy_mlp(method, residual):
    toy = Toy()
    al.attach(toy, method, targets=["mlp"], size=3, residual=residual, architecture=TOY)
    randomize_adapters(toy)
    mlp = toy.blocks[0].mlp
    adapter = mlp.fc2.adapterlab["default"]
    x = torch.randn(2, 4, 6)
    with al.disabled(toy):
        F = mlp(x)
    torch.testing.assert_close(mlp(x), CELLS[method, residual](F, x, lambda h: bottleneck(adapter, h)))


def test_the_defaults_keep_series_with_and_parallel_without_the_residual():
    assert al.make_config("series").residual and al.make_config("pfeiffer").residual
    assert not al.make_config("parallel").residual and not al.make_config("adaptformer").residual


def layer_output(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    out = layer(hidden)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("method,residual", list(CELLS))
def test_each_cell_on_ast_matches_their_layer_code(method, residual):
    """Their ASTLayer_adapter (Pfeiffer, at the FFN): h = attn + hidden; x = layernorm_after(h); F = FFN out
    (their ASTOutput without its residual add, which is transformers 5's mlp)."""
    model = tiny_model("ast")
    al.attach(model, method, targets=["mlp"], layers=[0], size=4, residual=residual, activation="gelu")
    randomize_adapters(model)
    layer = model.audio_spectrogram_transformer.layers[0]
    adapter = layer.mlp.fc2.adapterlab["default"]
    hidden = torch.randn(2, 5, 32)
    with al.disabled(model), torch.no_grad():
        h = layer.attention(layer.layernorm_before(hidden))[0] + hidden
        x = layer.layernorm_after(h)
        F = layer.mlp(x)
        expected = h + CELLS[method, residual](F, x, lambda t: bottleneck(adapter, t, act=torch.nn.functional.gelu))
    with torch.no_grad():
        torch.testing.assert_close(layer_output(layer, hidden), expected)


def test_parallel_residual_on_a_layer_of_another_width_is_refused():
    with pytest.raises(al.AdapterError, match="residual=False"):
        al.attach(Toy(), "parallel", targets=["fc1"], size=3, residual=True, architecture=TOY)


def test_a_non_bool_residual_is_refused_by_name():
    with pytest.raises(al.AdapterError, match="residual"):
        al.make_config("series", residual="maybe")


@pytest.mark.parametrize("method,residual", [("series", False), ("parallel", True)])
def test_the_new_cells_round_trip_through_save_and_load(tmp_path, method, residual):
    model = tiny_model("ast")
    al.attach(model, method, targets=["mlp"], size=4, residual=residual)
    randomize_adapters(model)
    inputs = tiny_inputs("ast")
    expected = output_of(model, inputs)
    al.save_adapter(model, tmp_path)
    fresh = al.load_adapter(tiny_model("ast"), tmp_path)
    assert al.get_config(fresh).residual is residual
    torch.testing.assert_close(output_of(fresh, inputs), expected, rtol=0, atol=0)
