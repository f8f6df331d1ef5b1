"""One matmul for the down-projections of adapters that read one input (attach(..., fuse_inputs=True)): the same
outputs and gradients as one matmul per adapter and as PEFT, dropout drawn per module in training, a fallback when
the members read different tensors; and the hook path's promise: a merged or switched-off adapter has no hooks."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import adapterlab
from adapterlab.core.checkpoint import adapter_state_dict
from adapterlab.core.shared_input import SharedDown
from adapterlab.core.site_hooks import placed

from tiny_models import randomize_adapters, tiny_inputs, tiny_model

LORA = dict(r=4, alpha=8, targets=["q", "k", "v", "o", "gate", "up", "down"])


def pair(method: str = "lora", family: str = "llama", **options) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same adapter (same values) attached fused and unfused."""
    unfused = adapterlab.attach(tiny_model(family), method, **options)
    randomize_adapters(unfused, std=0.2)
    fused = adapterlab.attach(tiny_model(family), method, fuse_inputs=True, **options)
    fused.load_state_dict(unfused.state_dict())
    return fused, unfused


def groups(model: torch.nn.Module) -> list[SharedDown]:
    return list({id(a._shared): a._shared for _, _, a in placed(model) if a._shared is not None}.values())


def test_lora_on_q_k_v_and_gate_up_share_one_matmul_per_input() -> None:
    fused, unfused = pair(**LORA)
    found = groups(fused)
    assert len(found) == 2 * fused.config.num_hidden_layers  # q,k,v and gate,up in every block
    assert sorted(len(g.members) for g in found)[::len(found) - 1] == [2, 3]
    assert not groups(unfused)
    inputs = tiny_inputs("llama")
    calls = []
    original = SharedDown.down

    def counting(self, adapter, x):
        h = original(self, adapter, x)
        calls.append(h is not None)
        return h

    SharedDown.down = counting
    try:
        with torch.no_grad():
            got = fused(**inputs).logits
    finally:
        SharedDown.down = original
    assert len(calls) == 5 * fused.config.num_hidden_layers and all(calls)  # every member got its slice
    with torch.no_grad():
        torch.testing.assert_close(got, unfused(**inputs).logits)


@pytest.mark.parametrize("family", ["llama", "opt", "bert"])
def test_fused_training_step_gives_the_same_loss_and_gradients(family: str) -> None:
    fused, unfused = pair(family=family, **{**LORA, "targets": ["q", "k", "v", "up", "down"]})
    inputs = tiny_inputs(family)
    labels = {"labels": inputs["input_ids"]} if family != "bert" else {"labels": torch.tensor([0, 2])}
    losses = []
    for model in (fused, unfused):
        model.train()
        torch.manual_seed(3)  # the base model's own dropout (OPT, BERT) draws the same masks in both
        loss = model(**inputs, **labels).loss
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1])
    grads = [{n: p.grad for n, p in m.named_parameters() if p.requires_grad} for m in (fused, unfused)]
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_fused_lora_gives_peft_logits() -> None:
    peft = pytest.importorskip("peft")
    fused, _ = pair(**LORA)
    theirs = peft.get_peft_model(tiny_model("llama"), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                           "down_proj"]))
    state = theirs.state_dict()
    with torch.no_grad():
        for key, tensor in adapter_state_dict(fused).items():
            part = next(p for p in ("lora_A", "lora_B") if f".{p}." in key)
            state["base_model.model." + key.replace(f".{part}.", f".{part}.default.")].copy_(tensor)
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        torch.testing.assert_close(fused(**inputs).logits, theirs(**inputs).logits)


def test_dropout_in_training_draws_one_mask_per_module_as_unfused() -> None:
    """With dropout > 0 in training each LoRA draws its own mask (as PEFT), so the fused model computes them alone
    and matches the unfused model under the same seed; in eval mode the group is used again."""
    fused, unfused = pair(**LORA, dropout=0.5)
    inputs = tiny_inputs("llama")
    fused.train(), unfused.train()
    outs = []
    for model in (fused, unfused):
        torch.manual_seed(7)
        outs.append(model(**inputs).logits)
    torch.testing.assert_close(outs[0], outs[1])
    assert all(a.down_projection() is None for _, _, a in placed(fused))
    fused.eval(), unfused.eval()
    assert all(a.down_projection() is not None for _, _, a in placed(fused))
    with torch.no_grad():
        torch.testing.assert_close(fused(**inputs).logits, unfused(**inputs).logits)


def test_a_member_fed_another_tensor_turns_its_group_off() -> None:
    fused, unfused = pair(**LORA)
    blocks = [m.model.layers[0].self_attn for m in (fused, unfused)]
    x1, x2 = torch.randn(1, 3, 32), torch.randn(1, 3, 32)
    with torch.no_grad():
        got = [blocks[0].q_proj(x1), blocks[0].k_proj(x2), blocks[0].v_proj(x1)]
        want = [blocks[1].q_proj(x1), blocks[1].k_proj(x2), blocks[1].v_proj(x1)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert fused.model.layers[0].self_attn.q_proj.adapterlab["default"]._shared.off


@pytest.mark.parametrize("method, options", [
    ("parallel", dict(size=4, targets=["q", "k", "v", "up", "gate"])),
    ("parallel", dict(size=4, targets=["q", "k", "v"], bias=False)),
])
def test_parallel_bottlenecks_share_their_down_projection(method: str, options: dict) -> None:
    fused, unfused = pair(method, **options)
    assert groups(fused)
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        torch.testing.assert_close(fused(**inputs).logits, unfused(**inputs).logits)


def test_fused_model_deepcopies_and_pickles_after_a_forward() -> None:
    fused, _ = pair(**LORA)
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        want = fused(**inputs).logits
    for copied in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
        shared = groups(copied)[0]
        assert all(m in list(copied.modules()) for m in shared.members)  # the copy's own adapters
        with torch.no_grad():
            torch.testing.assert_close(copied(**inputs).logits, want)


def test_fuse_inputs_must_be_a_bool() -> None:
    with pytest.raises(adapterlab.AdapterError, match="fuse_inputs"):
        adapterlab.attach(tiny_model("llama"), "lora", fuse_inputs="yes")


def adapter_hooks(model: torch.nn.Module) -> int:
    """Hooks that call adapters (the engine's guard and bookkeeping hooks on the model itself are not counted)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules() if m is not model)


def test_merged_and_switched_off_adapters_have_no_hooks() -> None:
    model = adapterlab.attach(tiny_model("llama"), "lora", targets=["q", "v"])
    adapterlab.attach(model, "houlsby", "second", size=4)
    layers = model.config.num_hidden_layers
    assert adapter_hooks(model) == 2 * layers  # houlsby active: one hook per sublayer, none at its entry
    adapterlab.set_active(model, "default")
    assert adapter_hooks(model) == 2 * layers  # lora on q and v: one forward hook each, no pre-hook
    with adapterlab.disabled(model):
        assert adapter_hooks(model) == 0
    assert adapter_hooks(model) == 2 * layers
    adapterlab.merge(model)
    assert adapter_hooks(model) == 0
    adapterlab.unmerge(model)
    adapterlab.set_active(model, ["default", "second"])
    assert adapter_hooks(model) == 4 * layers
