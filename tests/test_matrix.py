"""Every registered method on every architecture family: train, save/load, merge, identity at init, switching.

The matrix is generated from `adapterlab.core.registry.METHODS`, so a newly registered method is tested here
without editing this file, except to say whether it starts as the identity (`IDENTITY_AT_INIT`).
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable

import pytest
import torch
from tiny_models import ALL, CAUSAL, output_of, randomize_adapters, tiny_inputs, tiny_model

import adapterlab as al
from adapterlab.core.engine import placed
from adapterlab.core.registry import METHODS
from adapterlab.core.stochastic import Stochastic, draw_context

# Small sizes so that the matrix stays fast; a method not listed runs with its defaults.
OPTIONS: dict[str, dict] = {
    "lora": dict(r=4),
    "series": dict(size=8), "houlsby": dict(size=8), "pfeiffer": dict(size=8),
    "parallel": dict(size=8), "scaled_parallel": dict(size=8),
    "conformer": dict(size=8, kernel_size=3),
    "prompt": dict(num_virtual_tokens=3), "prefix": dict(num_virtual_tokens=3),
    "ptuning": dict(num_virtual_tokens=3, encoder_hidden_size=16),
    "mosa": dict(size=8), "adaptformer": dict(size=8),
    "compacter": dict(size=8), "compacterpp": dict(size=8),
}

# Options under which a method leaves the model's output unchanged until it is trained; None: it cannot
# (the reason says why). Every registered method must appear here (test_every_method_is_classified).
IDENTITY_AT_INIT: dict[str, dict | str] = {
    "lora": {}, "ia3": {}, "bitfit": {},
    "series": {"init": "zero"}, "houlsby": {"init": "zero"}, "pfeiffer": {"init": "zero"},
    "parallel": {"init": "zero"}, "scaled_parallel": {},
    "conformer": {"init": "zero"}, "mosa": {}, "adaptformer": {},
    "compacter": {"init": "zero", "size": 8}, "compacterpp": {"init": "zero", "size": 8},
    "linear_probe": {},
    "fusion": "fuses its members' outputs, which change the model (AdapterFusion is stage two, over trained adapters)",
    "prompt": "adds virtual tokens that every real token attends to",
    "prefix": "adds learned keys and values that every token attends to",
    "ptuning": "adds virtual tokens that every real token attends to",
}

# Methods made of other attached adapters (core/composition.py): the method and options of the two members attached
# (random weights) before them. Tests of one adapter standing alone (loaded into a bare base, detached back to it)
# skip them; tests/test_fusion.py covers those with the members.
COMPOSED: dict[str, tuple[str, dict]] = {"fusion": ("pfeiffer", dict(size=8))}

# (method, family) pairs that cannot work, with the words the AdapterError must contain.
UNSUPPORTED: dict[tuple[str, str], str] = {
    **{("conformer", f): "see the future" for f in CAUSAL},
    # AdaptFormer reads the residual stream before the MLP's pre-norm; OPT's row names none (opt-350m is
    # post-norm, the other sizes pre-norm), so the user is asked for it. MoSA's default base is AdaptFormer.
    ("adaptformer", "opt"): "mlp_norm", ("mosa", "opt"): "mlp_norm",
    # Swin's blocks run in stages of different widths on a fixed grid of windows: no one token sequence.
    **{(m, "swin"): "inside stages" for m in ("prompt", "ptuning", "prefix")},
}

# Mergeable methods that refuse to merge on some families, with the words the NotMergeableError must contain.
MERGE_REFUSED: dict[tuple[str, str], str] = {
    ("bitfit", f): "without a bias cannot absorb" for f in ("llama", "mistral", "qwen2", "gptj")
}

CELLS = [pytest.param(m, f, id=f"{m}-{f}") for m in sorted(METHODS) for f in ALL]

pytestmark = pytest.mark.usefixtures("single_thread")


def base_and_inputs(family: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    return tiny_model(family), tiny_inputs(family)


def adapted(method: str, family: str, name: str = "default", seed: int = 2, **extra) -> torch.nn.Module:
    """A tiny model of `family` with `method` attached and its parameters moved off their init values."""
    model = tiny_model(family)
    attach_or_skip(model, method, family, name, **extra)
    randomize_adapters(model, seed=seed)
    return model


def attach_or_skip(model: torch.nn.Module, method: str, family: str, name: str = "default", **extra) -> None:
    options = {**OPTIONS.get(method, {}), **extra}
    if (method, family) in UNSUPPORTED:
        with pytest.raises(al.AdapterError, match=UNSUPPORTED[method, family]):
            al.attach(model, method, name, **options)
        assert not list(placed(model))
        pytest.skip(f"{method} does not apply to {family}: the AdapterError was checked")
    if method in COMPOSED:
        options["adapters"] = attach_members(model, method, name)
    al.attach(model, method, name, **options)


def attach_members(model: torch.nn.Module, method: str, name: str) -> list[str]:
    """Attach the members a composing method needs, each with its own random weights; their names."""
    member, options = COMPOSED[method]
    names = [f"{name}_m{i}" for i in range(2)]
    for i, member_name in enumerate(names):
        al.attach(model, member, member_name, **options)
        randomize_adapters(model, seed=10 + i)  # only the newest member is active (trainable) here
    return names


def standalone_only(method: str) -> None:
    """Skip a test of one adapter standing alone for a method made of other adapters."""
    if method in COMPOSED:
        pytest.skip(f"{method} runs other attached adapters; tests/test_fusion.py tests it with them")


def is_adapter_parameter(name: str) -> bool:
    return "adapterlab" in name.split(".")


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def drawn_parameter(model: torch.nn.Module) -> Callable[[str], bool]:
    """Whether a parameter name lies in a stochastic layer (MoSA's split projections), which trains only the
    module drawn in a forward: the other modules get no gradient."""
    prefixes = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, Stochastic))
    return lambda name: name.startswith(prefixes)


def test_every_method_is_classified():
    assert set(METHODS) <= set(IDENTITY_AT_INIT), "say in IDENTITY_AT_INIT whether new methods start as the identity"


@pytest.mark.parametrize("method,family", CELLS)
def test_forward_backward_trains_only_the_adapter(method, family):
    model = adapted(method, family)
    x = tiny_inputs(family)
    model.train()
    output_of(model, x).float().pow(2).mean().backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(is_adapter_parameter(n) for n in trainable)
    assert all(p.grad is None for n, p in model.named_parameters() if not is_adapter_parameter(n))
    drawn = drawn_parameter(model)
    assert all(p.grad is not None for n, p in trainable.items() if not drawn(n))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())
    assert al.count_parameters(model)[0] == sum(p.numel() for p in trainable.values())


@pytest.mark.parametrize("method,family", CELLS)
def test_save_then_load_into_a_fresh_base_gives_the_same_outputs(method, family, tmp_path, monkeypatch):
    standalone_only(method)
    model = adapted(method, family)
    x = tiny_inputs(family)
    expected = output_of(model, x)
    al.save_adapter(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.safetensors", "adapter_config.json"]

    def no_unpickling(*args, **kwargs):
        raise AssertionError("loading an adapter must not unpickle anything")

    for module, function in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(module, function, no_unpickling)
    fresh = tiny_model(family)
    al.load_adapter(fresh, tmp_path)
    torch.testing.assert_close(output_of(fresh, x), expected, atol=1e-6, rtol=1e-6)
    assert al.get_config(fresh).to_dict() == al.get_config(model).saved_as().to_dict()  # MoSA saves its base
    assert not any(p.requires_grad for p in fresh.parameters())  # loaded for inference unless trainable=True


@pytest.mark.parametrize("method,family", CELLS)
def test_merge_keeps_outputs_and_unmerge_restores_the_base(method, family):
    model = adapted(method, family)
    x = tiny_inputs(family)
    base_state = {k: v.clone() for k, v in tiny_model(family).state_dict().items()}
    unmerged = output_of(model, x)
    config = al.get_config(model)
    if not config.mergeable:
        with pytest.raises(al.NotMergeableError, match=rf"\({config.method}\) cannot be merged"):
            al.merge(model)
        torch.testing.assert_close(output_of(model, x), unmerged, atol=0, rtol=0)
        return
    if (method, family) in MERGE_REFUSED:
        with pytest.raises(al.NotMergeableError, match=MERGE_REFUSED[method, family]) as info:
            al.merge(model)
        assert method in str(info.value)
        assert not any(a.merged for _, _, a in placed(model))  # all or nothing
        torch.testing.assert_close(output_of(model, x), unmerged, atol=0, rtol=0)
        return
    al.merge(model)
    assert all(a.merged for _, _, a in placed(model))
    state = model.state_dict()
    assert any(not torch.equal(state[k], v) for k, v in base_state.items())  # the weights took the adapter in
    torch.testing.assert_close(output_of(model, x), unmerged, atol=1e-5, rtol=1e-5)
    al.unmerge(model)
    state = model.state_dict()
    for key, value in base_state.items():
        torch.testing.assert_close(state[key], value, atol=1e-6, rtol=1e-6, msg=key)
    torch.testing.assert_close(output_of(model, x), unmerged, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method,family", CELLS)
def test_identity_at_init(method, family):
    options = IDENTITY_AT_INIT[method]
    if isinstance(options, str):
        pytest.skip(f"{method} changes the output from the start: it {options}")
    model, x = base_and_inputs(family)
    before = output_of(model, x)
    attach_or_skip(model, method, family, **options)
    torch.testing.assert_close(output_of(model, x), before, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("method,family", CELLS)
def test_two_adapters_switch_disable_and_detach(method, family, tmp_path):
    standalone_only(method)
    model, x = base_and_inputs(family)
    base = output_of(model, x)
    hooks, keys = hook_count(model), list(model.state_dict())
    attach_or_skip(model, method, family, "first")
    randomize_adapters(model, seed=1)
    attach_or_skip(model, method, family, "second")
    randomize_adapters(model, seed=2)  # only the active adapter ('second') is trainable, so 'first' keeps its values

    singles = {}  # each adapter alone on a fresh base, through a save/load round trip
    for name in ("first", "second"):
        al.save_adapter(model, tmp_path / name, name)
        alone = tiny_model(family)
        al.load_adapter(alone, tmp_path / name)
        singles[name] = output_of(alone, x)
    assert not torch.allclose(singles["first"], singles["second"])

    torch.testing.assert_close(output_of(model, x), singles["second"])
    al.set_active(model, "first")
    torch.testing.assert_close(output_of(model, x), singles["first"])
    with al.disabled(model):
        torch.testing.assert_close(output_of(model, x), base)
    torch.testing.assert_close(output_of(model, x), singles["first"])

    al.detach(model, "first")
    al.set_active(model, "second")
    torch.testing.assert_close(output_of(model, x), singles["second"])
    al.detach(model, "second")
    torch.testing.assert_close(output_of(model, x), base)
    assert list(model.state_dict()) == keys and hook_count(model) == hooks


@pytest.mark.parametrize("method,family", CELLS)
def test_deepcopy_runs_its_own_adapters(method, family):
    standalone_only(method)
    model = adapted(method, family)
    x = tiny_inputs(family)
    before = output_of(model, x)
    twin = copy.deepcopy(model)
    torch.testing.assert_close(output_of(twin, x), before)
    randomize_adapters(twin, seed=7)
    assert not torch.allclose(output_of(twin, x), before)
    torch.testing.assert_close(output_of(model, x), before)
    al.detach(twin)
    torch.testing.assert_close(output_of(twin, x), output_of(tiny_model(family), x))
    torch.testing.assert_close(output_of(model, x), before)


@pytest.mark.parametrize("method,family", CELLS)
def test_float32_adapters_train_over_a_bfloat16_base(method, family):
    model = tiny_model(family).to(torch.bfloat16)
    x = {k: v.bfloat16() if v.is_floating_point() else v for k, v in tiny_inputs(family).items()}
    attach_or_skip(model, method, family)
    for _, _, adapter in placed(model):
        adapter.float()
    randomize_adapters(model)
    model.train()
    out = output_of(model, x)
    assert out.dtype == torch.bfloat16
    out.float().pow(2).mean().backward()
    drawn = drawn_parameter(model)
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and not (drawn(n) and p.grad is None)]
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads)


# Methods that cannot train under activation checkpointing, with the reason.
# Methods that refuse activation checkpointing, with the words of their AdapterError.
CHECKPOINTING_REFUSED = {"prefix": "drops inside checkpointed layers"}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_activation_checkpointing_gives_the_same_gradients(method):
    """Recomputing the blocks in the backward pass (sublayer hand-over included) changes no gradient."""
    family = "bert" if (method, "llama") in UNSUPPORTED else "llama"
    x = tiny_inputs(family)
    labels = x["input_ids"] if family == "llama" else torch.tensor([0, 2])

    def loss_and_grads(checkpointing: bool) -> tuple[float, dict[str, torch.Tensor]]:
        model = adapted(method, family)
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        model.train()
        torch.manual_seed(0)  # dropout in adapters must replay identically in the recomputation
        with draw_context(model, step=0):  # stochastic methods' draws, held through the step as the Trainer does
            out = model(**x, labels=labels)
            out.loss.backward()
        return out.loss.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    if method in CHECKPOINTING_REFUSED:  # transformers drops past_key_values in checkpointed layers
        with pytest.raises(al.AdapterError, match=CHECKPOINTING_REFUSED[method]):
            loss_and_grads(True)
        return
    (loss, grads), (loss_ckpt, grads_ckpt) = loss_and_grads(False), loss_and_grads(True)
    assert loss_ckpt == pytest.approx(loss, abs=1e-6)
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], msg=name)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bad_options_and_targets_name_the_problem(method):
    standalone_only(method)
    model = tiny_model(next(f for f in ("bert", "llama") if (method, f) not in UNSUPPORTED))
    with pytest.raises(al.AdapterError, match=r"unknown option\(s\) \['no_such_option'\]. Valid options: \[.*'targets'"):
        al.attach(model, method, no_such_option=1)
    config_cls = al.config_class(method)
    # placed at the model's input, or on layers the method finds itself (linear_probe): targets make no sense
    if config_cls.site_kinds == ("model",) or method == "linear_probe":
        with pytest.raises(al.AdapterError, match="leave `targets`"):
            al.attach(model, method, targets=["o"])
    else:
        with pytest.raises(al.TargetNotFoundError, match=r"'no_such_layer' matches no module.*linear layers are named"):
            al.attach(model, method, targets=["no_such_layer"], **OPTIONS.get(method, {}))
    assert al.adapter_names(model) == [] and not list(placed(model))
    al.attach(model, method, **OPTIONS.get(method, {}))
    with pytest.raises(al.AdapterError, match="already attached"):
        al.attach(model, method, **OPTIONS.get(method, {}))
