"""Shared fixtures: where the real data is, the rule that CI never skips a real-data test, and synthetic data for
the trainer's tests that run anywhere.

A test that uses a real-data fixture (REAL_DATA_FIXTURES, directly or through another fixture) is marked real_data:
`pytest -m "not real_data"` runs what a clone without ../shared/data can run."""

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


REAL_DATA_FIXTURES = {"mnist_raw_root", "cub_sample", "svhn_sample"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_data)


@pytest.fixture(scope="session")
def cub_sample() -> Path:
    """The CUB_200_2011 folder of the shared sample (shared/data/README.md: 5 classes, 5 train + 5 test images each)."""
    return need_real_data(SHARED_DATA / "CUB_200_2011" / "images.txt", "the CUB-200-2011 sample").parent


@pytest.fixture(scope="session")
def svhn_sample() -> Path:
    """The folder holding the shared SVHN sample's train/ test/ extra/ (each with digitStruct.mat and its images)."""
    return need_real_data(SHARED_DATA / "SVHN" / "train" / "digitStruct.mat", "the SVHN format-1 sample").parents[1]


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


@pytest.fixture
def synthetic_overrides(tmp_path) -> list[str]:
    """Overrides of a smoke run (20 iterations, batch 32) on synthetic 28x28 digits (tests/synthetic.py), with
    fresh training noise every epoch, its runs in tmp_path: the trainer tested without any real data."""
    return [
        "data=mnist_r",
        "data.name=synthetic",
        "data.loader=synthetic",
        "data.redraw_train=true",
        "budget=smoke",
        "logger=none",
        "device=cpu",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.runs_dir={tmp_path / 'runs'}",
    ]
