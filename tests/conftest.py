"""Shared fixtures: tiny seeded data; the real data folder (skip with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

SHARED_DATA = Path(
    os.environ.get("SKETCHSEARCH_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets at ../shared/data (see its README); tests using this are marked `data`."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set SKETCHSEARCH_SHARED_DATA or run beside ../shared)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """One BLAS/OpenMP thread per test: on 2 busy cores, threaded eigen-decompositions slow down ~20x."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def browser():
    """Debian's headless chromium through Playwright, one per test module (skips with a reason without it)."""
    from _browser import headless_chromium

    with headless_chromium() as b:
        yield b


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(123)
