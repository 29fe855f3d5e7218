"""Shared fixtures: reference data from ../shared (skipped cleanly when absent); GPU tests skip without CUDA."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One process per core already; intra-op threads on top would oversubscribe the CPU,
    # and small-tensor ops slow down badly when threads contend.
    torch.set_num_threads(1)


def _shared_data_dir() -> Path | None:
    env = os.environ.get("PYRO_MODELS_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or $PYRO_MODELS_SHARED_DATA); skips the test when it is absent."""
    d = _shared_data_dir()
    if d is None:
        pytest.skip("../shared/data is not present (reference data for correctness tests)")
    return d


@pytest.fixture(scope="session")
def posteriordb(shared_data):
    """Load a posteriordb reference JSON by file stem."""

    def load(name: str) -> dict:
        path = shared_data / "posteriordb" / f"{name}.json"
        if not path.exists():
            pytest.skip(f"{path} is not present")
        return json.loads(path.read_text())

    return load


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
