"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# The real data sets of this project's development machine, beside the checkout (see README, "Data").
SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def pytest_configure(config: pytest.Config) -> None:
    """Point $ADAPTERLAB_DATA at ../shared/datasets when it exists and the user has set no other folder."""
    if SHARED_DATASETS.is_dir():
        os.environ.setdefault("ADAPTERLAB_DATA", str(SHARED_DATASETS))


@pytest.fixture
def real_datasets() -> Path:
    """The folder of real data sets ($ADAPTERLAB_DATA); skips the test when there is none."""
    folder = Path(os.environ.get("ADAPTERLAB_DATA", SHARED_DATASETS))
    if not (folder / "math").is_dir():
        pytest.skip(f"no real data sets: {folder} has no math/ (set ADAPTERLAB_DATA to a folder laid out as "
                    "../shared/datasets, e.g. one filled by `adapterlab data pull all --dest DIR`)")
    return folder


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Run a test on one intra-op thread: tiny models are ~10x faster so when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
