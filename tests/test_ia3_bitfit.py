"""(IA)^3 and BitFit: their math, merging, gradients, checkpoints, meta-device attach and bad options."""

from __future__ import annotations

import copy

import pytest
import torch

import adapterlab
from adapterlab.core.engine import placed
from adapterlab.errors import AdapterError, NotMergeableError, TargetNotFoundError

from tiny_models import randomize_adapters, tiny_config, tiny_inputs, tiny_model

FAMILIES = ["llama", "gpt2", "opt", "bloom", "bert"]


def adapters_by_path(model: torch.nn.Module) -> dict:
    return {path: adapter for path, _, adapter in placed(model)}


def outputs(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """Logits and last hidden state, flattened: BERT's classifier logits are ~0.02, its hidden states ~1."""
    out = model(**{k: v for k, v in inputs.items() if k != "labels"}, output_hidden_states=True)
    return torch.cat([out.logits.flatten(), out.hidden_states[-1].flatten()]).detach()


def base_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "adapterlab" not in k}


# ---------------------------------------------------------------- (IA)^3


def test_ia3_scales_outputs_of_attention_and_inputs_of_down() -> None:
    model = tiny_model("llama")
    adapterlab.attach(model, "ia3")
    randomize_adapters(model, std=0.5)
    adapters = adapters_by_path(model)
    assert sorted(p.rsplit(".", 1)[-1] for p in adapters if ".0." in p) == ["down_proj", "k_proj", "v_proj"]
    block = model.model.layers[0]
    x_attn = torch.randn(3, 32)
    k = adapters["model.layers.0.self_attn.k_proj"].ia3_l
    assert k.shape == (16, 1)  # PEFT's shape: out features of k_proj (2 kv heads of 8)
    expected = torch.nn.functional.linear(x_attn, block.self_attn.k_proj.weight) * k.flatten()
    torch.testing.assert_close(block.self_attn.k_proj(x_attn), expected)
    x_mlp = torch.randn(3, 64)
    down = adapters["model.layers.0.mlp.down_proj"].ia3_l
    assert down.shape == (1, 64)
    expected = torch.nn.functional.linear(x_mlp * down.flatten(), block.mlp.down_proj.weight)
    torch.testing.assert_close(block.mlp.down_proj(x_mlp), expected)


def test_ia3_on_gpt2_conv1d_defaults_to_fused_qkv_and_mlp_projection() -> None:
    model = tiny_model("gpt2")
    adapterlab.attach(model, "ia3")
    randomize_adapters(model, std=0.5)
    adapters = adapters_by_path(model)
    assert sorted(adapters) == ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_proj",
                                "transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_proj"]
    c_attn, c_proj = model.transformer.h[0].attn.c_attn, model.transformer.h[0].mlp.c_proj
    x = torch.randn(2, 32)
    l_attn = adapters["transformer.h.0.attn.c_attn"].ia3_l.flatten()
    torch.testing.assert_close(c_attn(x), (x @ c_attn.weight + c_attn.bias) * l_attn)  # bias scaled too
    h = torch.randn(2, 128)
    l_mlp = adapters["transformer.h.0.mlp.c_proj"].ia3_l.flatten()
    torch.testing.assert_close(c_proj(h), (h * l_mlp) @ c_proj.weight + c_proj.bias)


def test_ia3_feedforward_option_picks_input_scaling() -> None:
    model = tiny_model("llama")
    adapterlab.attach(model, "ia3", targets=["q_proj", "up_proj"], feedforward=["up_proj"])
    shapes = {p.rsplit(".", 1)[-1]: a.ia3_l.shape for p, a in adapters_by_path(model).items()}
    assert shapes == {"q_proj": (32, 1), "up_proj": (1, 32)}


@pytest.mark.parametrize("family", FAMILIES)
def test_ia3_merge_matches_unmerged_and_unmerge_restores(family: str) -> None:
    model = tiny_model(family)
    before = base_state(model)
    adapterlab.attach(model, "ia3", targets=["q", "k", "v", "o", "up", "down"])
    randomize_adapters(model, std=0.3)
    inputs = tiny_inputs(family)
    unmerged = outputs(model, inputs)
    with adapterlab.disabled(model):
        assert (outputs(model, inputs) - unmerged).abs().max() > 1e-3
    adapterlab.merge(model)
    torch.testing.assert_close(outputs(model, inputs), unmerged, atol=1e-5, rtol=0)
    adapterlab.unmerge(model)
    for key, value in base_state(model).items():  # division restores to rounding
        torch.testing.assert_close(value, before[key], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(outputs(model, inputs), unmerged, atol=1e-6, rtol=0)


def test_ia3_refuses_to_merge_a_zero_and_leaves_nothing_merged() -> None:
    model = tiny_model("opt")
    adapterlab.attach(model, "ia3")
    randomize_adapters(model, std=0.3)
    before = base_state(model)
    last = list(adapters_by_path(model).values())[-1]
    with torch.no_grad():
        last.ia3_l[0, 0] = 0.0
    with pytest.raises(NotMergeableError, match="zeros"):
        adapterlab.merge(model)
    assert not any(a.merged for a in adapters_by_path(model).values())
    for key, value in base_state(model).items():
        torch.testing.assert_close(value, before[key], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("method", ["ia3", "bitfit"])
def test_gradients_reach_only_adapter_parameters(method: str) -> None:
    model = tiny_model("llama").train()
    adapterlab.attach(model, method)
    inputs = tiny_inputs("llama")
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    for name, p in model.named_parameters():
        if "adapterlab" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


@pytest.mark.parametrize("method", ["ia3", "bitfit"])
def test_save_load_round_trip(method: str, tmp_path) -> None:
    model = tiny_model("gpt2")
    adapterlab.attach(model, method)
    randomize_adapters(model, std=0.3)
    inputs = tiny_inputs("gpt2")
    adapterlab.save_adapter(model, tmp_path)
    loaded = adapterlab.load_adapter(tiny_model("gpt2"), tmp_path)
    torch.testing.assert_close(outputs(loaded, inputs), outputs(model, inputs), atol=0, rtol=0)


# tiny LLaMA, 2 blocks: ia3 = k (16 out) + v (16 out) + down (64 in); bitfit = outputs of q k v o up gate down,
# and of the two RMSNorms per block and the final one
@pytest.mark.parametrize("method, expected", [("ia3", 2 * (16 + 16 + 64)),
                                              ("bitfit", 2 * (32 + 16 + 16 + 32 + 64 + 64 + 32 + 2 * 32) + 32)])
def test_attach_on_meta_device(method: str, expected: int) -> None:
    import transformers

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(tiny_config("llama"))
    adapterlab.attach(model, method)
    assert adapterlab.count_parameters(model)[0] == expected
    assert all(p.is_meta for _, _, a in placed(model) for p in a.parameters())


@pytest.mark.parametrize("options, error", [
    ({"feedforward": [3]}, AdapterError),
    ({"feedforward": ["no_such_layer"]}, TargetNotFoundError),
    ({"targets": ["input_layernorm"]}, AdapterError),  # not a linear layer
    ({"bogus": 1}, AdapterError),
])
def test_ia3_bad_options(options: dict, error: type) -> None:
    with pytest.raises(error):
        adapterlab.attach(tiny_model("llama"), "ia3", **options)


class RenamedMLP(torch.nn.Module):
    """LLaMA's MLP with its down projection renamed `ffn_out`, a name neither the llama row nor discovery knows."""

    def __init__(self, mlp: torch.nn.Module) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.ffn_out, self.act_fn = mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_out(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def renamed_llama() -> torch.nn.Module:
    """The tiny LLaMA with renamed down projections and a model type that has no architecture row."""
    model = tiny_model("llama")
    for block in model.model.layers:
        block.mlp = RenamedMLP(block.mlp)
    model.config.model_type = "renamed_llama"
    return model


def test_ia3_honours_the_architecture_override() -> None:
    """An architecture= override naming the down projection gives the same IA3 as on the standard model."""
    standard, renamed = tiny_model("llama"), renamed_llama()
    adapterlab.attach(standard, "ia3")
    adapterlab.attach(renamed, "ia3", architecture={"down": "mlp.ffn_out"})
    randomize_adapters(standard, std=0.3)
    randomize_adapters(renamed, std=0.3)
    layout = {p.replace("ffn_out", "down_proj"): (a.feedforward, tuple(a.ia3_l.shape))
              for p, a in adapters_by_path(renamed).items()}
    assert layout == {p: (a.feedforward, tuple(a.ia3_l.shape)) for p, a in adapters_by_path(standard).items()}
    assert layout["model.layers.0.mlp.down_proj"] == (True, (1, 64))  # input scaling, not output scaling
    inputs = tiny_inputs("llama")
    torch.testing.assert_close(outputs(renamed, inputs), outputs(standard, inputs))


def test_ia3_refuses_when_it_cannot_tell_the_feedforward_layers() -> None:
    """Named targets on a model whose down projection is unknown: an error, not silent output scaling."""
    with pytest.raises(AdapterError, match=r"ia3 .*no down projection.*feedforward=\[\.\.\.\]"):
        adapterlab.attach(renamed_llama(), "ia3", targets=["k_proj", "v_proj", "ffn_out"])
    model = adapterlab.attach(renamed_llama(), "ia3", targets=["k_proj", "v_proj", "ffn_out"], feedforward=["ffn_out"])
    assert adapters_by_path(model)["model.layers.1.mlp.ffn_out"].feedforward


# ---------------------------------------------------------------- BitFit


def test_bitfit_adds_a_bias_to_each_projection_output() -> None:
    model = tiny_model("llama")
    adapterlab.attach(model, "bitfit", norms=False)
    randomize_adapters(model, std=0.5)
    adapters = adapters_by_path(model)
    assert len(adapters) == 2 * 7  # q k v o up gate down in each of 2 blocks
    proj = model.model.layers[1].mlp.gate_proj
    x = torch.randn(3, 32)
    delta = adapters["model.layers.1.mlp.gate_proj"].bias_delta
    torch.testing.assert_close(proj(x), torch.nn.functional.linear(x, proj.weight) + delta)


def test_bitfit_defaults_fit_the_family() -> None:
    bert = adapterlab.attach(tiny_model("bert"), "bitfit", norms=False)  # BERT has no gate projection: skipped
    assert len(adapters_by_path(bert)) == 2 * 6
    gpt2 = adapterlab.attach(tiny_model("gpt2"), "bitfit")  # fused c_attn takes q, k and v
    assert sorted({p.split(".", 3)[-1] for p in adapters_by_path(gpt2)}) == [
        "attn.c_attn", "attn.c_proj", "ln_1", "ln_2", "ln_f", "mlp.c_fc", "mlp.c_proj"]


# tiny BERT (hidden 32, intermediate 64, 2 blocks), by hand. Linear biases per block: query, key, value and
# attention.output.dense 4 x 32, intermediate.dense 64, output.dense 32. LayerNorm biases: the embeddings'
# 32, and attention.output.LayerNorm + output.LayerNorm 2 x 32 per block. Not the pooler or the classifier.
TINY_BERT_LINEAR_BIASES = 2 * (4 * 32 + 64 + 32)
TINY_BERT_NORM_BIASES = 32 + 2 * 2 * 32  # 448 + 160 = 608


@pytest.mark.parametrize("norms, expected", [(True, TINY_BERT_LINEAR_BIASES + TINY_BERT_NORM_BIASES),
                                             (False, TINY_BERT_LINEAR_BIASES)])
def test_bitfit_trains_every_bias_norms_included(norms: bool, expected: int) -> None:
    """BitFit's "all biases" (Ben Zaken et al.): LayerNorm biases count; norms=False leaves them out."""
    model = tiny_model("bert")
    adapterlab.attach(model, "bitfit", norms=norms)
    assert adapterlab.count_parameters(model)[0] == expected
    norm_sites = [p for p in adapters_by_path(model) if p.endswith("LayerNorm")]
    assert len(norm_sites) == (5 if norms else 0) and all(p.startswith("bert.") for p in norm_sites)


@pytest.mark.parametrize("norms, expected", [(True, 102_144), (False, 82_944)])
def test_bitfit_count_on_ast_base(norms: bool, expected: int) -> None:
    """AST-base (ASTConfig() defaults, 12 blocks of width 768, MLP 3072) on the meta device: 12 x (4 x 768
    + 3072 + 768) = 82,944 Linear biases, plus 12 x 2 x 768 + 768 = 19,200 LayerNorm biases (the final
    norm included, the classifier head's not) = 102,144, the PETL-for-AST paper's ~0.1M."""
    import transformers

    with torch.device("meta"):
        model = transformers.ASTForAudioClassification(transformers.ASTConfig())
    adapterlab.attach(model, "bitfit", norms=norms)
    assert adapterlab.count_parameters(model)[0] == expected


def test_bitfit_norms_merge_into_layernorm_biases_and_follow_layers() -> None:
    model = tiny_model("bert")
    inputs = tiny_inputs("bert")
    before = base_state(model)
    adapterlab.attach(model, "bitfit")
    randomize_adapters(model, std=0.3)
    unmerged = outputs(model, inputs)
    adapterlab.merge(model)
    torch.testing.assert_close(outputs(model, inputs), unmerged, atol=1e-5, rtol=0)
    delta = adapters_by_path(model)["bert.embeddings.LayerNorm"].bias_delta
    torch.testing.assert_close(model.bert.embeddings.LayerNorm.bias, before["bert.embeddings.LayerNorm.bias"] + delta)
    adapterlab.detach(model)
    adapterlab.attach(model, "bitfit", layers=[1])  # norms of block 1 only; embeddings' norm is in no block
    assert sorted(p for p in adapters_by_path(model) if "LayerNorm" in p) == [
        "bert.encoder.layer.1.attention.output.LayerNorm", "bert.encoder.layer.1.output.LayerNorm"]


BERT_ALL_BIASES = ["q", "k", "v", "o", "up", "down", "LayerNorm"]


def test_bitfit_trains_exactly_what_training_the_real_biases_would() -> None:
    """Original BitFit on BERT: every bias of the encoder (projections and LayerNorms). Same gradients,
    and after one Adam step the same model, whether the deltas or the biases themselves are trained."""
    deltas = tiny_model("bert").train()
    biases = copy.deepcopy(deltas)
    adapterlab.attach(deltas, "bitfit", targets=BERT_ALL_BIASES)
    sites = adapters_by_path(deltas)
    assert sum(".LayerNorm" in p for p in sites) == 1 + 2 * 2  # embeddings', and 2 per block
    for p in biases.parameters():
        p.requires_grad_(False)
    real = {path: biases.get_submodule(path).bias for path in sites}
    for bias in real.values():
        bias.requires_grad_(True)

    inputs = {**tiny_inputs("bert"), "labels": torch.tensor([0, 2])}
    torch.manual_seed(0)  # same dropout masks in both forwards
    deltas(**inputs).loss.backward()
    torch.manual_seed(0)
    biases(**inputs).loss.backward()
    for path, adapter in sites.items():
        torch.testing.assert_close(adapter.bias_delta.grad, real[path].grad, atol=1e-7, rtol=1e-5)

    torch.optim.Adam([a.bias_delta for a in sites.values()], lr=0.1).step()
    torch.optim.Adam(list(real.values()), lr=0.1).step()
    deltas.eval(), biases.eval()
    torch.testing.assert_close(outputs(deltas, inputs), outputs(biases, inputs), atol=1e-6, rtol=0)
    adapterlab.merge(deltas)  # BERT's layers all have biases, so the deltas fold into them
    for path in sites:
        torch.testing.assert_close(deltas.get_submodule(path).bias, real[path].detach(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["bert", "gpt2", "opt", "bloom"])
def test_bitfit_merge_matches_unmerged_on_biased_layers(family: str) -> None:
    model = tiny_model(family)
    before = base_state(model)
    adapterlab.attach(model, "bitfit")
    randomize_adapters(model, std=0.3)
    inputs = tiny_inputs(family)
    unmerged = outputs(model, inputs)
    adapterlab.merge(model)
    torch.testing.assert_close(outputs(model, inputs), unmerged, atol=1e-5, rtol=0)
    adapterlab.unmerge(model)
    for key, value in base_state(model).items():
        torch.testing.assert_close(value, before[key], atol=1e-6, rtol=0)


def test_bitfit_merge_into_bias_free_layers_is_refused_and_nothing_changes() -> None:
    """Qwen2 has biases on q, k, v but not on o or the MLP: merging must fail whole, not half."""
    model = tiny_model("qwen2")
    before = base_state(model)
    adapterlab.attach(model, "bitfit")
    randomize_adapters(model, std=0.3)
    inputs = tiny_inputs("qwen2")
    unmerged = outputs(model, inputs)
    with pytest.raises(NotMergeableError, match="without a bias"):
        adapterlab.merge(model)
    assert not any(a.merged for a in adapters_by_path(model).values())
    for key, value in base_state(model).items():
        torch.testing.assert_close(value, before[key], atol=1e-6, rtol=0)
    torch.testing.assert_close(outputs(model, inputs), unmerged, atol=1e-6, rtol=0)
    adapterlab.detach(model)
    adapterlab.attach(model, "bitfit", targets=["q", "k", "v"], norms=False)  # only biased layers: mergeable
    adapterlab.merge(model)


def test_bitfit_bad_targets() -> None:
    with pytest.raises(AdapterError, match="no per-feature weight or bias"):
        adapterlab.attach(tiny_model("llama"), "bitfit", targets=["self_attn"])
    with pytest.raises(AdapterError, match="unknown option"):
        adapterlab.attach(tiny_model("llama"), "bitfit", r=4)
    with pytest.raises(TargetNotFoundError):
        adapterlab.attach(tiny_model("llama"), "bitfit", targets=["no_such_layer"])


def test_bitfit_saved_before_norms_existed_loads_as_it_was_trained(tmp_path) -> None:
    """An adapter_config.json without `norms` (older saves) loads with the projections' biases only."""
    import json

    model = adapterlab.attach(tiny_model("gpt2"), "bitfit", norms=False)
    randomize_adapters(model, std=0.3)
    adapterlab.save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    del config["norms"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    loaded = adapterlab.load_adapter(tiny_model("gpt2"), tmp_path)
    assert adapterlab.get_config(loaded).norms is False
    inputs = tiny_inputs("gpt2")
    torch.testing.assert_close(outputs(loaded, inputs), outputs(model, inputs), atol=0, rtol=0)
