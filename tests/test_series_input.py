"""Series adapters on a layer's input (LLM-Adapters' mh_adapter): placement, values and LLaMA-7B counts."""

from __future__ import annotations

import pytest
import torch
import transformers as T

import adapterlab as al
from adapterlab.errors import AdapterError
from adapterlab.core.site_hooks import placed
from tiny_models import output_of, randomize_adapters, tiny_inputs, tiny_model


def llama_7b_on_meta() -> torch.nn.Module:
    config = T.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                           vocab_size=32000)
    with torch.device("meta"):
        return T.LlamaForCausalLM(config)


def test_their_llama_7b_series_command_counts_134m():
    """LLM-Adapters' LLaMA-7B series command (bottleneck 256, targets up_proj/gate_proj, no bias): their mh_adapter
    is Linear(in_features, in_features) with adapter_down 4096x256 and adapter_up 256x4096, no bias, on each of the
    two targets of 32 layers: 32 * 2 * 2 * 4096 * 256 = 134,217,728 (the output side would read 11008 wide)."""
    model = llama_7b_on_meta()
    al.attach(model, "series", targets=["up_proj", "gate_proj"], input_targets=["mlp_in"], size=256, bias=False)
    trainable, _ = al.count_parameters(model)
    assert trainable == 32 * 2 * 2 * 4096 * 256 == 134_217_728
    shapes = {tuple(a.down.weight.shape) for _, _, a in placed(model)}
    assert shapes == {(256, 4096)}


def test_their_default_bottleneck_targets_on_llama_7b():
    """AdapterH with their default targets (gate, up, down): inputs of gate/up and the output of down, all 4096
    wide: 32 * 3 * 2 * 4096 * 256 = 201,326,592 (their README's "200M")."""
    model = llama_7b_on_meta()
    al.attach(model, "series", targets=["gate_proj", "up_proj", "down_proj"], input_targets=["mlp_in"], bias=False)
    assert al.count_parameters(model)[0] == 201_326_592


def test_input_side_adapter_feeds_x_plus_f_of_x_to_the_layer():
    """With input_targets, up_proj computes W(x + s*f(x)); the other targets keep y + s*f(y)."""
    model = tiny_model("llama")
    inputs = tiny_inputs("llama")
    al.attach(model, "series", targets=["up", "down"], input_targets=["up"], size=4, bias=False)
    randomize_adapters(model)
    seen = {}
    up = model.model.layers[0].mlp.up_proj
    hooks = [up.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]), prepend=True),
             up.register_forward_hook(lambda m, args, out: seen.update(y=out))]
    output_of(model, inputs)
    for hook in hooks:
        hook.remove()
    adapter = up.adapterlab["default"]
    assert adapter.placement == "input" and tuple(adapter.down.weight.shape) == (4, 32)
    x = seen["x"]  # the block's raw input to up_proj
    with torch.no_grad():
        expected = torch.nn.functional.linear(x + adapter.delta(x), up.weight)
    assert torch.allclose(seen["y"], expected, atol=1e-6)
    assert not torch.allclose(seen["y"], torch.nn.functional.linear(x, up.weight), atol=1e-4)
    down = model.model.layers[0].mlp.down_proj.adapterlab["default"]
    assert down.placement == "series" and tuple(down.down.weight.shape) == (4, 32)


@pytest.mark.parametrize("family, entry, exit_", [
    ("llama", {"gate_proj", "up_proj"}, "down_proj"), ("bloom", {"dense_h_to_4h"}, "dense_4h_to_h"),
    ("gptj", {"fc_in"}, "fc_out"), ("opt", {"fc1"}, "fc2"),
])
def test_mlp_in_is_their_mh_adapter_table(family, entry, exit_):
    """mlp_in names exactly the layers LLM-Adapters' TRANSFORMERS_MODELS_TO_ADAPTER_TYPE_MAPPING calls mh_adapter."""
    model = tiny_model(family)
    al.attach(model, "series", targets=[*sorted(entry), exit_], input_targets=["mlp_in"], size=4)
    kinds = {path.rsplit(".", 1)[-1]: a.placement for path, _, a in placed(model)}
    assert kinds == {**{name: "input" for name in entry}, exit_: "series"}


def test_gpt_neo_mlp_in_is_c_fc():
    """GPT-Neo (their table: c_fc mh_adapter, c_proj output_adapter)."""
    config = T.GPTNeoConfig(hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global"], 2]],
                            vocab_size=64, max_position_embeddings=64)
    model = T.GPTNeoForCausalLM(config)
    al.attach(model, "series", targets=["c_fc", "c_proj"], input_targets=["mlp_in"], size=4)
    kinds = {path.split(".", 3)[-1]: a.placement for path, _, a in placed(model)}
    assert kinds == {"mlp.c_fc": "input", "mlp.c_proj": "series"}


def test_input_targets_refuse_a_sublayer():
    """input_targets=['mlp'] -> an error saying input targets are linear layers."""
    with pytest.raises(AdapterError, match="linear layer's input"):
        al.attach(tiny_model("llama"), "series", targets=["mlp"], input_targets=["mlp"])


def test_input_side_adapter_saves_and_loads(tmp_path):
    """A saved input-side series adapter loads back with the same outputs."""
    model = tiny_model("llama")
    inputs = tiny_inputs("llama")
    al.attach(model, "series", targets=["mlp_in", "down"], input_targets=["mlp_in"], size=4, bias=False)
    randomize_adapters(model)
    expected = output_of(model, inputs)
    al.save_adapter(model, tmp_path / "a")
    fresh = tiny_model("llama")
    al.load_adapter(fresh, tmp_path / "a")
    assert torch.allclose(output_of(fresh, inputs), expected, atol=1e-6)
