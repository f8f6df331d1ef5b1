"""AdapterFusion: the forward against a reference written from AdapterHub's BertFusion + compose_fuse, the parameter
count of their default ("dynamic") config on BERT-base, what trains, save/load, and the refusals."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as T
from tiny_models import tiny_inputs, tiny_model
from torch import nn

import adapterlab as al
from adapterlab.core.checkpoint import adapter_state_dict, read_adapter_config
from adapterlab.core.engine import placed
from adapterlab.core.objectives import training_penalty
from adapterlab.errors import AdapterError

MEMBERS = ["a", "b", "c"]


class RefBertFusion(nn.Module):
    """AdapterHub's BertFusion, written from their modeling.py (config as a dict; T and its schedule as theirs)."""

    def __init__(self, config: dict, d: int, dropout: float) -> None:
        super().__init__()
        self.config, self.dropout = config, nn.Dropout(dropout)
        if config["query"]:
            self.query = nn.Linear(d, d)
        if config["key"]:
            self.key = nn.Linear(d, d)
        if config["value"]:
            self.value = nn.Linear(d, d, bias=False)
        self.T = 50.0 if config["temperature"] else 1.0
        self.reduction = self.T / 1000.0

    def forward(self, query, key, value, residual):
        if self.config["residual_before"]:
            value += residual[:, :, None, :].repeat(1, 1, value.size(2), 1)  # in place: key is the same tensor
        query_layer = self.query(query) if self.config["query"] else query
        key_layer = self.key(key) if self.config["key"] else key
        value_layer = self.value(value) if self.config["value"] and self.config["value_before_softmax"] else value
        scores = torch.squeeze(torch.matmul(query_layer.unsqueeze(2), key_layer.transpose(-2, -1)), dim=2)
        probs = nn.Softmax(dim=-1)(self.dropout(scores) / self.T)
        self.T = max(self.T - self.reduction, 1.0)
        context = torch.squeeze(torch.matmul(probs.unsqueeze(2), value_layer), dim=2)
        if self.config["value"] and not self.config["value_before_softmax"]:
            context = self.value(context)
        if not self.config["residual_before"]:
            context += residual
        return context


def members_model(seed: int = 0, size: int = 8) -> nn.Module:
    model = tiny_model("bert", seed)
    g = torch.Generator().manual_seed(seed + 5)
    for name in MEMBERS:
        al.attach(model, "pfeiffer", name, size=size)
        with torch.no_grad():
            for _, _, module in placed(model, name):
                for p in module.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def reference(model: nn.Module, base: nn.Module, config: dict, inputs: dict) -> torch.Tensor:
    """The fused model's logits as AdapterHub's compose_fuse computes them, on `base` (the same weights, no
    adapterlab): at each BertOutput.dense, query = the members' input (F), up_i = s * up(act(down(F))), residual = F."""
    handles = []
    for i, layer in enumerate(base.bert.encoder.layer):
        path = f"bert.encoder.layer.{i}.output.dense"
        host = model.get_submodule(path)
        members = [host.adapterlab[n] for n in MEMBERS]
        fusion = host.adapterlab["fuse"]
        ref = RefBertFusion(config, fusion.members[0].up.out_features, 0.0)
        ref.load_state_dict(fusion.state_dict(), strict=False)

        def hook(module, args, output, members=members, ref=ref):
            ups = [m.up(m.act(m.down(output))) * m.scaling for m in members]  # each member's `up`
            up_list = torch.stack(ups).permute(1, 2, 0, 3)
            return ref(output, up_list, up_list, output)

        handles.append(layer.output.dense.register_forward_hook(hook))
    try:
        return base(**inputs).logits
    finally:
        for h in handles:
            h.remove()


DYNAMIC = dict(key=True, query=True, value=True, query_before_ln=False, regularization=True, residual_before=False,
               temperature=False, value_before_softmax=True, value_initialized=True)


@pytest.mark.parametrize("options", [
    {}, dict(value=False, regularization=False), dict(value_before_softmax=False), dict(residual_before=True),
    dict(query=False, key=False), dict(value_initialized=False),
])
def test_forward_equals_adapterhubs_fusion(options):
    base = tiny_model("bert", 0)
    model = members_model()
    al.attach(model, "fusion", "fuse", adapters=MEMBERS, **options)
    with torch.no_grad():  # random fusion weights, so that every map matters
        for _, _, module in placed(model, "fuse"):
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.2)
    inputs = tiny_inputs("bert")
    ours = model(**inputs).logits
    expected = reference(model, base, {**DYNAMIC, **options}, inputs)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours, base(**inputs).logits)


def test_temperature_falls_per_training_forward_as_adapterhubs():
    base = tiny_model("bert", 0)
    model = members_model()
    al.attach(model, "fusion", "fuse", adapters=MEMBERS, temperature=True, dropout=0.0)
    fusions = [m for _, _, m in placed(model, "fuse")]
    for m in fusions:  # the fusion layers train; the base stays in eval mode (no dropout draws to compare)
        m.train()
    inputs = tiny_inputs("bert")
    for step in range(3):  # AdapterHub's T after `step` forwards: 50 - 0.05 * step
        ours = model(**inputs).logits
        expected = reference_at(model, base, {**DYNAMIC, "temperature": True}, inputs, 50.0 - 0.05 * step)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    for m in fusions:
        m.eval()
    model(**inputs)  # an eval forward leaves T where training left it
    assert [float(m.temperature) for m in fusions] == [pytest.approx(49.85)] * 2


def reference_at(model, base, config, inputs, t):
    """`reference` with every RefBertFusion's T set to t."""
    original = RefBertFusion.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.T = t

    RefBertFusion.__init__ = init
    try:
        with torch.no_grad():
            return reference(model, base, config, inputs)
    finally:
        RefBertFusion.__init__ = original


def test_default_parameter_count_is_adapterhubs_on_bert_base():
    """Their dynamic config per fused site: query and key d*d + d, value d*d (no bias); Pfeiffer: one site per
    layer. BERT-base: 12 * (3 * 768^2 + 2 * 768) = 21,252,096."""
    config = T.BertConfig()  # BERT-base dimensions
    with torch.device("meta"):
        model = T.BertForSequenceClassification(config)
    for name in ("a", "b"):
        al.attach(model, "pfeiffer", name, size=48)
    al.attach(model, "fusion", "fuse", adapters=["a", "b"])
    fusion = sum(p.numel() for _, _, m in placed(model, "fuse") for p in m.parameters())
    d = 768
    assert fusion == 12 * (3 * d * d + 2 * d) == 21_252_096
    trainable, _ = al.count_parameters(model)
    assert trainable == fusion


def test_only_fusion_and_head_get_gradients_and_regularization_reaches_value():
    model = members_model()
    al.attach(model, "fusion", "fuse", adapters=MEMBERS)
    model.classifier.requires_grad_(True)
    model.train()
    out = model(**tiny_inputs("bert"), labels=torch.tensor([0, 2]))
    penalty = training_penalty(model)
    assert penalty is not None and penalty.item() == pytest.approx(0.0, abs=1e-6)  # the value map starts at I
    (out.loss + penalty).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(".fuse." in n or n.startswith("classifier.") for n in grads)
    assert any(".fuse.value." in n for n in grads) and any(n.startswith("classifier.") for n in grads)
    assert all(not p.requires_grad for n, p in model.named_parameters() if any(f".{m}." in n for m in MEMBERS))


def test_members_stay_off_and_cannot_run_beside_it_nor_be_detached():
    model = members_model()
    inputs = tiny_inputs("bert")
    al.attach(model, "fusion", "fuse", adapters=MEMBERS)
    assert al.active_adapters(model) == ["fuse"]
    with pytest.raises(AdapterError, match="runs its member 'a' itself"):
        al.set_active(model, ["fuse", "a"])
    with pytest.raises(AdapterError, match="'fuse' composes it"):
        al.detach(model, "b")
    fused = model(**inputs).logits
    al.set_active(model, "a")  # a member alone still works as itself
    alone = model(**inputs).logits
    assert not torch.allclose(fused, alone)
    al.set_active(model, "fuse")
    torch.testing.assert_close(model(**inputs).logits, fused)
    al.detach(model, "fuse")
    al.detach(model, "b")


def test_refusals_by_name():
    model = members_model()
    with pytest.raises(AdapterError, match="'zz', which is not attached"):
        al.attach(model, "fusion", "fuse", adapters=["a", "zz"])
    with pytest.raises(AdapterError, match="name the adapters"):
        al.attach(model, "fusion", "fuse")
    with pytest.raises(AdapterError, match="drop `targets` and `layers`"):
        al.attach(model, "fusion", "fuse", adapters=["a", "b"], layers=[0])
    al.attach(model, "parallel", "p", size=8)
    with pytest.raises(AdapterError, match="member 'p' has a parallel module"):
        al.attach(model, "fusion", "fuse", adapters=["a", "p"])
    with pytest.raises(AdapterError, match="regularization"):
        al.attach(model, "fusion", "fuse", adapters=["a", "b"], value=False)
    with pytest.raises(AdapterError, match="unknown option"):
        al.attach(model, "fusion", "fuse", adapters=["a", "b"], query_before_ln=True)


def test_save_and_load_round_trip_with_members_from_their_folders(tmp_path):
    model = members_model()
    inputs = tiny_inputs("bert")
    for name in MEMBERS:
        al.save_adapter(model, tmp_path / name, name)
    loaded_members = tiny_model("bert", 0)
    for name in MEMBERS:
        al.load_adapter(loaded_members, tmp_path / name, name)
    al.attach(loaded_members, "fusion", "fuse", adapters=MEMBERS, temperature=True)
    with torch.no_grad():
        for _, _, m in placed(loaded_members, "fuse"):
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.2)
            m.temperature.fill_(7.5)
    expected = loaded_members(**inputs).logits
    al.save_adapter(loaded_members, tmp_path / "fuse", "fuse")
    saved = read_adapter_config(tmp_path / "fuse")
    assert saved["adapters"] == [f"{n}={(tmp_path / n).resolve()}" for n in MEMBERS]
    fresh = tiny_model("bert", 0)
    al.load_adapter(fresh, tmp_path / "fuse", "fuse")  # loads a, b, c from their folders
    assert set(al.adapter_names(fresh)) == {*MEMBERS, "fuse"} and al.active_adapters(fresh) == ["fuse"]
    torch.testing.assert_close(fresh(**inputs).logits, expected)
    # a member with no folder recorded is refused by name, and the model is left as it was
    al.attach(model, "fusion", "fuse", adapters=MEMBERS)
    al.save_adapter(model, tmp_path / "bare", "fuse")
    other = tiny_model("bert", 0)
    al.load_adapter(other, tmp_path / "a", "a")
    with pytest.raises(AdapterError, match="adapter 'b', which is not attached and has no saved folder"):
        al.load_adapter(other, tmp_path / "bare", "fuse")
    assert al.adapter_names(other) == ["a"]


def test_deepcopy_runs_the_copys_members():
    model = members_model()
    al.attach(model, "fusion", "fuse", adapters=MEMBERS)
    twin = copy.deepcopy(model)
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        for _, _, m in placed(twin, "a"):
            m.up.weight.mul_(3)
    assert not torch.allclose(twin(**inputs).logits, model(**inputs).logits)
    for (_, _, m), (_, _, a) in zip(placed(twin, "fuse"), placed(twin, "a")):
        assert m.members[0] is a


# ---------------------------------------------------------------- adapterlab train --adapter fusion --fuse


def tiny_run(tmp_path, name, *argv):
    """argv of a seconds-long seq-cls run of the tiny BERT into tmp_path/name."""
    from train_helpers import encoder_folder, write_sst

    model, data, dev = tmp_path / "bert", tmp_path / "train.tsv", tmp_path / "dev.tsv"
    if not model.is_dir():
        encoder_folder(model), write_sst(data, 16), write_sst(dev, 4, seed=1)
    return ["train", "--task", "seq-cls", "--model", str(model), "--data", str(data), "--eval-data", str(dev),
            "--max-steps", "2", "--eval-steps", "1", "--batch-size", "4", "--micro-batch-size", "2",
            "--warmup-steps", "0", "--output", str(tmp_path / name), *argv]


def test_cli_trains_a_fusion_of_saved_adapters_and_only_it_and_the_head(tmp_path, capsys):
    import json

    from adapterlab.cli import main
    from adapterlab.files import read_safetensors

    for name in ("a", "b"):
        assert main(tiny_run(tmp_path, name, "--adapter", "pfeiffer", "--size", "4")) == 0
    members_before = {n: read_safetensors(tmp_path / n / "adapter.safetensors", "") for n in ("a", "b")}
    fuse = f"a={tmp_path / 'a'},b={tmp_path / 'b'}"
    assert main(tiny_run(tmp_path, "fused", "--adapter", "fusion", "--fuse", fuse)) == 0
    run = tmp_path / "fused"
    summary = json.loads((run / "summary.json").read_text())
    d, layers, labels = 32, 2, 2
    assert summary["trainable_parameters"] == layers * (3 * d * d + 2 * d) + (d * labels + labels)  # fusion + head
    saved = read_adapter_config(run)
    assert saved["method"] == "fusion" and saved["adapters"] == [f"a={(tmp_path / 'a').resolve()}",
                                                                 f"b={(tmp_path / 'b').resolve()}"]
    assert set(read_safetensors(run / "adapter.safetensors", "")) == {
        f"bert.encoder.layer.{i}.output.dense.{p}" for i in range(2)
        for p in ("query.weight", "query.bias", "key.weight", "key.bias", "value.weight")}
    model = T.AutoModelForSequenceClassification.from_pretrained(tmp_path / "bert", num_labels=2)
    al.load_adapter(model, run, "fused")  # the members come from their folders, unchanged by the fusion run
    for n in ("a", "b"):
        state = adapter_state_dict(model, n)
        for key, value in members_before[n].items():
            torch.testing.assert_close(state[key], value)
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["--adapter", "lora", "--fuse", "a=x"], "--fuse names the adapters that --adapter fusion fuses, not --adapter"),
    (["--adapter", "fusion"], "name the adapters it composes"),
    (["--adapter", "fusion", "--fuse", "a"], "--fuse a: give each adapter's folder, NAME=PATH"),
])
def test_cli_refuses_fuse_misuse_by_name(argv, message, tmp_path, capsys):
    from adapterlab.cli import main

    command = tiny_run(tmp_path, "run", *argv)
    capsys.readouterr()
    assert main(command) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_trainer_adds_the_regularization_to_the_training_loss_only(tmp_path):
    from transformers import TrainingArguments

    from adapterlab.train.trainer import AdapterTrainer

    model = members_model()
    al.attach(model, "fusion", "fuse", adapters=MEMBERS, dropout=0.0)
    with torch.no_grad():
        for _, _, m in placed(model, "fuse"):
            m.value.weight.add_(0.1)
    trainer = AdapterTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[],
                                                                 use_cpu=True, gradient_accumulation_steps=2))
    inputs = {**tiny_inputs("bert"), "labels": torch.tensor([0, 2])}
    model.eval()
    plain = trainer.compute_loss(model, inputs)  # evaluation: the task loss alone
    model.train()
    for module in model.modules():  # training mode without the base's dropout draws
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    penalty = training_penalty(model)  # 0.01 * ||I - value||^2 over 2 layers, each entry 0.1 off (1e-6 aside)
    assert penalty.item() == pytest.approx(0.01 * 2 * 32 * 32 * 0.1 ** 2, rel=1e-3)
    # unscaled micro-batch losses are divided by the accumulation steps by the Trainer: the penalty rides along whole
    torch.testing.assert_close(trainer.compute_loss(model, inputs), plain + penalty)


def test_mixed_batches_run_each_rows_fusion():
    """Two fusions over the same members in one batch (`adapter_names`): each row as its fusion alone."""
    model = members_model()
    for name in ("f1", "f2"):
        al.attach(model, "fusion", name, adapters=MEMBERS)
        with torch.no_grad():
            for _, _, m in placed(model, name):
                for p in m.parameters():
                    p.add_(torch.randn_like(p) * 0.2)
    inputs = tiny_inputs("bert")
    alone = {}
    for name in ("f1", "f2"):
        al.set_active(model, name)
        alone[name] = model(**inputs).logits
    mixed = model(**inputs, adapter_names=["f2", "f1"]).logits
    torch.testing.assert_close(mixed, torch.stack([alone["f2"][0], alone["f1"][1]]))


def test_fusion_over_compacter_sits_at_both_of_its_sites():
    """Compacter is a series adapter on the houlsby placement: a fusion layer after the attention and the MLP."""
    model = tiny_model("bert")
    for name in ("a", "b"):
        al.attach(model, "compacter", name, size=4)
    al.attach(model, "fusion", "fuse", adapters=["a", "b"])
    d = 32
    assert al.count_parameters(model)[0] == 2 * 2 * (3 * d * d + 2 * d)
    assert model(**tiny_inputs("bert")).logits.shape == (2, 3)
