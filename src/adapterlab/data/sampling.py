"""Seeded, class-aware selection of examples: train/dev splits and K-shot subsets for classification data.

Both are deterministic functions of (labels, seed), independent of file-system order, so a run can be
repeated exactly and two methods compared on the same examples.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from ..errors import DataError


def _by_class(labels: Sequence[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        groups[label].append(index)
    return dict(sorted(groups.items()))


def stratified_split(labels: Sequence[int], val_size: int | float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, dev): a seeded dev share of every class; `val_size` is a fraction (< 1) or a count.

    A count is spread over the classes in proportion to their size, so the total can differ by rounding;
    every class with two or more examples keeps at least one for training and gives at least one to dev.
    """
    if val_size <= 0:
        return list(range(len(labels))), []
    fraction = val_size if val_size < 1 else val_size / max(len(labels), 1)
    if fraction >= 1:
        raise DataError(f"val_size {val_size} leaves no training examples out of {len(labels)}; use a smaller one.")
    rng = random.Random(seed)
    train, dev = [], []
    for members in _by_class(labels).values():
        members = members[:]
        rng.shuffle(members)
        take = min(max(1, round(fraction * len(members))), len(members) - 1) if len(members) > 1 else 0
        dev += members[:take]
        train += members[take:]
    return sorted(train), sorted(dev)


def require_two_classes(labels: Sequence[str], source: str, fix: str) -> None:
    """Refuse data with fewer than two classes: transformers would build a one-output regression head for it."""
    found = sorted(set(labels))
    if len(found) < 2:
        raise DataError(f"{source} holds {'only the label ' + repr(found[0]) if found else 'no labels'}; a classifier "
                        "needs at least two classes (with one, transformers builds a regression head and dev "
                        f"accuracy is always 1.0); {fix}.")


def few_shot(labels: Sequence[int], k: int, seed: int) -> list[int]:
    """Indices of `k` examples of every class, drawn with `seed`; raises if a class has fewer than `k`."""
    if k < 1:
        raise DataError(f"few_shot must be a positive number of examples per class, got {k}.")
    rng = random.Random(seed)
    chosen = []
    for label, members in _by_class(labels).items():
        if len(members) < k:
            raise DataError(f"Class {label} has only {len(members)} training examples, fewer than few_shot={k}; "
                             "lower --few-shot or add data.")
        chosen += rng.sample(members, k)
    return sorted(chosen)
