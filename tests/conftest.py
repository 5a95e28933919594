"""Shared fixtures. The real CIFAR-10 JPEG copy comes from SDCLR_DATA (CI points it at
../shared/data); decoded arrays are cached once per machine under SDCLR_CACHE.

Every test that asks for the data (the ``data_root`` fixture, directly or through another
fixture) is marked ``needs_data``, and every test that runs a subprocess on it (the ``env``
fixture) also ``e2e``: ``make test-fast`` deselects both, so the marks cannot drift from what
the tests really use."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from imagetree import TREE_COUNTS, write_tree
from runs import subprocess_env

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if "data_root" in names:
            item.add_marker(pytest.mark.needs_data)
        if "env" in names:
            item.add_marker(pytest.mark.e2e)


def _shared_data() -> Path:
    root = os.environ.get("SDCLR_DATA")
    if root and (Path(root) / "cifar10-jpg.tar.gz").is_file():
        return Path(root)
    raise RuntimeError(
        f"this test needs the real CIFAR-10 JPEG copy, and SDCLR_DATA ({root or 'unset'}) does "
        f"not hold it: set SDCLR_DATA to the directory holding cifar10-jpg.tar.gz and "
        f"cifar10-train-labels.npy (make test does, from ../shared/data); a test that needs no "
        f"data must not ask for it (make test-fast runs without it)"
    )


@pytest.fixture(scope="session")
def data_root() -> Path:
    return _shared_data()


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    path = Path(os.environ.get("SDCLR_CACHE", REPO / ".cache" / "sdclr"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def cifar10(data_root, cache_dir):
    from sdclr.data.arrays import load_image_data

    return load_image_data(
        str(data_root),
        "cifar10_lt",
        archive="cifar10-jpg.tar.gz",
        order_labels="cifar10-train-labels.npy",
        image_size=32,
        cache_dir=str(cache_dir),
        progress=False,
    )


@pytest.fixture(scope="session")
def cifar10_labels(data_root) -> np.ndarray:
    return np.load(data_root / "cifar10-train-labels.npy").astype(np.int64)


@pytest.fixture(scope="session")
def tree(tmp_path_factory, data_root) -> Path:
    """A small ImageNet-style tree cut from the real Tiny ImageNet copy (imagetree.py), for
    the image-file tests (data/test_files, data/test_banks, cli/test_splits and
    e2e/test_folder_data)."""
    root = tmp_path_factory.mktemp("imagenet-style")
    write_tree(root, data_root / "tiny-imagenet-32.tar.gz", TREE_COUNTS, test_per_class=6)
    return root


@pytest.fixture()
def env(data_root, cache_dir) -> dict[str, str]:
    """Environment for running the suite in a subprocess on the real data."""
    return subprocess_env(data_root, cache_dir)
