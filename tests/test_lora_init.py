"""LoRA's `init_lora_weights` against PEFT's: under one torch seed the same A, B and (PiSSA, OLoRA) the same residual
base weights; residual adapters save, load and export to the model they trained; other values are refused by name."""

from __future__ import annotations

import pytest
import torch

import adapterlab as al
from adapterlab.core.checkpoint import adapter_state_dict
from tiny_models import randomize_adapters, tiny_inputs, tiny_model

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("single_thread")

TARGETS = {"llama": (["q", "v", "down"], ["q_proj", "v_proj", "down_proj"]),
           "bert": (["q", "v", "down"], r".*encoder\.layer\.\d+\.(attention\.self\.(query|value)|output\.dense)"),
           "gpt2": (["qkv", "down"], ["c_attn", "mlp.c_proj"])}


def peft_key(key: str) -> str:
    for part in ("lora_A", "lora_B"):
        key = key.replace(f".{part}.", f".{part}.default.")
    return f"base_model.model.{key}"


def both(family: str, init, seed: int = 3, **options) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our LoRA and PEFT's with `init`, each attached right after torch.manual_seed(seed)."""
    ours_targets, peft_targets = TARGETS[family]
    model, base = tiny_model(family), tiny_model(family)
    torch.manual_seed(seed)
    al.attach(model, "lora", r=4, alpha=8, targets=ours_targets, init_lora_weights=init, **options)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=peft_targets, init_lora_weights=init,
                             fan_in_fan_out=family == "gpt2", **{"use_dora": options.get("use_dora", False)},
                             task_type="SEQ_CLS" if family == "bert" else "CAUSAL_LM")
    torch.manual_seed(seed)
    return model, peft.get_peft_model(base, config)


def base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base model's weights by their plain names (PEFT's wrapped `base_layer.` and prefix taken out)."""
    out = {}
    for key, value in model.state_dict().items():
        if "lora_" in key or "adapterlab" in key or "modules_to_save" in key:  # PEFT's copy of a SEQ_CLS head
            continue
        key = key.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(".original_module.", ".")
        out[key] = value
    return out


def outputs(model: torch.nn.Module, family: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**tiny_inputs(family)).logits


@pytest.mark.parametrize("init", [True, False, "gaussian", "pissa", "olora"])
@pytest.mark.parametrize("family", ["llama", "bert", "gpt2"])
def test_init_equals_peft_under_one_seed(family: str, init) -> None:
    if family == "gpt2" and init == "olora":
        pytest.skip("refused: PEFT's OLoRA ignores the Conv1D layout (test_refusals)")
    model, theirs = both(family, init)
    state = theirs.state_dict()
    mine = adapter_state_dict(model)
    assert sorted(peft_key(k) for k in mine) == sorted(k for k in state if "lora_" in k)
    for key, value in mine.items():
        torch.testing.assert_close(value, state[peft_key(key)], atol=1e-6, rtol=1e-5)
    if init is False:
        assert all(v.abs().max() > 0 for v in mine.values()), "PEFT's False leaves B random too"
    ours_base, peft_base = base_weights(model), base_weights(theirs)
    assert sorted(ours_base) == sorted(peft_base)
    for key, value in ours_base.items():
        torch.testing.assert_close(value, peft_base[key], atol=1e-6, rtol=1e-5)
    changed = any(not torch.equal(v, tiny_model(family).state_dict()[k]) for k, v in ours_base.items())
    assert changed == (init in ("pissa", "olora")), "only PiSSA and OLoRA change the base weights"
    if init is not False:  # every other init starts as the base model
        torch.testing.assert_close(outputs(model, family), outputs(tiny_model(family), family), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_residual_init_with_dora_equals_peft(init: str) -> None:
    """DoRA's magnitude is taken after the residual init, from W - s B A + s B A, as in PEFT."""
    model, theirs = both("llama", init, use_dora=True)
    state = theirs.state_dict()
    for key, value in adapter_state_dict(model).items():
        name = f"base_model.model.{key}.default.weight" if key.endswith("magnitude_vector") else peft_key(key)
        torch.testing.assert_close(value, state[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_detach_restores_and_merge_and_unload_keeps_the_residual_model(init: str) -> None:
    model = tiny_model("llama")
    al.attach(model, "lora", r=4, targets=["q", "v"], init_lora_weights=init)
    al.detach(model)
    for key, value in tiny_model("llama").state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=1e-6, rtol=1e-6)

    al.attach(model, "lora", r=4, targets=["q", "v"], init_lora_weights=init)
    randomize_adapters(model, std=0.2)
    trained = outputs(model, "llama")
    al.merge_and_unload(model)
    torch.testing.assert_close(outputs(model, "llama"), trained, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_saved_residual_adapter_loads_and_exports_onto_the_original_base(init: str, tmp_path) -> None:
    """The saved folder records the init; loading it into the original base derives the same residual weights."""
    model = tiny_model("llama")
    al.attach(model, "lora", r=4, targets=["q", "v"], init_lora_weights=init)
    randomize_adapters(model, std=0.2)
    trained = outputs(model, "llama")
    assert (trained - outputs(tiny_model("llama"), "llama")).abs().max() > 1e-2
    al.save_adapter(model, tmp_path / "ours")
    loaded = al.load_adapter(tiny_model("llama"), tmp_path / "ours")
    torch.testing.assert_close(outputs(loaded, "llama"), trained, atol=1e-6, rtol=1e-6)
    al.export_peft(model, tmp_path / "peft")
    theirs = peft.PeftModel.from_pretrained(tiny_model("llama"), str(tmp_path / "peft"))
    assert theirs.peft_config["default"].init_lora_weights == init
    torch.testing.assert_close(outputs(theirs, "llama"), trained, atol=1e-5, rtol=1e-5)
    back = al.load_peft(tiny_model("llama"), tmp_path / "peft")
    torch.testing.assert_close(outputs(back, "llama"), trained, atol=1e-6, rtol=1e-6)


def test_load_peft_imports_an_init_that_leaves_the_base_alone_as_plain_lora(tmp_path) -> None:
    theirs = peft.get_peft_model(tiny_model("llama"), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights="gaussian", task_type="CAUSAL_LM"))
    randomize_adapters(theirs, std=0.2)
    theirs.save_pretrained(str(tmp_path))
    model = al.load_peft(tiny_model("llama"), tmp_path)
    assert al.get_config(model).init_lora_weights is True
    torch.testing.assert_close(outputs(model, "llama"), outputs(theirs.eval(), "llama"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options, words", [
    ({"init_lora_weights": "loftq"}, "init_lora_weights='loftq' is not supported"),
    ({"init_lora_weights": "eva"}, "init_lora_weights='eva' is not supported"),
    ({"init_lora_weights": "corda"}, "init_lora_weights='corda' is not supported"),
    ({"init_lora_weights": "pissa_niter_4"}, "init_lora_weights='pissa_niter_4' is not supported"),
    ({"init_lora_weights": "kaiming"}, "must be true, false, gaussian, pissa or olora"),
    ({"init_lora_weights": "pissa", "r": 64}, "r=64 is more"),
    ({"use_dora": "maybe"}, "use_dora"),
])
def test_refusals(options: dict, words: str) -> None:
    model = tiny_model("llama")
    with pytest.raises(al.AdapterError, match=words):
        al.attach(model, "lora", targets=["q"], **options)
    assert al.adapter_names(model) == []


def test_olora_on_conv1d_and_mosa_with_an_init_are_refused() -> None:
    model = tiny_model("gpt2")
    with pytest.raises(al.AdapterError, match="olora"):
        al.attach(model, "lora", targets=["qkv"], init_lora_weights="olora")
    assert torch.equal(model.state_dict()["transformer.h.0.attn.c_attn.weight"],
                       tiny_model("gpt2").state_dict()["transformer.h.0.attn.c_attn.weight"])
    with pytest.raises(al.AdapterError, match="init_lora_weights"):
        al.attach(tiny_model("llama"), "mosa", base="lora", init_lora_weights="pissa")


def test_cli_flags_reach_the_lora_options() -> None:
    from adapterlab.cli import build_parser
    from adapterlab.commands.train import OPTION_PREFIX

    args = vars(build_parser().parse_args(["train", "--model", "m", "--data", "d.json", "--output", "o",
                                           "--adapter", "lora", "--use-dora", "--init-lora-weights", "pissa"]))
    assert args[OPTION_PREFIX + "use_dora"] is True
    assert args[OPTION_PREFIX + "init_lora_weights"] == "pissa"
    al.make_config("lora", use_dora=args[OPTION_PREFIX + "use_dora"], init_lora_weights="false")
    assert al.make_config("lora", init_lora_weights="false").init_lora_weights is False


def test_a_residual_init_shares_the_model_with_no_other_adapter() -> None:
    """PiSSA's residual base would change what every other adapter (and the base rows of a mixed batch) computes."""
    model = tiny_model("llama")
    al.attach(model, "lora", "plain", targets=["q"])
    with pytest.raises(al.AdapterError, match="already attached \\(plain\\)"):
        al.attach(model, "lora", "pissa", targets=["q"], init_lora_weights="pissa")
    al.detach(model, "plain")
    al.attach(model, "lora", "pissa", targets=["q"], init_lora_weights="pissa")
    with pytest.raises(al.AdapterError, match="'pissa' changed the base weights"):
        al.attach(model, "ia3", "other")
    assert al.adapter_names(model) == ["pissa"]
