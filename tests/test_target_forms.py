"""PEFT's target forms: a regex matched in full, "all-linear" and exclude_modules (as `exclude`).

On every tiny family, adapterlab's LoRA and IA3 given each form land on exactly the modules PEFT's get_peft_model
wraps for the same settings; load_peft of a PEFT adapter saved with each form gives PEFT's logits; and the
forms' misuses are refused by name.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

import adapterlab
from adapterlab.core.engine import placed
from adapterlab.core.layers import is_linear
from adapterlab.errors import AdapterError, IncompatibleAdapterError, TargetNotFoundError

from tiny_models import ALL, CAUSAL, ENCODERS, randomize_adapters, tiny_inputs, tiny_model

peft = pytest.importorskip("peft")
from peft.tuners.ia3 import IA3Layer  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402

ATOL = 1e-5


def block_suffixes(model: torch.nn.Module) -> list[str]:
    """Last name parts of the linear layers inside numbered blocks (the head and embeddings left out)."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if is_linear(m) and re.search(r"\.\d+\.", n)})


def forms(family: str) -> dict[str, dict]:
    """Each target form as (adapterlab's options, PEFT's options) on this family, written from its module names."""
    suffixes = block_suffixes(tiny_model(family))
    block_one = rf".*\.1\.(.*\.)?({'|'.join(suffixes)})"  # every block linear of the second block of some list
    return {
        "all-linear": ({"targets": "all-linear"}, {"target_modules": "all-linear"}),
        "regex": ({"targets": block_one}, {"target_modules": block_one}),
        "exclude-regex": ({"targets": suffixes, "exclude": rf".*\.{suffixes[0]}"},
                          {"target_modules": suffixes, "exclude_modules": rf".*\.{suffixes[0]}"}),
        "exclude-list": ({"targets": "all-linear", "exclude": [suffixes[-1]]},
                         {"target_modules": "all-linear", "exclude_modules": [suffixes[-1]]}),
    }


def peft_task(family: str) -> dict:
    """PEFT's task settings as users write them: causal LMs and sequence classifiers by task type; image and audio
    classifiers (no PEFT task type) with their classifier in modules_to_save."""
    if family in CAUSAL:
        return {"task_type": "CAUSAL_LM"}
    if family in ENCODERS:
        return {"task_type": "SEQ_CLS"}
    return {"modules_to_save": ["classifier"]}


def peft_model_of(method: str, family: str, options: dict):
    model = tiny_model(family)
    common = {**peft_task(family), **options, "fan_in_fan_out": family == "gpt2"}
    if method == "lora":
        config = peft.LoraConfig(r=4, lora_alpha=8, **common)
    else:
        config = peft.IA3Config(feedforward_modules=[], **common)
    return peft.get_peft_model(model, config)


def peft_wrapped(peft_model, method: str) -> set[str]:
    layer = LoraLayer if method == "lora" else IA3Layer
    return {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if isinstance(m, layer)}


def ours(method: str, family: str, options: dict) -> torch.nn.Module:
    model = tiny_model(family)
    extra = {"r": 4, "alpha": 8} if method == "lora" else {"feedforward": []}
    adapterlab.attach(model, method, **extra, **options)
    return model


def placed_paths(model: torch.nn.Module) -> set[str]:
    return {adapter._site.path for *_, adapter in placed(model, "default")}


@pytest.mark.parametrize("form", ["all-linear", "regex", "exclude-regex", "exclude-list"])
@pytest.mark.parametrize("family", ALL)
@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_each_form_lands_where_peft_does(method: str, family: str, form: str) -> None:
    mine, theirs = forms(family)[form]
    expected = peft_wrapped(peft_model_of(method, family, theirs), method)
    got = placed_paths(ours(method, family, mine))
    assert expected, "PEFT wrapped nothing; the comparison would be vacuous"
    assert got == expected, f"only ours: {sorted(got - expected)}; only PEFT's: {sorted(expected - got)}"


def outputs(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    return torch.cat([out.logits.flatten(), out.hidden_states[-1].flatten()])


def saved_peft(tmp_path, method: str, family: str, options: dict):
    peft_model = peft_model_of(method, family, options)
    randomize_adapters(peft_model, std=0.2)
    peft_model.save_pretrained(str(tmp_path))
    return peft_model


def assert_same_as_peft(model, peft_model, family: str) -> None:
    inputs = tiny_inputs(family)
    base = outputs(tiny_model(family), inputs)
    mine, theirs = outputs(model, inputs), outputs(peft_model, inputs)
    assert (theirs - base).abs().max() > 1e-2, "the adapter barely changes the output; the comparison is vacuous"
    assert (mine - theirs).abs().max().item() < ATOL


@pytest.mark.parametrize("form", ["all-linear", "regex", "exclude-regex", "exclude-list"])
@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_load_peft_of_each_form_gives_peft_logits(family: str, form: str, tmp_path) -> None:
    peft_model = saved_peft(tmp_path, "lora", family, forms(family)[form][1])
    model = adapterlab.load_peft(tiny_model(family), tmp_path)
    assert placed_paths(model) == peft_wrapped(peft_model, "lora")
    assert_same_as_peft(model, peft_model, family)


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_load_peft_reads_a_literal_all_linear_and_exclude_in_the_file(method: str, tmp_path) -> None:
    """PEFT saves all-linear resolved to names; a file that says "all-linear" (with exclude_modules) is resolved
    as PEFT resolves it on load."""
    peft_model = saved_peft(tmp_path, method, "llama", {"target_modules": "all-linear", "exclude_modules": "o_proj"})
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "target_modules": "all-linear"}))
    reloaded = peft.PeftModel.from_pretrained(tiny_model("llama"), str(tmp_path))
    model = adapterlab.load_peft(tiny_model("llama"), tmp_path)
    assert placed_paths(model) == peft_wrapped(reloaded, method) == peft_wrapped(peft_model, method)
    assert_same_as_peft(model, peft_model, "llama")


def test_load_peft_applies_layers_to_transform(tmp_path) -> None:
    peft_model = saved_peft(tmp_path, "lora", "llama", {"target_modules": ["q_proj", "v_proj"],
                                                        "layers_to_transform": [1]})
    model = adapterlab.load_peft(tiny_model("llama"), tmp_path)
    assert placed_paths(model) == peft_wrapped(peft_model, "lora") == {
        "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"}
    assert_same_as_peft(model, peft_model, "llama")


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_all_linear_with_exclude_exports_to_peft_and_back(family: str, tmp_path) -> None:
    model = ours("lora", family, {"targets": "all-linear", "exclude": "output,o"})
    randomize_adapters(model, std=0.2)
    adapterlab.export_peft(model, tmp_path)
    loaded = peft.PeftModel.from_pretrained(tiny_model(family), str(tmp_path))
    assert peft_wrapped(loaded, "lora") == placed_paths(model)
    assert_same_as_peft(model, loaded, family)


def test_regex_and_exclude_survive_save_and_load(tmp_path) -> None:
    model = ours("lora", "llama", {"targets": r".*\.(q|v)_proj", "exclude": r".*\.0\..*"})
    randomize_adapters(model, std=0.2)
    adapterlab.save_adapter(model, tmp_path)
    loaded = adapterlab.load_adapter(tiny_model("llama"), tmp_path)
    assert placed_paths(loaded) == placed_paths(model) == {"model.layers.1.self_attn.q_proj",
                                                           "model.layers.1.self_attn.v_proj"}
    inputs = tiny_inputs("llama")
    assert torch.equal(outputs(loaded, inputs), outputs(model, inputs))


def test_a_string_without_regex_characters_stays_a_list_of_names() -> None:
    """Backward compatible: "q", "q,v" and "q_proj" are names (logical or suffixes), as before."""
    assert adapterlab.make_config("lora", targets="q").targets == ["q"]
    assert adapterlab.make_config("lora", targets="q, v").targets == ["q", "v"]
    assert adapterlab.make_config("lora", targets="ALL-LINEAR").targets == "all-linear"
    assert adapterlab.make_config("lora", targets=r".*\.q_proj").targets == r".*\.q_proj"
    assert placed_paths(ours("lora", "llama", {"targets": "q"})) == {f"model.layers.{i}.self_attn.q_proj" for i in (0, 1)}


def test_layers_narrow_a_regex() -> None:
    model = ours("lora", "llama", {"targets": "all-linear", "layers": [0]})
    assert placed_paths(model) and all(p.startswith("model.layers.0.") for p in placed_paths(model))


@pytest.mark.parametrize("options, error, named", [
    ({"targets": r".*\.nothing_here"}, TargetNotFoundError, r"nothing_here.*matches no module"),
    ({"targets": "all-linear", "exclude": ".*"}, TargetNotFoundError, "takes out every one"),
    ({"targets": "q,v", "exclude": "fc1"}, TargetNotFoundError, "takes out none"),
    ({"targets": r".*\.mlp"}, AdapterError, r"model\.layers\.0\.mlp', a LlamaMLP"),
    ({"targets": ["q_proj", r".*\.v_proj"]}, AdapterError, "among names"),
    ({"targets": r".*\.(q_proj"}, AdapterError, "not a valid regular expression"),
])
def test_misused_forms_are_refused_by_name(options: dict, error: type, named: str) -> None:
    model = tiny_model("llama")
    with pytest.raises(error, match=named):
        adapterlab.attach(model, "lora", **options)
    assert adapterlab.adapter_names(model) == []


@pytest.mark.parametrize("method", ["prompt", "linear_probe"])
def test_methods_without_targets_refuse_exclude(method: str) -> None:
    with pytest.raises(AdapterError, match="exclude"):
        adapterlab.make_config(method, exclude="q_proj")


def test_load_peft_whose_exclude_removes_everything_is_refused(tmp_path) -> None:
    saved_peft(tmp_path, "lora", "llama", {"target_modules": ["q_proj", "v_proj"]})
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "exclude_modules": r".*_proj"}))
    model = tiny_model("llama")
    with pytest.raises(IncompatibleAdapterError, match="no module of this model matches"):
        adapterlab.load_peft(model, tmp_path)
    assert adapterlab.adapter_names(model) == []


def test_train_flags_take_a_regex_whole_and_an_exclude() -> None:
    from adapterlab.cli import build_parser
    from adapterlab.commands.train import config_from_args

    regex = r".*\.layers\.(0|1)\.self_attn\.[qv]_proj{1,1}"
    args = build_parser().parse_args(["train", "--model", "m", "--data", "d.json", "--output", "o", "--adapter",
                                      "lora", "--targets", regex, "--exclude", "q_proj,k_proj"])
    options = config_from_args(args).adapter_options
    assert options == {"targets": regex, "exclude": ["q_proj", "k_proj"]}
    config = adapterlab.make_config("lora", **options)
    assert (config.targets, config.exclude) == (regex, ["q_proj", "k_proj"])
