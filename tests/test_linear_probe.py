"""linear_probe: only the task head and the encoder's final norm train (PETL for AST's "linear" method)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import output_of, randomize_adapters, tiny_inputs, tiny_model

import adapterlab as al

# family -> (the modules whose parameters linear probing trains, the other paths of the model)
PROBED = {
    "ast": ["audio_spectrogram_transformer.layernorm", "classifier"],  # classifier: ASTMLPHead (norm + dense)
    "vit": ["vit.layernorm", "classifier"],
    "bert": ["classifier"],  # post-norm: no final encoder norm
}


def base_name(name: str) -> str:
    """The base parameter a delta stands for: 'x.adapterlab.default.deltas.weight' -> 'x.weight'."""
    host, leaf = name.split(".adapterlab.")[0], name.rsplit(".", 1)[-1]
    return f"{host}.{leaf.removesuffix('_delta')}"


@pytest.mark.parametrize("family", list(PROBED))
def test_trainable_parameters_are_exactly_the_head_and_the_final_norm(family):
    model = tiny_model(family)
    expected = {n: p.shape for n, p in model.named_parameters() if n.startswith(tuple(f"{m}." for m in PROBED[family]))}
    al.attach(model, "linear_probe")
    trainable = {base_name(n): p.shape for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected
    assert al.count_parameters(model)[0] == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("family", list(PROBED))
def test_training_changes_only_the_head_and_the_final_norm(family):
    model = tiny_model(family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    al.attach(model, "linear_probe")
    inputs = tiny_inputs(family)
    untouched = output_of(model, inputs).detach()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        output_of(model, inputs).pow(2).mean().backward()
        optimizer.step()
    model.eval()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    changed = {base_name(n) for n, p in model.named_parameters() if "adapterlab" in n and p.abs().sum() > 0}
    assert changed == {n for n in before if n.startswith(tuple(f"{m}." for m in PROBED[family]))}
    assert not torch.allclose(output_of(model, inputs), untouched)
    with al.disabled(model):
        torch.testing.assert_close(output_of(model, inputs), untouched)


def test_the_deltas_equal_training_the_head_itself():
    """A probed head behaves as the head with its weight and bias replaced by weight + dW, bias + db."""
    model = tiny_model("ast")
    al.attach(model, "linear_probe")
    randomize_adapters(model)
    dense = model.classifier.dense
    delta = dense.adapterlab["default"]
    x = torch.randn(2, 32)
    torch.testing.assert_close(dense(x), torch.nn.functional.linear(x, dense.weight + delta.weight_delta,
                                                                    dense.bias + delta.bias_delta))
    norm = model.audio_spectrogram_transformer.layernorm
    nd = norm.adapterlab["default"].deltas
    torch.testing.assert_close(norm(x), torch.nn.functional.layer_norm(
        x, (32,), norm.weight + nd["weight"], norm.bias + nd["bias"], norm.eps))


@pytest.mark.parametrize("family", list(PROBED))
def test_save_load_round_trip(family, tmp_path):
    model = tiny_model(family)
    al.attach(model, "linear_probe")
    randomize_adapters(model)
    inputs = tiny_inputs(family)
    expected = output_of(model, inputs)
    al.save_adapter(model, tmp_path)
    fresh = al.load_adapter(tiny_model(family), tmp_path)
    torch.testing.assert_close(output_of(fresh, inputs), expected, rtol=0, atol=0)


def test_a_bias_free_lm_head_gets_no_new_bias():
    model = tiny_model("llama")
    al.attach(model, "linear_probe")
    assert model.lm_head.adapterlab["default"].bias_delta is None


@pytest.mark.parametrize("option", ["targets", "layers"])
def test_targets_and_layers_are_refused_by_name(option):
    with pytest.raises(al.AdapterError, match=f"`{option}`"):
        al.make_config("linear_probe", **{option: ["0"] if option == "targets" else [0]})


def test_training_a_linear_probe_trains_the_head_once(tmp_path):
    """The recipe unfreezes a new task head beside an adapter, except for linear_probe, whose deltas on the head
    are what trains: otherwise the head's weights and their deltas would both step (twice the head's updates)."""
    from train_helpers import encoder_folder, write_sst

    from adapterlab.train import TrainConfig
    from adapterlab.train.recipe import make_trainable, prepare_task

    config = TrainConfig(model=str(encoder_folder(tmp_path / "bert")), task="seq-cls", adapter="linear_probe",
                         data=[str(write_sst(tmp_path / "train.tsv", 8))], output=str(tmp_path / "run"))
    setup = prepare_task(config)
    make_trainable(setup.model, config, setup.trainable_modules)
    trainable = {n for n, p in setup.model.named_parameters() if p.requires_grad}
    assert trainable and all("adapterlab" in n for n in trainable), sorted(trainable)
    assert not any(p.requires_grad for p in setup.model.classifier.parameters(recurse=False))


def test_petl_ast_probe_without_the_head_norm_counts_as_theirs_on_ast_base():
    """PETL_AST src/AST.py, AST.__init__: classification_head = nn.Linear(768, classes) on the final layernorm
    (main.py, method 'linear': model.layernorm and the head train): 2 x 768 + 768 x 50 + 50 = 39,986 on ESC-50.
    transformers' ASTMLPHead has a LayerNorm of its own first: 41,522 by default."""
    import transformers as T

    def count(**options) -> int:
        with torch.device("meta"):
            model = T.ASTForAudioClassification(T.ASTConfig(num_labels=50))
        al.attach(model, "linear_probe", **options)
        return sum(p.numel() for name, p in model.named_parameters() if "adapterlab" in name.split("."))

    assert 2 * 768 + 768 * 50 + 50 == count(head_norm=False) == 39_986
    assert count() == 39_986 + 2 * 768 == 41_522


def test_without_the_head_norm_the_head_reads_the_final_norm_directly():
    model = al.attach(tiny_model("ast"), "linear_probe", head_norm=False)
    randomize_adapters(model)
    x = tiny_inputs("ast")
    backbone = model.audio_spectrogram_transformer
    with torch.no_grad():
        hidden = backbone(**x).pooler_output  # the mean of CLS and distillation tokens, after the (trained) layernorm
        expected = model.classifier.dense(hidden)  # their head: the linear layer alone
    torch.testing.assert_close(output_of(model, x), expected)


@pytest.mark.reliability
def test_head_norm_off_on_a_head_without_a_norm_is_refused():
    """linear_probe head_norm=False on ViT (its head is one linear layer) -> AdapterError naming head_norm"""
    model = tiny_model("vit")
    with pytest.raises(al.AdapterError, match=r"head_norm=False skips the head's norm, but the head of this "
                                              r"ViTForImageClassification has none; drop head_norm"):
        al.attach(model, "linear_probe", head_norm=False)
