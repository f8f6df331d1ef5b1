"""Compacter / Compacter++: parameter counts equal to AdapterHub's on BERT-base, PHM layers and whole adapters equal to
a reference written from AdapterHub's PHMLayer / Adapter, and the engine's shared parameters (one rule per attached
adapter) trained, saved, loaded, copied and detached as a user relies on."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as T
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_models import output_of, randomize_adapters, tiny_inputs, tiny_model

import adapterlab as al
from adapterlab.core.engine import placed
from adapterlab.core.shared_params import SHARED_ATTR, shared_of
from adapterlab.methods.compacter import CompacterConfig
from adapterlab.methods.phm import PHMLayer

pytestmark = pytest.mark.usefixtures("single_thread")


def bert_base() -> torch.nn.Module:
    """A randomly initialised BERT-base (hidden 768, 12 layers), on the meta device: only shapes are counted."""
    with torch.device("meta"):
        return T.BertModel(T.BertConfig())


def adapterhub_count(hidden: int, layers: int, adapters_per_layer: int, shared_w: bool = False) -> int:
    """Trainable parameters of AdapterHub's Compacter (modeling.Adapter with two PHMLayers, shared parameters from
    init_shared_parameters) for their defaults: reduction_factor 32, phm_dim 4, phm_rank 1, factorized W, phm_bias,
    one rule (phm_dim, phm_dim, phm_dim) per model (shared_phm_rule)."""
    n, rank = 4, 1
    down = hidden // 32                            # bottleneck.py: hidden_size // reduction_factor = 768 // 32 = 24
    w_down = n * (hidden // n) * rank + n * rank * (down // n)  # W_left (4, 192, 1) + W_right (4, 1, 6) = 768 + 24
    w_up = n * (down // n) * rank + n * rank * (hidden // n)    # W_left (4, 6, 1) + W_right (4, 1, 192) = 24 + 768
    biases = down + hidden                         # b of the down (24) and up (768) PHMLayer
    rule = n * n * n                               # phm_rule (4, 4, 4) = 64, once
    sites = layers * adapters_per_layer
    if shared_w:                                   # W_down_left/right, W_up_left/right once in shared_parameters
        return sites * biases + w_down + w_up + rule
    return sites * (w_down + w_up + biases) + rule


def test_counts_on_bert_base_equal_adapterhub():
    # CompacterConfig (DoubleSeqBn: mh_adapter and output_adapter): 24 * (792 + 792 + 792) + 64 = 57,088
    # CompacterPlusPlusConfig (SeqBn: output_adapter only):         12 * 2,376 + 64 = 28,576
    assert adapterhub_count(768, 12, 2) == 24 * 2376 + 64 == 57_088
    assert adapterhub_count(768, 12, 1) == 12 * 2376 + 64 == 28_576
    for method, per_layer in (("compacter", 2), ("compacterpp", 1)):
        model = bert_base()
        al.attach(model, method)
        assert al.count_parameters(model)[0] == adapterhub_count(768, 12, per_layer), method
    model = bert_base()  # shared_W_phm: 24 * 792 + 1,584 + 64 = 20,656
    al.attach(model, "compacter", shared_W_phm=True)
    assert al.count_parameters(model)[0] == adapterhub_count(768, 12, 2, shared_w=True) == 20_656


def reference_phm(x: torch.Tensor, rule: torch.Tensor, w_left: torch.Tensor, w_right: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """AdapterHub's PHMLayer.forward (factorized W): W = bmm(W_left, W_right); H = sum_k kron(rule_k, W_k);
    y = x @ H + b (torch.kron here, their kronecker_product there)."""
    weights = torch.bmm(w_left, w_right)
    h = sum(torch.kron(rule[k], weights[k]) for k in range(rule.shape[0]))
    y = x @ h
    return y + bias if bias is not None else y


def randomized(module: torch.nn.Module, seed: int = 0) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()


@pytest.mark.parametrize("factorized_rule", [False, True])
def test_phm_layer_equals_adapterhub_reference(factorized_rule):
    config = CompacterConfig(phm_rank=2, factorized_phm_rule=factorized_rule)
    layer = PHMLayer(32, 8, config)
    randomized(layer)
    x = torch.randn(3, 5, 32)
    rule = layer.rule()
    if factorized_rule:  # their phm_rule = bmm(phm_rule_left (n, n, 1), phm_rule_right (n, 1, n))
        rule = torch.bmm(layer.rule.left, layer.rule.right)
    expected = reference_phm(x, rule, layer.weight.left, layer.weight.right, layer.bias)
    torch.testing.assert_close(layer(x), expected)
    assert layer.weight.left.shape == (4, 8, 2) and layer.weight.right.shape == (4, 2, 2)


def reference_adapter(x: torch.Tensor, adapter: torch.nn.Module, rule: torch.Tensor) -> torch.Tensor:
    """AdapterHub's Adapter.forward with PHM layers, defaults (residual_before_ln, scaling 1, no ln_before/after):
    up(gelu(down(x))) + x, the residual being the adapter's own input."""
    down, up = adapter.down, adapter.up
    h = torch.nn.functional.gelu(reference_phm(x, rule, down.weight.left, down.weight.right, down.bias))
    return reference_phm(h, rule, up.weight.left, up.weight.right, up.bias) + x


def test_whole_adapters_and_bert_sublayers_equal_adapterhub_reference():
    """Every placed adapter equals the reference; and BERT's BertSelfOutput / BertOutput with the adapter compute
    LayerNorm(adapter(dense(h)) + input), AdapterHub's bottleneck_layer_forward for Houlsby's placement."""
    model = tiny_model("bert")
    al.attach(model, "compacter", size=8)
    randomize_adapters(model, seed=3)
    rule = shared_of(model, "default").rule()
    x = torch.randn(2, 4, 32)
    adapters = list(placed(model))
    assert len(adapters) == 4  # 2 blocks x (attention output, MLP output)
    for _, _, adapter in adapters:
        torch.testing.assert_close(adapter.adapt_output(None, x), reference_adapter(x, adapter, rule))
    layer = model.bert.encoder.layer[0]
    for sublayer, width in ((layer.attention.output, 32), (layer.output, 64)):
        hidden, residual = torch.randn(2, 4, width), torch.randn(2, 4, 32)
        adapter = sublayer.dense.adapterlab["default"]
        dense = torch.nn.functional.linear(hidden, sublayer.dense.weight, sublayer.dense.bias)  # without the hook
        expected = sublayer.LayerNorm(reference_adapter(dense, adapter, rule) + residual)
        with al.disabled(model):
            assert not torch.allclose(sublayer(hidden, residual), expected)
        torch.testing.assert_close(sublayer(hidden, residual), expected)


def test_rule_is_shared_once_and_gradients_reach_only_the_adapter():
    model = tiny_model("bert")
    al.attach(model, "compacter", size=8)
    randomize_adapters(model, seed=1)
    shared = shared_of(model, "default")
    layers = [m for _, _, a in placed(model) for m in (a.down, a.up)]
    assert all(layer.rule is shared.rule for layer in layers)  # one rule object, held by reference
    keys = [k for k in model.state_dict() if k.endswith(".rule")]
    assert keys == [f"{SHARED_ATTR}.adapterlab.default.rule.rule"]
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert al.count_parameters(model)[0] == sum(p.numel() for p in trainable.values())
    model.train()
    output_of(model, tiny_inputs("bert")).pow(2).mean().backward()
    assert all("adapterlab" in n.split(".") for n in trainable)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    assert shared.rule.rule.grad is not None and shared.rule.rule.grad.abs().sum() > 0
    assert all(p.grad is not None for p in trainable.values())


def test_save_load_round_trip_keeps_the_shared_rule(tmp_path):
    model = tiny_model("bert")
    al.attach(model, "compacterpp", size=8, learn_phm=False)  # the rule a buffer: saved although not trained
    randomize_adapters(model, seed=2)
    assert not any(k.endswith("rule") for k, p in model.named_parameters())
    x = tiny_inputs("bert")
    expected = output_of(model, x)
    al.save_adapter(model, tmp_path)
    with safe_open(tmp_path / "adapter.safetensors", "pt") as saved:
        assert [k for k in saved.keys() if "rule" in k] == [f"{SHARED_ATTR}.rule.rule"]  # once, not per layer
    fresh = tiny_model("bert")
    al.load_adapter(fresh, tmp_path)
    torch.testing.assert_close(output_of(fresh, x), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(shared_of(fresh, "default").rule.rule, shared_of(model, "default").rule.rule)
    # a file without the shared rule is refused from its header, before anything is attached
    state = load_file(str(tmp_path / "adapter.safetensors"))
    del state[f"{SHARED_ATTR}.rule.rule"]
    save_file(state, str(tmp_path / "adapter.safetensors"))
    other = tiny_model("bert")
    with pytest.raises(al.IncompatibleAdapterError, match="1 missing entries .*adapterlab_shared.rule.rule"):
        al.load_adapter(other, tmp_path)
    assert shared_of(other, "default") is None and not al.adapter_names(other)


def test_two_adapters_keep_their_own_rules_and_detach_removes_them():
    model = tiny_model("bert")
    keys = list(model.state_dict())
    al.attach(model, "compacter", "a", size=8)
    al.attach(model, "compacterpp", "b", size=8, shared_W_phm=True)
    assert shared_of(model, "a") is not shared_of(model, "b")
    assert al.count_parameters(model)[0] == sum(p.numel() for n, p in model.named_parameters()
                                                if p.requires_grad and ".b." in f".{n}.")
    twin = copy.deepcopy(model)
    twin_layer = next(a for _, _, a in placed(twin, "b"))
    assert twin_layer.down.rule is shared_of(twin, "b").rule and twin_layer.up.weight is shared_of(twin, "b").W_up
    al.detach(model, "a")
    assert shared_of(model, "a") is None and shared_of(model, "b") is not None
    al.detach(model, "b")
    assert list(model.state_dict()) == keys and not hasattr(model, SHARED_ATTR)


def test_refusals_name_the_problem():
    model = tiny_model("bert")
    al.attach(model, "compacter", size=8)
    with pytest.raises(al.NotMergeableError, match=r"\(compacter\) cannot be merged"):
        al.merge(model)
    with pytest.raises(al.AdapterError, match="both `size`.*pass one of them"):
        al.attach(tiny_model("bert"), "compacter", size=8, reduction_factor=16)
    with pytest.raises(al.AdapterError, match="bottleneck width .* is 1, not a positive multiple of phm_dim=4"):
        al.attach(tiny_model("bert"), "compacter")  # 32 // 32
    with pytest.raises(al.AdapterError, match="shared_W_phm shares one weight .* widths \\[16, 32\\]"):
        al.attach(tiny_model("swin"), "compacter", size=8, shared_W_phm=True)
    with pytest.raises(al.AdapterError, match="hypercomplex_nonlinearity"):
        al.attach(tiny_model("bert"), "compacter", size=8, hypercomplex_nonlinearity="phm")


def test_zero_init_starts_as_the_identity_and_default_init_nearly():
    """The default rules are N(0, 1e-4) (AdapterHub's phm_init_range) and enter both PHM layers, so the adapter's
    delta starts of order 1e-8: nearly the identity; init="zero" starts exactly there."""
    x = tiny_inputs("bert")
    base = output_of(tiny_model("bert"), x)
    model = tiny_model("bert")
    al.attach(model, "compacter", size=8, init="zero")
    torch.testing.assert_close(output_of(model, x), base, atol=0, rtol=0)
    model = tiny_model("bert")
    al.attach(model, "compacter", size=8)
    adapter = next(a for _, _, a in placed(model))
    delta = adapter.delta(torch.randn(2, 4, 32))
    assert 0 < delta.abs().max() < 1e-6


def test_training_run_trains_and_checkpoints_the_shared_rule_once(tmp_path):
    """`adapterlab train --adapter compacter`: the Trainer's optimizer sees the shared rule (it moves between
    checkpoints), checkpoints and the saved adapter hold it once, and the saved adapter loads."""
    from train_helpers import causal_folder, math_records, write_json

    from adapterlab.train import TrainConfig, train
    from adapterlab.train.checkpointing import TRAINABLE_NAME

    model_dir = causal_folder(tmp_path / "llama")
    data = write_json(tmp_path / "math.json", math_records(16))
    out = tmp_path / "run"
    train(TrainConfig(model=str(model_dir), data=[str(data)], output=str(out), adapter="compacter",
                      adapter_options={"size": 8}, max_steps=4, batch_size=4, micro_batch_size=2, warmup_steps=0,
                      lr=1e-2, logging_steps=1, save_steps=2))
    rules = []
    for step in (2, 4):
        saved = load_file(str(out / "checkpoints" / f"checkpoint-{step}" / TRAINABLE_NAME))
        keys = [k for k in saved if k.endswith(".rule")]
        assert keys == [f"{SHARED_ATTR}.adapterlab.default.rule.rule"]
        rules.append(saved[keys[0]])
    assert not torch.equal(*rules)
    with safe_open(out / "adapter.safetensors", "pt") as saved:
        torch.testing.assert_close(saved.get_tensor(f"{SHARED_ATTR}.rule.rule"), rules[1])
    fresh = T.AutoModelForCausalLM.from_pretrained(model_dir)
    al.load_adapter(fresh, out)
    torch.testing.assert_close(shared_of(fresh, "default").rule.rule, rules[1])
