"""Option values of the wrong type, in attach options or a saved adapter_config.json: coerced or refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import output_of, randomize_adapters, tiny_inputs, tiny_model

import adapterlab as al

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def saved_lora(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    """A trained-looking LoRA (r=8) on the tiny LLaMA, saved to tmp_path/lora."""
    model = al.attach(tiny_model("llama"), "lora", r=8, alpha=16.0)
    randomize_adapters(model)
    return model, al.save_adapter(model, tmp_path / "lora")


def edit_config(folder: Path, **changes) -> Path:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return path


@pytest.mark.reliability
def test_saved_alpha_of_the_wrong_type(saved_lora) -> None:
    """"alpha": "eight" in adapter_config.json -> one-line error naming alpha, its value, the type and the file"""
    _, folder = saved_lora
    path = edit_config(folder, alpha="eight")
    with pytest.raises(al.AdapterError) as caught:
        al.load_adapter(tiny_model("llama"), folder)
    message = str(caught.value)
    assert "\n" not in message
    assert all(part in message for part in ("`alpha`", "'eight'", "a number (float)", str(path))), message


@pytest.mark.reliability
def test_saved_method_that_is_not_a_name(saved_lora) -> None:
    """"method": ["lora"] in adapter_config.json -> one-line error naming method and the file"""
    _, folder = saved_lora
    path = edit_config(folder, method=["lora"])
    with pytest.raises(al.AdapterError, match=rf"^{path}: `method` is \['lora'\], but it must be a method name"):
        al.load_adapter(tiny_model("llama"), folder)


@pytest.mark.reliability
def test_saved_rank_as_a_string_loads(saved_lora) -> None:
    """"r": "8" (a number written as a string) in adapter_config.json -> loads as r=8"""
    model, folder = saved_lora
    edit_config(folder, r="8", alpha=16)
    loaded = al.load_adapter(tiny_model("llama"), folder)
    assert (al.get_config(loaded).r, al.get_config(loaded).alpha) == (8, 16.0)
    x = tiny_inputs("llama")
    torch.testing.assert_close(output_of(loaded, x), output_of(model, x), atol=0, rtol=0)


@pytest.mark.reliability
def test_saved_value_that_fails_validation_names_the_file(saved_lora) -> None:
    """"r": 0 in adapter_config.json -> the option's error, with the file named"""
    _, folder = saved_lora
    path = edit_config(folder, r=0)
    with pytest.raises(al.AdapterError, match=rf"`r` must be a positive integer.*\({path}\)"):
        al.load_adapter(tiny_model("llama"), folder)


@pytest.mark.reliability
@pytest.mark.parametrize("method, options, expected", [
    ("lora", {"r": "4", "alpha": 8, "layers": "0,1", "targets": "q,v"},
     {"r": 4, "alpha": 8.0, "layers": [0, 1], "targets": ["q", "v"]}),
    ("series", {"size": 8.0, "bias": "false", "scaling": 2}, {"size": 8, "bias": False, "scaling": 2.0}),
])
def test_attach_options_are_coerced_where_unambiguous(method: str, options: dict, expected: dict) -> None:
    """attach options written as strings or ints ("4", 8, "0,1", "false") -> coerced to the option's type"""
    model = al.attach(tiny_model("llama"), method, **options)
    config = al.get_config(model)
    assert {key: getattr(config, key) for key in expected} == expected
    assert all(type(getattr(config, key)) is type(value) for key, value in expected.items())


@pytest.mark.reliability
@pytest.mark.parametrize("method, options, match", [
    ("lora", {"alpha": "eight"}, r"lora: `alpha` is 'eight', but it must be a number \(float\)"),
    ("lora", {"r": 2.5}, r"lora: `r` is 2.5, but it must be an integer \(int\)"),
    ("lora", {"r": True}, r"lora: `r` is True, but it must be an integer \(int\)"),
    ("lora", {"targets": {"q": 1}},
     r"lora: `targets` is \{.q.: 1\}, but it must be a list of strings or a string or null"),
    ("series", {"scaling": [1]}, r"series: `scaling` is \[1\], but it must be a number \(float\) or a string"),
    ("bitfit", {"norms": "maybe"}, r"bitfit: `norms` is 'maybe', but it must be true or false"),
])
def test_attach_options_of_the_wrong_type_are_refused(method: str, options: dict, match: str) -> None:
    """attach option of the wrong type (alpha="eight", r=2.5, targets=5) -> error naming the option, value and type"""
    with pytest.raises(al.AdapterError, match=match):
        al.attach(tiny_model("llama"), method, **options)
