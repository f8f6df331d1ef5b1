"""The `fusion` method of a comparison: for each task, AdapterFusion over the pfeiffer adapters the same comparison
trained on the other tasks with the same seed (leave-one-out, the default), or on every task, the task's own included
(`--option fusion.members=all`: AdapterFusion's usual setup, and AI4Bharat's xnli_fuse.py), run after them.

Its record counts what the fusion run itself costs: its training time to the targets, its serving latency (the
members run inside it), and its storage (fusion weights and head); the members it needs are the other tasks'
pfeiffer adapters, stored (and trained, and counted) under pfeiffer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..core.registry import make_config
from ..errors import UsageError

FUSION = "fusion"
MEMBER = "pfeiffer"  # the method whose per-task adapters a comparison fuses
MEMBERS = "members"  # compare's own fusion option: which tasks' adapters it fuses
MEMBER_SETS = ("others", "all")  # leave-one-out (default), or every task's, the task's own included


def check_fusion(methods: list[str], tasks: list[str], options: dict[str, dict[str, Any]]) -> None:
    """fusion needs pfeiffer among the methods and two tasks or more; compare names its members itself."""
    if FUSION not in methods:
        return
    if MEMBER not in methods:
        raise UsageError(f"--methods {FUSION} fuses the {MEMBER} adapters this comparison trains on the other tasks; "
                         f"add {MEMBER} to --methods (e.g. full,{MEMBER},{FUSION}).")
    given = dict(options.get(FUSION, {}))
    members = given.pop(MEMBERS, "others")
    if members not in MEMBER_SETS:
        raise UsageError(f"--option {FUSION}.{MEMBERS}={members}: choose others (the other tasks' {MEMBER} adapters, "
                         f"the default) or all (every task's, its own included).")
    if members == "others" and len(tasks) < 2:
        raise UsageError(f"--methods {FUSION} fuses the other tasks' {MEMBER} adapters; give two or more --tasks "
                         f"(got {len(tasks)}), or --option {FUSION}.{MEMBERS}=all.")
    if "adapters" in given:
        raise UsageError(f"--option {FUSION}: compare names the adapters it fuses (the {MEMBER} runs of the tasks "
                         f"{MEMBERS}= picks); drop adapters=.")
    make_config(FUSION, adapters=["placeholder"], **given)  # the other option values, before any run


def member_name(task: str) -> str:
    """The name a task's pfeiffer adapter is fused under: the task's name made an identifier, then _pfeiffer."""
    name = re.sub(r"\W", "_", task)
    return f"{name}_{MEMBER}" if name.isidentifier() else f"task_{name}_{MEMBER}"


def fusion_options(task: str, tasks: list[str], seed: int, runs: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The fusion options of `task`'s run: the pfeiffer run folders of `seed` of the other tasks (or of every task,
    with members=all), and the user's other options."""
    options = dict(options)
    every = options.pop(MEMBERS, "others") == "all"
    members = [f"{member_name(t)}={runs / t / f'{MEMBER}-seed{seed}'}" for t in tasks if every or t != task]
    return {**options, "adapters": members}


def last(specs: list[Any]) -> list[Any]:
    """The specs in order, fusion runs after every other run of their seed (they load those runs' adapters)."""
    return [s for s in specs if s.method != FUSION] + [s for s in specs if s.method == FUSION]


__all__ = ["FUSION", "MEMBER", "check_fusion", "fusion_options", "last", "member_name"]
