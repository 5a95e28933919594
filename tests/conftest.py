"""Shared fixtures. The real CIFAR-10 JPEG copy comes from SDCLR_DATA (CI points it at
../shared/data); decoded arrays are cached once per machine under SDCLR_CACHE."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def _shared_data() -> Path:
    candidates = [os.environ.get("SDCLR_DATA"), REPO.parent / "shared" / "data"]
    for c in candidates:
        if c and (Path(c) / "cifar10-jpg.tar.gz").is_file():
            return Path(c)
    raise RuntimeError(
        "the tests need the real CIFAR-10 JPEG copy: set SDCLR_DATA to the directory holding "
        "cifar10-jpg.tar.gz and cifar10-train-labels.npy"
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
    from sdclr.data import load_image_data

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


@pytest.fixture()
def env(data_root, cache_dir) -> dict[str, str]:
    """Environment for running the suite in a subprocess on the real data."""
    e = dict(os.environ)
    e.update(
        SDCLR_DATA=str(data_root),
        SDCLR_CACHE=str(cache_dir),
        PYTHONUNBUFFERED="1",
        WANDB_SILENT="true",
        HYDRA_FULL_ERROR="0",
    )
    e.pop("WANDB_API_KEY", None)
    return e
