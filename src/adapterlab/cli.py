"""The `adapterlab` command. It only parses arguments and calls functions a Python user can call too."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each subcommand module has `register(subparsers)`, which adds its parser and sets `func`.
SUBCOMMANDS = [
    "adapterlab.commands.demo",
    "adapterlab.commands.eval",
    "adapterlab.commands.measure",
    "adapterlab.commands.models",
    "adapterlab.commands.train",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adapterlab", description="Attach, train, evaluate and measure adapters.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in SUBCOMMANDS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    return int(args.func(args) or 0)
