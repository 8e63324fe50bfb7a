"""Shared fixtures: where the real data is, and the rule that CI never skips a real-data test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (as on CI); STN_SHARED_DATA overrides.
SHARED_DATA = Path(os.environ.get("STN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

torch.set_num_threads(min(2, torch.get_num_threads()))
# The suite's peak use of its temporary folder (measured: 0.8 GB of generated datasets and runs), with a margin.
NEEDED_FREE_GB = 1.5


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once with one clear message when the temporary folder's disk cannot hold the suite's data, rather
    than failing dozens of tests with 'No space left on device' midway."""
    basetemp = session.config._tmp_path_factory.getbasetemp()
    free_gb = shutil.disk_usage(basetemp).free / 2**30
    if free_gb < NEEDED_FREE_GB:
        pytest.exit(
            f"only {free_gb:.1f} GB free on the disk of {basetemp}; the tests generate up to ~0.8 GB of real datasets "
            f"there and need {NEEDED_FREE_GB} GB: free some space (old pytest-of-* folders in it are safe to delete) "
            "or point --basetemp at a bigger disk",
            returncode=1,
        )


def need_real_data(path: Path, what: str) -> Path:
    """Return `path` if it exists; otherwise fail under CI=true and skip elsewhere."""
    if path.exists():
        return path
    message = f"{what} not found at {path} (set STN_SHARED_DATA to the folder holding the shared data)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def mnist_raw_root() -> Path:
    """The folder holding MNIST/raw/*.gz (torchvision's layout: pass it as MNIST(root=...))."""
    need_real_data(SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte.gz", "real MNIST")
    return SHARED_DATA


@pytest.fixture(scope="session")
def data_store(tmp_path_factory) -> Path:
    """One data folder for every test that only reads the data it generates: MNIST is extracted into it once, and a
    generated set's file name holds its config's hash, so a set several modules train on is generated and stored once
    (CI's disk is small). Tests that damage or interrupt a dataset use their own tmp_path."""
    return tmp_path_factory.mktemp("data")
