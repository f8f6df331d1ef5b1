"""`adapterlab models list|pull`: show the known short-named models and fetch them into the local cache."""

from __future__ import annotations

import argparse

from ..models import KNOWN_MODELS, UnknownModelError, cached_size, is_cached, model_path, pull


def list_models(args: argparse.Namespace) -> int:
    """Print one row per known model: name, architecture, size, whether it is cached and where."""
    header = ("name", "arch", "params", "task", "cached", "size", "path")
    rows = []
    for name, model in KNOWN_MODELS.items():
        cached = is_cached(name)
        size = f"{cached_size(name) / 2**20:.1f} MiB" if cached else "-"
        rows.append((name, model.architecture, model.parameters, model.task, "yes" if cached else "no", size,
                     str(model_path(name))))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print()
    for name, model in KNOWN_MODELS.items():
        print(f"{name}: {model.description} [{model.requirement}]")
    return 0


def pull_models(args: argparse.Namespace) -> int:
    """Fetch each named model (reusing the cache unless --force)."""
    unknown = [n for n in args.names if n not in KNOWN_MODELS]
    if unknown:
        raise UnknownModelError(f"unknown model name(s) {', '.join(unknown)}; known: {', '.join(KNOWN_MODELS)}.")
    for name in args.names:
        pull(name, force=args.force)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list and pull the small models known by short name",
                                   description=__doc__)
    actions = parser.add_subparsers(dest="models_command", required=True)
    listing = actions.add_parser("list", help="known short names, what they are, cached or not")
    listing.set_defaults(func=list_models)
    pulling = actions.add_parser("pull", help="download models into $ADAPTERLAB_HOME (default ~/.cache/adapterlab)")
    pulling.add_argument("names", nargs="+", metavar="NAME", help=f"one of: {', '.join(KNOWN_MODELS)}")
    pulling.add_argument("--force", action="store_true", help="download again even when cached")
    pulling.set_defaults(func=pull_models)
