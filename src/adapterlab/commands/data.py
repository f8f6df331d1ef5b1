"""`adapterlab data`: fetch the known data sets (LLM-Adapters' published files, digest-checked) and show where each
name resolves.

    adapterlab data pull gsm8k          # into ~/.cache/adapterlab/datasets (or $ADAPTERLAB_HOME/datasets)
    adapterlab data pull all
    adapterlab data list
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.catalog import CATALOG, COMMIT, REPOSITORY
from ..data.locations import ENV, data_roots
from ..data.pull import URL_ENV, pull
from ..evaluate.datasets import canonical_name


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="fetch the known data sets (gsm8k, boolq, math_10k, ...) or list where each resolves",
        description=f"Known data set names resolve to --data-dir, then ${ENV} (a folder holding math/ and "
                    "commonsense/), then the cache `data pull` fills from LLM-Adapters' files at commit "
                    f"{COMMIT[:12]}, each checked against its recorded digest.",
    )
    actions = parser.add_subparsers(dest="action", metavar="{pull,list}", required=True)
    pull_parser = actions.add_parser("pull", help="download NAME (or all) into the cache, digest-checked",
                                     description=f"Names: {', '.join(CATALOG)}; or all. A test set of the "
                                                 "commonsense collection comes with its training set "
                                                 f"(train_<set>.json). ${URL_ENV} replaces the download base URL.")
    pull_parser.add_argument("name", help="a known data set name, or all")
    pull_parser.add_argument("--dest", help="data root to fill instead of the cache (e.g. the folder $"
                                            f"{ENV} names)")
    pull_parser.set_defaults(func=run_pull)
    list_parser = actions.add_parser("list", help="every known name and the file it resolves to (or how to get it)")
    list_parser.set_defaults(func=run_list)


def run_pull(args: argparse.Namespace) -> int:
    name = args.name if args.name == "all" else (canonical_name(args.name) or args.name)
    pull(name, Path(args.dest) if args.dest else None)
    return 0


def run_list(args: argparse.Namespace) -> int:
    roots = data_roots()
    print(f"Searched in order (after any --data-dir): {', '.join(map(str, roots))}")
    print(f"Source: github.com/{REPOSITORY} at {COMMIT[:12]}")
    for name, files in CATALOG.items():
        for remote in files:
            found = next((root / remote.dest for root in roots if (root / remote.dest).is_file()), None)
            where = str(found) if found else f"missing: adapterlab data pull {name}"
            print(f"  {name:<17} {remote.dest:<38} {where}")
    return 0
