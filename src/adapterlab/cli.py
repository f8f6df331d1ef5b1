"""The `adapterlab` command. It only parses arguments and calls functions a Python user can call too.

Errors: one handler for every command. A `UserError` (or an OS error such as a full disk) prints one line,
`adapterlab CMD: error: ...`, and exits 2; `--debug` (anywhere on the line) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import sys
import warnings
from collections.abc import Iterator
from typing import NoReturn

from .errors import UserError

# Each subcommand module has `register(subparsers)`, which adds its parser and sets `func`.
SUBCOMMANDS = [
    "adapterlab.commands.demo",
    "adapterlab.commands.eval",
    "adapterlab.commands.export",
    "adapterlab.commands.merge",
    "adapterlab.commands.measure",
    "adapterlab.commands.compare",
    "adapterlab.commands.data",
    "adapterlab.commands.models",
    "adapterlab.commands.serve",
    "adapterlab.commands.train",
]
# What to do about an OS error, by errno; the message already names the file.
OS_FIXES = {
    errno.ENOSPC: "free disk space (or choose a folder on another disk) and run again",
    errno.EDQUOT: "free disk space (or choose a folder on another disk) and run again",
    errno.EROFS: "choose a folder on a writable file system",
    errno.EACCES: "choose a folder you may write to, or fix its permissions",
    errno.EPERM: "choose a folder you may write to, or fix its permissions",
    errno.ENOTDIR: "a path component is a file, not a folder; choose another path",
    errno.EISDIR: "that path is a folder; give a file",
    errno.ENOENT: "check the path",
}


class Parser(argparse.ArgumentParser):
    """argparse with the house error format: one line naming the problem and where to look, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="adapterlab", description="Attach, train, evaluate and measure adapters.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also accepted after "
                                                             "the command name)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in SUBCOMMANDS:
        importlib.import_module(module_name).register(subparsers)
    parser.commands = subparsers.choices  # command name -> its parser
    return parser


def describe_os_error(exc: OSError) -> str:
    """One line: what failed, on which file, and what to do."""
    where = f": {exc.filename}" if exc.filename else ""
    fix = OS_FIXES.get(exc.errno or -1, "check the path and the disk")
    return f"{exc.strerror or exc}{where}; {fix}."


@contextlib.contextmanager
def one_line_warnings(command: str, debug: bool) -> Iterator[None]:
    """Show each Python warning as one line, `adapterlab CMD: warning: ...` (with its source under --debug)."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        where = f" ({filename}:{lineno})" if debug else ""
        print(f"{command}: warning: {' '.join(str(message).split())}{where}", file=file or sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


# bitsandbytes (imported by transformers' Trainer through peft whenever it is installed) warns on every import, so
# on every command, that the optional `kernels` package for a faster CPU 4-bit matmul is missing; the slower path
# works. The CLI keeps that to --debug; the README says `pip install kernels` speeds up 4-bit on CPU.
QUIET_LOGGERS = ("bitsandbytes.backends.cpu.ops",)


def main(argv: list[str] | None = None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    debug = "--debug" in argv
    if not debug:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # name the command whose flags these are not
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    command = f"adapterlab {args.command}"
    try:
        with one_line_warnings(command, debug):
            return int(args.func(args) or 0)
    except UserError as exc:
        if debug:
            raise
        message = str(exc)
    except OSError as exc:
        if debug:
            raise
        message = describe_os_error(exc)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    print(f"{command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2
