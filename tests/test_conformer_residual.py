"""Conformer `residual`: PETL-for-AST's --apply_residual on their Conformer adapter, the four layer cells."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_bottleneck import TOY, Toy
from tiny_models import output_of, randomize_adapters, tiny_inputs, tiny_model

import adapterlab as al

CELLS = [("parallel", False), ("parallel", True), ("series", False), ("series", True)]


def their_conformer(adapter, t: torch.Tensor) -> torch.Tensor:
    """PETL_AST's Conformer_adapter.forward with this adapter's weights (their LayerNorm result is unused, so
    input_norm=False): pointwise conv, GLU over channels, depthwise conv ("same"), BatchNorm (running
    statistics: eval mode), SiLU, pointwise conv, dropout 0. Their depthwise bias, cancelled by BatchNorm's
    mean in training, is left out as here."""
    out = F.conv1d(t.transpose(-1, -2), adapter.pointwise_in.weight, adapter.pointwise_in.bias)
    out = F.glu(out, dim=1)
    out = F.conv1d(out, adapter.depthwise.weight, padding="same", groups=out.shape[1])
    bn = adapter.norm
    out = F.batch_norm(out, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)
    out = F.conv1d(F.silu(out), adapter.pointwise_out.weight, adapter.pointwise_out.bias)
    return out.transpose(-1, -2)


def their_layer(layer, hidden: torch.Tensor, adapter, seq_or_par: str, apply_residual: bool) -> torch.Tensor:
    """Their ASTLayer_adapter.forward, Pfeiffer (FFN adapter only): parallel adds A(LN_after(h)) beside the FFN
    (ASTOutput keeps its residual add), sequential replaces ASTOutput by one without it and adds A(FFN out);
    APPLY_RESIDUAL adds LN_after(h) (parallel) or the FFN output (sequential)."""
    h = layer.attention(layer.layernorm_before(hidden))[0] + hidden
    normed = layer.layernorm_after(h)
    ffn = layer.mlp(normed)  # dense(intermediate(.)) without the residual add: transformers 5's AST MLP
    if seq_or_par == "parallel":
        out = ffn + h + their_conformer(adapter, normed)
        return out + normed if apply_residual else out
    out = their_conformer(adapter, ffn) + h
    return out + ffn if apply_residual else out


def trained_ast(placement: str, residual: bool | None) -> torch.nn.Module:
    """A tiny AST with a conformer at layer 0's MLP whose BatchNorm has moved off its initial statistics."""
    options = {} if residual is None else {"residual": residual}
    model = tiny_model("ast")
    al.attach(model, "conformer", targets=["mlp"], layers=[0], size=4, kernel_size=8, placement=placement,
              input_norm=False, **options)
    randomize_adapters(model)
    model.train()
    model(**tiny_inputs("ast"))
    return model.eval()


@pytest.mark.parametrize("placement, residual", CELLS)
def test_each_cell_matches_their_ast_layer_code(placement, residual):
    model = trained_ast(placement, residual)
    layer = model.audio_spectrogram_transformer.layers[0]
    adapter = layer.mlp.fc2.adapterlab["default"]
    assert adapter.norm.running_mean.abs().sum() > 0
    hidden = torch.randn(2, 14, 32)
    with torch.no_grad():
        with al.disabled(model):
            expected = their_layer(layer, hidden, adapter, "sequential" if placement == "series" else "parallel",
                                   residual)
        out = layer(hidden)
        torch.testing.assert_close(out[0] if isinstance(out, tuple) else out, expected)


def test_defaults_keep_the_earlier_behaviour_per_placement():
    """Unset: parallel without the residual (their default and best setting), series with it (as before)."""
    assert al.make_config("conformer").residual is False
    assert al.make_config("conformer", placement="series").residual is True
    assert al.make_config("conformer", placement="series", residual=False).residual is False


def test_a_series_adapter_saved_before_the_option_loads_with_its_residual(tmp_path):
    model = trained_ast("series", None)
    inputs = tiny_inputs("ast")
    expected = output_of(model, inputs)
    al.save_adapter(model, tmp_path)
    config_file = tmp_path / "adapter_config.json"
    saved = json.loads(config_file.read_text())
    assert saved.pop("residual") is True
    config_file.write_text(json.dumps(saved))  # as written before `residual` existed
    fresh = al.load_adapter(tiny_model("ast"), tmp_path).eval()
    assert al.get_config(fresh).residual is True
    torch.testing.assert_close(output_of(fresh, inputs), expected, rtol=0, atol=0)


@pytest.mark.parametrize("placement, residual", [("series", False), ("parallel", True)])
def test_the_new_cells_round_trip_through_save_and_load(tmp_path, placement, residual):
    model = trained_ast(placement, residual)
    inputs = tiny_inputs("ast")
    expected = output_of(model, inputs)
    al.save_adapter(model, tmp_path)
    fresh = al.load_adapter(tiny_model("ast"), tmp_path).eval()
    assert al.get_config(fresh).residual is residual
    torch.testing.assert_close(output_of(fresh, inputs), expected, rtol=0, atol=0)


def test_parallel_residual_across_widths_and_a_non_bool_are_refused():
    with pytest.raises(al.AdapterError, match="residual=False"):
        al.attach(Toy(), "conformer", targets=["fc1"], size=3, residual=True, architecture=TOY)
    with pytest.raises(al.AdapterError, match="`residual` is .maybe., but it must be true or false"):
        al.make_config("conformer", residual="maybe")
