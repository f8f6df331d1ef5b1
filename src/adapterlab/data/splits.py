"""Seeded subsampling and held-out dev splits shared by the training tasks."""

from __future__ import annotations

import random
from typing import Any

from ..errors import DataError


def subsample(items: list[Any], limit: int | None, seed: int) -> list[Any]:
    """At most `limit` items, a seeded random choice kept in file order (all of them when limit is None)."""
    if limit is None or limit >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def holdout(items: list[Any], size: int | float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, dev): a seeded random `size` items (a count, or a fraction below 1) held out for evaluation."""
    if not size:
        return items, []
    count = int(round(size * len(items))) if isinstance(size, float) and size < 1 else int(size)
    if count >= len(items):
        raise DataError(f"--val-size {size} leaves no training data: the data has only {len(items)} records.")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    dev = set(order[:count])
    return [x for i, x in enumerate(items) if i not in dev], [items[i] for i in sorted(dev)]
