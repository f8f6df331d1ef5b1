"""add_weighted_adapter against PEFT's: the combined LoRA's A and B (and the logits) for every combination type,
the DARE types under one torch seed; IA3's weighted sum against PEFT's; bottleneck and prompt parameter sums by
hand; refusals by name (`adapterlab merge`: tests/test_merge_command.py)."""

from __future__ import annotations

import pytest
import torch

import adapterlab
from adapterlab.compose import add_weighted_adapter
from adapterlab.core.checkpoint import adapter_state_dict
from adapterlab.errors import AdapterError

from tiny_models import randomize_adapters, tiny_inputs, tiny_model

peft = pytest.importorskip("peft")

WEIGHTS = [0.7, -0.4]
DETERMINISTIC = ["linear", "cat", "svd", "ties", "ties_svd", "magnitude_prune", "magnitude_prune_svd"]
DARE = ["dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd"]
PRUNING = {"ties", "ties_svd", "magnitude_prune", "magnitude_prune_svd", *DARE}


def lora_model(ranks=(4, 4), targets=(["q", "v"], ["q", "v"]), alphas=(8, 4)) -> torch.nn.Module:
    """A tiny Llama with LoRAs a, b (, c) of the given ranks, targets and alphas, all with random non-zero B."""
    model = tiny_model("llama")
    for i, (r, t, alpha) in enumerate(zip(ranks, targets, alphas)):
        adapterlab.attach(model, "lora", "abc"[i], r=r, alpha=alpha, targets=t)
        randomize_adapters(model, std=0.3, seed=10 + i)  # only the adapter just attached is trainable
    return model


def peft_twin(model, names, tmp_path):
    """The same base with the same adapters, loaded into PEFT from adapterlab's PEFT export."""
    twin = None
    for name in names:
        folder = tmp_path / f"peft_{name}"
        adapterlab.export_peft(model, folder, name=name)
        if twin is None:
            twin = peft.PeftModel.from_pretrained(tiny_model("llama"), str(folder), adapter_name=name)
        else:
            twin.load_adapter(str(folder), adapter_name=name)
    return twin


def peft_tensors(twin, name: str) -> dict[str, torch.Tensor]:
    """PEFT's A and B of adapter `name`, keyed as adapterlab keys them."""
    out = {}
    for key, tensor in twin.state_dict().items():
        for part in ("lora_A", "lora_B"):
            tag = f".{part}.{name}."
            if tag in key:
                out[key.removeprefix("base_model.model.").replace(tag, f".{part}.")] = tensor
    return out


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def combine_both(model, twin, names, kind, seed=0, **options):
    if kind in PRUNING:
        options.setdefault("density", 0.5)
    torch.manual_seed(seed)
    twin.add_weighted_adapter(names, WEIGHTS[: len(names)] + [0.5] * (len(names) - 2), "m",
                              combination_type=kind, **options)
    torch.manual_seed(seed)
    add_weighted_adapter(model, names, WEIGHTS[: len(names)] + [0.5] * (len(names) - 2), "m",
                         combination_type=kind, **options)
    twin.set_adapter("m")


def assert_same(model, twin) -> None:
    mine, theirs = adapter_state_dict(model, "m"), peft_tensors(twin, "m")
    assert sorted(mine) == sorted(theirs), "the combined adapter sits at other layers than PEFT's"
    for key in mine:
        assert mine[key].shape == theirs[key].shape, key
        torch.testing.assert_close(mine[key], theirs[key], atol=1e-6, rtol=1e-5, msg=key)
    inputs = tiny_inputs("llama")
    with adapterlab.disabled(model):
        base = logits(model, inputs)
    ours = logits(model, inputs)
    assert (ours - base).abs().max() > 1e-3, "the combined adapter does nothing: the comparison would be vacuous"
    torch.testing.assert_close(ours, logits(twin, inputs), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", DETERMINISTIC + DARE)
def test_lora_types_equal_peft(kind: str, tmp_path) -> None:
    model = lora_model()
    twin = peft_twin(model, ["a", "b"], tmp_path)
    combine_both(model, twin, ["a", "b"], kind, seed=3)
    assert_same(model, twin)
    assert adapterlab.active_adapters(model) == ["m"] and adapterlab.count_parameters(model)[0] == 0


@pytest.mark.parametrize("kind", ["cat", "svd", "ties_svd", "dare_ties_svd"])
def test_different_ranks_and_targets_equal_peft(kind: str, tmp_path) -> None:
    """cat and the svd types take LoRAs of different ranks; a layer only one adapts combines that one alone."""
    model = lora_model(ranks=(4, 2, 3), targets=(["q", "v"], ["q", "k"], ["v"]), alphas=(8, 4, 6))
    twin = peft_twin(model, ["a", "b", "c"], tmp_path)
    combine_both(model, twin, ["a", "b", "c"], kind, seed=5)
    assert_same(model, twin)
    adapterlab.save_adapter(model, tmp_path / "m", name="m")  # placed at the union of the layers: saved that way
    loaded = adapterlab.load_adapter(tiny_model("llama"), tmp_path / "m")
    inputs = tiny_inputs("llama")
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs))


@pytest.mark.parametrize("options", [dict(svd_rank=2), dict(svd_clamp=0.9), dict(svd_full_matrices=False)])
def test_svd_options_equal_peft(options, tmp_path) -> None:
    model = lora_model()
    twin = peft_twin(model, ["a", "b"], tmp_path)
    combine_both(model, twin, ["a", "b"], "svd", **options)
    assert_same(model, twin)


@pytest.mark.parametrize("kind", ["ties", "dare_ties"])
def test_frequency_sign_election_equals_peft(kind: str, tmp_path) -> None:
    model = lora_model()
    twin = peft_twin(model, ["a", "b"], tmp_path)
    combine_both(model, twin, ["a", "b"], kind, seed=7, majority_sign_method="frequency", density=0.7)
    assert_same(model, twin)


def test_cat_is_the_exact_weighted_sum() -> None:
    model = lora_model(ranks=(4, 2))
    add_weighted_adapter(model, ["a", "b"], WEIGHTS, "m", combination_type="cat")
    for _, host, _ in adapterlab.core.site_hooks.placed(model, "m"):
        slot = host._modules["adapterlab"]
        expected = sum(w * slot[n].delta_weight() for n, w in zip("ab", WEIGHTS))
        torch.testing.assert_close(slot["m"].delta_weight(), expected, atol=1e-6, rtol=1e-5)
    assert adapterlab.get_config(model, "m").r == 6 and adapterlab.get_config(model, "m").alpha == 6


def test_combined_lora_saves_loads_and_merges(tmp_path) -> None:
    model = lora_model()
    add_weighted_adapter(model, ["a", "b"], [1.0, 1.0], "m", combination_type="ties", density=0.6)
    inputs = tiny_inputs("llama")
    expected = logits(model, inputs)
    adapterlab.save_adapter(model, tmp_path / "m", name="m")
    loaded = adapterlab.load_adapter(tiny_model("llama"), tmp_path / "m")
    torch.testing.assert_close(logits(loaded, inputs), expected)
    adapterlab.merge(loaded)
    torch.testing.assert_close(logits(loaded, inputs), expected, atol=1e-5, rtol=1e-4)


def test_ia3_equals_peft(tmp_path) -> None:
    model = tiny_model("llama")
    adapterlab.attach(model, "ia3", "a")
    randomize_adapters(model, std=0.3, seed=1)
    adapterlab.attach(model, "ia3", "b", targets=["k", "down"])  # fewer layers: v only in a
    randomize_adapters(model, std=0.3, seed=2)
    twin = None
    for name in "ab":
        adapterlab.export_peft(model, tmp_path / name, name=name)
        if twin is None:
            twin = peft.PeftModel.from_pretrained(tiny_model("llama"), str(tmp_path / name), adapter_name=name)
        else:
            twin.load_adapter(str(tmp_path / name), adapter_name=name)
    twin.add_weighted_adapter(["a", "b"], [0.6, 0.4], "m")
    twin.set_adapter("m")
    add_weighted_adapter(model, ["a", "b"], [0.6, 0.4], "m")
    theirs = {k.removeprefix("base_model.model.").replace(".ia3_l.m", ".ia3_l"): v
              for k, v in twin.state_dict().items() if k.endswith(".ia3_l.m")}
    mine = adapter_state_dict(model, "m")
    assert sorted(mine) == sorted(theirs)
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], msg=key)
    inputs = tiny_inputs("llama")
    torch.testing.assert_close(logits(model, inputs), logits(twin, inputs), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method, options", [("series", dict(size=8)), ("prompt", dict(num_virtual_tokens=3)),
                                             ("prefix", dict(num_virtual_tokens=3))])
def test_parameter_average_by_hand(method: str, options: dict, tmp_path) -> None:
    model = tiny_model("llama")
    for i, name in enumerate("ab"):
        adapterlab.attach(model, method, name, **options)
        randomize_adapters(model, std=0.3, seed=20 + i)
    add_weighted_adapter(model, ["a", "b"], [0.25, 0.75], "m")
    a, b, m = (adapter_state_dict(model, n) for n in ("a", "b", "m"))
    assert sorted(m) == sorted(a)
    for key in m:
        torch.testing.assert_close(m[key], 0.25 * a[key] + 0.75 * b[key], msg=key)
    adapterlab.save_adapter(model, tmp_path / "m", name="m")
    loaded = adapterlab.load_adapter(tiny_model("llama"), tmp_path / "m")
    inputs = tiny_inputs("llama")
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs))


@pytest.mark.parametrize("setup, call, named", [
    (dict(ranks=(4, 2)), dict(combination_type="linear"), "share one rank"),
    ({}, dict(combination_type="ties"), "needs density"),
    ({}, dict(combination_type="linear", density=0.5), "does not use density"),
    ({}, dict(combination_type="svd", majority_sign_method="total"), "does not use majority_sign_method"),
    ({}, dict(combination_type="ties", density=0.0), "density must be"),
    ({}, dict(combination_type="svd", svd_rank=99), "svd_rank 99 exceeds"),
    ({}, dict(combination_type="svd", svd_driver="gesvd"), "CUDA only"),
    ({}, dict(combination_type="mean"), "Unknown combination_type"),
    ({}, dict(weights=[1.0]), "1 weight(s) for 2"),
    ({}, dict(adapters=["a", "zzz"]), "No adapter named 'zzz'"),
    ({}, dict(adapter_name="a"), "already attached"),
])
def test_refusals_name_the_problem(setup, call, named) -> None:
    model = lora_model(**setup)
    args = {**dict(adapters=["a", "b"], weights=WEIGHTS, adapter_name="m"), **call}
    before = adapterlab.adapter_names(model)
    with pytest.raises(AdapterError, match=named.replace("(", r"\(").replace(")", r"\)")):
        add_weighted_adapter(model, **args)
    assert adapterlab.adapter_names(model) == before, "a refused combination leaves the model as it was"


def test_refuses_mixed_methods_and_unequal_options() -> None:
    model = tiny_model("llama")
    adapterlab.attach(model, "lora", "a")
    adapterlab.attach(model, "ia3", "b")
    adapterlab.attach(model, "series", "c", size=8)
    adapterlab.attach(model, "series", "d", size=4)
    with pytest.raises(AdapterError, match=r"different methods cannot be combined: a \(lora\), b \(ia3\)"):
        add_weighted_adapter(model, ["a", "b"], [1, 1], "m")
    with pytest.raises(AdapterError, match="differ in size"):
        add_weighted_adapter(model, ["c", "d"], [1, 1], "m")
    with pytest.raises(AdapterError, match="defined for LoRA"):
        add_weighted_adapter(model, ["c", "d"], [1, 1], "m", combination_type="ties", density=0.5)
    adapterlab.attach(model, "mosa", "e", base="lora", modules=2, split="up", targets=["q"])
    with pytest.raises(AdapterError, match="mosa adapters cannot be combined"):
        add_weighted_adapter(model, ["e"], [1], "m")
    assert "m" not in adapterlab.adapter_names(model)


def test_ia3_refuses_a_layer_scaled_on_input_by_one_and_output_by_another() -> None:
    model = tiny_model("llama")
    adapterlab.attach(model, "ia3", "a")  # the down projection scales its input
    adapterlab.attach(model, "ia3", "b", targets=["down"], feedforward=[])  # ... and here its output
    with pytest.raises(AdapterError, match="scale the layer's input"):
        add_weighted_adapter(model, ["a", "b"], [0.5, 0.5], "m")
    assert adapterlab.adapter_names(model) == ["a", "b"] and adapterlab.active_adapters(model) == ["b"]


def test_one_adapter_is_combined_as_linear_as_in_peft() -> None:
    model = lora_model()
    add_weighted_adapter(model, ["a"], [2.0], "m", combination_type="svd")
    assert adapterlab.get_config(model, "m").r == 4  # linear keeps the rank; the weight splits as sqrt(2 * 2) each
    for _, host, new in adapterlab.core.site_hooks.placed(model, "m"):
        a = host._modules["adapterlab"]["a"]
        torch.testing.assert_close(new.delta_weight(), 2.0 * a.delta_weight())


def test_dare_equals_peft_when_shared_targets_do_not_place_the_union(tmp_path) -> None:
    """Both adapters say targets=q, but they were attached with an architecture that calls v_proj q: attached again
    without it, q is q_proj. That first try is undone, its init draws with it, so the seeded masks match PEFT's."""
    model = tiny_model("llama")
    for i, (name, alpha) in enumerate([("a", 8), ("b", 4)]):
        adapterlab.attach(model, "lora", name, r=4, alpha=alpha, targets=["q"], architecture={"q": "self_attn.v_proj"})
        randomize_adapters(model, std=0.3, seed=10 + i)
    twin = peft_twin(model, ["a", "b"], tmp_path)
    combine_both(model, twin, ["a", "b"], "dare_linear", seed=2)
    assert_same(model, twin)
    assert all(".v_proj." in key for key in adapter_state_dict(model, "m"))
