"""Generate the README's methods x architectures table by trying every registered method on a tiny model
of every family (attach, forward, backward, and merge for mergeable methods).

    python scripts/support_table.py          # rewrite the table in README.md
    python scripts/support_table.py --check  # exit 1 if README.md's table is stale (tests run this)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tiny_models import ALL, output_of, tiny_inputs, tiny_model  # noqa: E402

import adapterlab as al  # noqa: E402
from adapterlab.core.composition import Composing  # noqa: E402
from adapterlab.errors import AdapterError  # noqa: E402
from adapterlab.core.registry import config_class, method_names  # noqa: E402

START, END = "<!-- support-table:start -->", "<!-- support-table:end -->"
SMALL = {"size": 8, "r": 4, "num_virtual_tokens": 3, "kernel_size": 3, "encoder_hidden_size": 16}
LABEL = {"gpt_neox": "gpt-neox", "ast": "AST", "hubert": "HuBERT", "swin": "Swin"}


def options_for(method: str) -> dict:
    fields = set(config_class(method).option_names())
    return {k: v for k, v in SMALL.items() if k in fields}


def cell(method: str, family: str, reasons: dict[str, str]) -> str:
    """'✓' (attaches, trains), '✓ m' (also merges), or '✗ n' with footnote n holding the refusal."""
    torch.manual_seed(0)
    model, inputs = tiny_model(family), tiny_inputs(family)
    options = options_for(method)
    if issubclass(config_class(method), Composing):  # fusion: over two series adapters attached first
        for member in ("m0", "m1"):
            al.attach(model, "pfeiffer", member, **options_for("pfeiffer"))
        options["adapters"] = ["m0", "m1"]
    try:
        al.attach(model, method, **options)
        output_of(model, inputs).float().sum().backward()
    except AdapterError as exc:
        return "✗ " + footnote(reasons, str(exc))
    if not al.get_config(model).mergeable:
        return "✓"
    try:
        al.merge(model)
    except AdapterError as exc:
        return "✓ (merge ✗ " + footnote(reasons, str(exc)) + ")"
    return "✓ m"


def footnote(reasons: dict[str, str], message: str) -> str:
    first = message.split(". ")[0].rstrip(".") + "."
    first = re.sub(r"(this )?\w+(ForCausalLM|LMHeadModel|ForSequenceClassification|ForImageClassification|"
                   r"ForAudioClassification)", "this model", first)
    if first not in reasons:
        reasons[first] = str(len(reasons) + 1)
    return f"[{reasons[first]}]"


def render() -> str:
    """The Markdown table (and its footnotes) as the README holds it."""
    torch.set_num_threads(1)
    reasons: dict[str, str] = {}
    header = "| method | " + " | ".join(LABEL.get(f, f) for f in ALL) + " |"
    lines = [header, "|---" * (len(ALL) + 1) + "|"]
    for method in method_names():
        lines.append(f"| `{method}` | " + " | ".join(cell(method, f, reasons) for f in ALL) + " |")
    lines.append("")
    lines.append("✓ attaches and trains; m: also merges into the base weights. Refusals, with the error's words:")
    lines.append("")
    lines.extend(f"{n}. {text}" for text, n in reasons.items())
    return "\n".join(lines)


def replace_table(readme: str, table: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if README.md's table is out of date")
    args = parser.parse_args()
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    updated = replace_table(readme, render())
    if args.check:
        if updated != readme:
            print("README.md's support table is stale: run `python scripts/support_table.py`.")
            return 1
        return 0
    readme_path.write_text(updated)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
