"""Every method option says what it is (issue #20): its help metadata, the config class's docstring, and one
`train --help` group per method, generated from the registry so a new method is checked without a new test."""

from __future__ import annotations

import dataclasses
import pydoc
import re

import pytest

from adapterlab import config_class
from adapterlab.cli import build_parser, main
from adapterlab.commands.train import OPTION_ALIASES, OPTION_PREFIX
from adapterlab.core.registry import METHODS


def train_help(capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    return capsys.readouterr().out


def groups(text: str) -> dict[str, str]:
    """The help's sections: title line -> the text below it, up to the next title."""
    parts = re.split(r"^(\S[^\n]*):\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_option_has_help_and_is_in_the_class_docstring(method: str) -> None:
    """Each field of the method's config carries metadata help, and `help(config_class(m))` shows it."""
    cls = config_class(method)
    shown = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    flat = " ".join(shown.replace("|", " ").split())
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{method}: option {f.name!r} has no help metadata"
        assert f"{f.name} (" in shown, (method, f.name)
        assert " ".join(f.metadata["help"].split()[:6]) in flat, (method, f.name)


def test_train_help_has_one_group_per_method_with_each_option(capsys: pytest.CaptureFixture) -> None:
    """Every method names a group (`--adapter lora`, `--adapter series | houlsby | ...`), and that group lists
    each of the method's own options with its help; the options of every method have a group of their own."""
    sections = groups(train_help(capsys))
    common = {f.name for f in dataclasses.fields(config_class("lora"))} & {"targets", "exclude", "layers"}
    assert all(f"--{name}" in sections["adapter options of every method"] for name in common)
    for method in METHODS:
        titles = [t for t in sections if t.startswith("--adapter ") and method in t[len("--adapter "):].split(" | ")]
        assert len(titles) == 1, (method, list(sections))
        body = " ".join(sections[titles[0]].split())
        for f in dataclasses.fields(config_class(method)):
            if f.name in common:
                continue
            flag = f"--{f.name.replace('_', '-')}"
            assert flag in body or f"--{method}-{f.name.replace('_', '-')}" in body, (method, flag)
            assert " ".join(f.metadata["help"].split()[:4]) in body, (method, f.name)


def test_help_is_short_per_option_and_names_the_methods_a_shared_flag_belongs_to(capsys) -> None:
    """A flag is listed with one spelling (no --kernel_size beside --kernel-size) and says which other methods
    take it (--dropout in the lora group names the bottleneck adapters and conformer)."""
    text = train_help(capsys)
    sections = groups(text)
    assert "--kernel_size" not in sections["--adapter conformer"]
    lora = " ".join(sections["--adapter lora"].split())
    assert "Also an option of series" in lora and "conformer" in lora
    assert "--lora_r" in lora  # LLM-Adapters' spelling is named where the option is
    assert len(text.splitlines()[0]) < 130  # the usage line does not list every flag


def test_every_spelling_still_parses_to_its_option() -> None:
    """The shown flag, its underscore spelling, LLM-Adapters' aliases and --method-name all set the option."""
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    spellings: dict[str, set[str]] = {}
    for action in train._actions:
        if action.dest.startswith(OPTION_PREFIX):
            spellings.setdefault(action.dest[len(OPTION_PREFIX):], set()).update(action.option_strings)
    for method in METHODS:
        for f in dataclasses.fields(config_class(method)):
            flags = spellings[f.name]
            assert f"--{f.name}" in flags or f"--{method}-{f.name.replace('_', '-')}" in flags, (method, f.name)
    for alias, name in OPTION_ALIASES.items():
        assert {f"--{alias}", f"--{alias.replace('_', '-')}"} <= spellings[name], alias
    args = parser.parse_args(["train", "--lora_r", "4", "--bottleneck-size", "8", "--kernel_size", "3",
                              "--mosa-split", "both"])
    given = {k[len(OPTION_PREFIX):]: v for k, v in vars(args).items() if k.startswith(OPTION_PREFIX)}
    assert given == {"r": 4, "size": 8, "kernel_size": 3, "split": "both"}
