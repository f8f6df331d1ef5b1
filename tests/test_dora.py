"""DoRA (`lora` with use_dora) against PEFT's: the same logits, gradients and merged weights for the same adapter,
PEFT's DoRA folders both ways, and the engine paths (fused inputs, mixed-adapter batches, merge) and refusals."""

from __future__ import annotations

import pytest
import torch
from test_peft_interop import OUR_LORA_TARGETS, PEFT_LORA_TARGETS

import adapterlab as al
from adapterlab.core.checkpoint import adapter_state_dict
from tiny_models import randomize_adapters, tiny_inputs, tiny_model

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("single_thread")

FAMILIES = ["llama", "bert", "gpt2"]  # a decoder, an encoder with biases, GPT-2's transposed Conv1D


def peft_config(family: str, dropout: float = 0.0):
    return peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=PEFT_LORA_TARGETS[family],
                           fan_in_fan_out=family == "gpt2", use_dora=True,
                           task_type="SEQ_CLS" if family == "bert" else "CAUSAL_LM")


def peft_key(key: str) -> str:
    """PEFT's state_dict name of adapterlab's adapter key (adapter 'default')."""
    if key.endswith("lora_magnitude_vector"):
        return f"base_model.model.{key}.default.weight"
    for part in ("lora_A", "lora_B"):
        key = key.replace(f".{part}.", f".{part}.default.")
    return f"base_model.model.{key}"


def ours(family: str, dropout: float = 0.0) -> torch.nn.Module:
    model = tiny_model(family)
    al.attach(model, "lora", r=4, alpha=8, dropout=dropout, targets=OUR_LORA_TARGETS, use_dora=True)
    randomize_adapters(model, std=0.2)  # non-zero B and a magnitude away from the weight norm
    return model


def pair(family: str, dropout: float = 0.0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our DoRA model and PEFT's, holding the same adapter weights."""
    model = ours(family, dropout)
    theirs = peft.get_peft_model(tiny_model(family), peft_config(family, dropout))
    state = theirs.state_dict()
    mine = adapter_state_dict(model)
    assert sorted(peft_key(k) for k in mine) == sorted(k for k in state if "lora_" in k)
    with torch.no_grad():
        for key, tensor in mine.items():
            state[peft_key(key)].copy_(tensor)
    return model, theirs


def outputs(model: torch.nn.Module, family: str, grad: bool = False) -> torch.Tensor:
    with torch.set_grad_enabled(grad):
        out = model(**tiny_inputs(family), output_hidden_states=True)
    return torch.cat([out.logits.flatten(), out.hidden_states[-1].flatten()])


def base_outputs(family: str) -> torch.Tensor:
    return outputs(tiny_model(family), family)


def assert_equal_outputs(a: torch.Tensor, b: torch.Tensor, base: torch.Tensor) -> None:
    assert (a - base).abs().max() > 1e-2, "the adapter barely changes the output; the comparison would be vacuous"
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_attach_starts_as_the_base_model() -> None:
    model = tiny_model("llama")
    al.attach(model, "lora", targets=OUR_LORA_TARGETS, use_dora=True)
    torch.testing.assert_close(outputs(model, "llama"), base_outputs("llama"), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_peft(family: str, dropout: float) -> None:
    """Eval mode: PEFT's DoRA takes y - bias for W x whether or not the LoRA has dropout."""
    model, theirs = pair(family, dropout)
    theirs.eval()
    assert_equal_outputs(outputs(model, family), outputs(theirs, family), base_outputs(family))


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_training_forward_and_gradients_equal_peft(family: str, dropout: float) -> None:
    """Train mode, one backward: the same loss and the same gradients of A, B and the magnitude. With dropout the
    forward applies W to the dropped input again (PEFT's path); one seed draws the same masks in both."""
    model, theirs = pair(family, dropout)
    model.train()
    theirs.train()
    results = []
    for m in (model, theirs):
        torch.manual_seed(7)
        loss = (outputs(m, family, grad=True) ** 2).mean()
        loss.backward()
        grads = {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
    (loss, mine), (their_loss, theirs_grads) = results
    torch.testing.assert_close(loss, their_loss, atol=1e-6, rtol=1e-5)
    assert sorted(peft_key(k.replace(".adapterlab.default", "")) for k in mine) == sorted(theirs_grads)
    for key, grad in mine.items():
        other = theirs_grads[peft_key(key.replace(".adapterlab.default", ""))]
        assert grad.abs().max() > 0, key
        torch.testing.assert_close(grad, other, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_equals_unmerged_and_peft_merge_and_unmerge_restores(family: str) -> None:
    model, theirs = pair(family)
    unmerged = outputs(model, family)
    original = {k: v.clone() for k, v in tiny_model(family).state_dict().items()}
    al.merge(model)
    torch.testing.assert_close(outputs(model, family), unmerged, atol=1e-5, rtol=1e-5)
    merged_theirs = theirs.merge_and_unload().state_dict()
    mine = {k: v for k, v in model.state_dict().items() if "adapterlab" not in k}
    for key, value in merged_theirs.items():
        torch.testing.assert_close(mine[key], value, atol=1e-6, rtol=1e-5)
    al.unmerge(model)
    for key, value in original.items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(outputs(model, family), unmerged, atol=1e-5, rtol=1e-5)


def test_merge_and_unload_in_float64_equals_unmerged_to_rounding() -> None:
    model = ours("llama").double()
    unmerged = outputs(model, "llama")
    al.merge_and_unload(model)
    assert (outputs(model, "llama") - unmerged).abs().max().item() < 1e-12


@pytest.mark.parametrize("family", FAMILIES)
def test_load_peft_reads_a_peft_dora_folder(family: str, tmp_path) -> None:
    theirs = peft.get_peft_model(tiny_model(family), peft_config(family))
    randomize_adapters(theirs, std=0.2)
    theirs.save_pretrained(str(tmp_path))
    theirs.eval()
    model = al.load_peft(tiny_model(family), tmp_path)
    assert al.get_config(model).use_dora is True
    assert_equal_outputs(outputs(model, family), outputs(theirs, family), base_outputs(family))


@pytest.mark.parametrize("family", FAMILIES)
def test_export_peft_loads_in_peft(family: str, tmp_path) -> None:
    model = ours(family)
    al.export_peft(model, tmp_path)
    loaded = peft.PeftModel.from_pretrained(tiny_model(family), str(tmp_path))
    assert loaded.peft_config["default"].use_dora is True
    assert_equal_outputs(outputs(model, family), outputs(loaded, family), base_outputs(family))


def test_save_and_load_adapter_round_trip(tmp_path) -> None:
    model = ours("llama")
    al.save_adapter(model, tmp_path)
    loaded = al.load_adapter(tiny_model("llama"), tmp_path)
    torch.testing.assert_close(outputs(loaded, "llama"), outputs(model, "llama"), atol=0, rtol=0)


def test_fused_inputs_equal_unfused() -> None:
    """q, k, v share one down-projection matmul with fuse_inputs; DoRA finishes from its slice."""
    model = ours("llama")
    fused = tiny_model("llama")
    al.attach(fused, "lora", r=4, alpha=8, targets=OUR_LORA_TARGETS, use_dora=True, fuse_inputs=True)
    fused.load_state_dict(model.state_dict())
    torch.testing.assert_close(outputs(fused, "llama"), outputs(model, "llama"), atol=1e-5, rtol=1e-5)


def test_mixed_batch_rows_equal_each_adapter_alone() -> None:
    """DoRA adapters and a plain LoRA in one mixed-adapter batch: no stacked fast path, each runs on its rows."""
    model = tiny_model("llama")
    al.attach(model, "lora", "a", r=4, targets=["q", "v"], use_dora=True)
    randomize_adapters(model, seed=1)
    al.attach(model, "lora", "b", r=2, targets=["q", "v"])
    randomize_adapters(model, seed=2)
    al.attach(model, "lora", "c", r=2, targets=["q", "v"], use_dora=True)
    randomize_adapters(model, seed=3)
    names = ["a", "__base__", "b", "c", "a"]
    x = tiny_inputs("llama", batch=len(names))
    with torch.no_grad():
        mixed = model(**x, adapter_names=names).logits
    for i, name in enumerate(names):
        if name == "__base__":
            with al.disabled(model), torch.no_grad():
                alone = model(**x).logits
        else:
            al.set_active(model, name)
            with torch.no_grad():
                alone = model(**x).logits
        torch.testing.assert_close(mixed[i], alone[i], atol=1e-5, rtol=1e-5)


def test_dora_with_mosa_is_refused_by_name() -> None:
    with pytest.raises(al.AdapterError, match="use_dora"):
        al.attach(tiny_model("llama"), "mosa", base="lora", use_dora=True)


def test_merging_dora_beside_another_merged_adapter_is_refused() -> None:
    model = tiny_model("llama")
    al.attach(model, "lora", "plain", targets=["q"])
    al.attach(model, "lora", "dora", targets=["q"], use_dora=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(al.AdapterError, match="other merged adapters"):
        al.merge(model, ["plain", "dora"])
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=1e-6, rtol=1e-6)


def test_detach_leaves_the_base_weights_as_they_were() -> None:
    model = ours("llama")
    al.detach(model)
    for key, value in tiny_model("llama").state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("options, words", [({"use_dora": True}, "use_dora on a quantized base"),
                                            ({"init_lora_weights": "pissa"}, "stores it quantized")])
def test_a_quantized_layer_is_refused_by_name(options: dict, words: str) -> None:
    """A layer whose weight is stored as integers (bitsandbytes'): DoRA's norm and PiSSA's SVD need a float weight."""
    model = tiny_model("llama")
    q = model.model.layers[0].self_attn.q_proj
    q.weight = torch.nn.Parameter(torch.zeros(q.weight.shape, dtype=torch.int8), requires_grad=False)
    with pytest.raises(al.AdapterError, match=words):
        al.attach(model, "lora", targets=["q"], **options)
    assert al.adapter_names(model) == []
