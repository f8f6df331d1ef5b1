"""Work run in a fresh spawned Python process, so that its peak memory is its own (no allocator cache or loaded
model carries over): each method `measure` times, each run `compare` trains."""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
from collections.abc import Callable
from typing import Any


def run_isolated(function: Callable[..., Any], isolate: bool, *args: Any) -> Any:
    """function(*args), in a fresh spawned process when `isolate` (`function` and `args` must then pickle), which
    logs as this one was told to; its result (or exception) comes back."""
    if not isolate:
        return function(*args)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context, initializer=set_logger_levels,
                                                initargs=(logger_levels(),)) as pool:
        return pool.submit(function, *args).result()


def logger_levels() -> dict[str, int]:
    """The levels this process set on named loggers (e.g. the CLI quieting bitsandbytes), for a spawned child."""
    return {name: logger.level for name, logger in logging.root.manager.loggerDict.items()
            if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET}


def set_logger_levels(levels: dict[str, int]) -> None:
    """In a spawned child: log as the parent was told to (a fresh interpreter starts with default levels)."""
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
