"""What a wheel is made of (pyproject.toml's [tool.setuptools]) and how the package finds what
it ships: every subpackage is listed, conf/ and splits/ are mapped in as package data, the
checkout's folders are found from the package, and `sdclr --help` is sdclr's own.
tests/e2e/test_wheel.py builds the wheel, installs it and runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdclr.utils import io

REPO = Path(__file__).resolve().parents[1]


def setuptools_config() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_subpackage_goes_into_the_wheel():
    cfg = setuptools_config()
    found = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "sdclr").rglob("__init__.py")
    }
    assert set(cfg["packages"]) == found | {"sdclr.conf", "sdclr.splits_data"}, (
        "pyproject.toml's [tool.setuptools] packages must list every subpackage of sdclr"
    )
    assert cfg["package-dir"] == {"sdclr.conf": "conf", "sdclr.splits_data": "splits"}


def test_the_package_data_globs_take_every_config_and_shipped_split_file():
    data = setuptools_config()["package-data"]

    def taken(folder: Path, globs: list[str]) -> set[Path]:
        return {f for g in globs for f in folder.glob(g) if f.is_file()}

    configs = {f for f in (REPO / "conf").rglob("*") if f.is_file() and "__pycache__" not in str(f)}
    assert taken(REPO / "conf", data["sdclr.conf"]) == configs
    splits = REPO / "splits"
    shipped = {splits / "README.md", *(splits / "official").rglob("*"), *splits.glob("cifar10/*")}
    assert taken(splits, data["sdclr.splits_data"]) == {f for f in shipped if f.is_file()}


def test_a_checkout_reads_its_own_folders():
    assert io.REPO == REPO
    assert io.CONF_DIR == REPO / "conf" and io.SPLITS_DIR == REPO / "splits"
    assert io.OFFICIAL_SPLITS_DIR == REPO / "splits" / "official"


def test_help_is_sdclrs_own():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sdclr.config.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(io.CONF_DIR), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    help_ = cfg.hydra.help
    assert help_.app_name == "sdclr"
    assert help_.header.startswith("sdclr: self-supervised contrastive learning")
    assert "$APP_CONFIG_GROUPS" in help_.template and "Hydra" not in help_.header
    for command in ("\n  sdclr\n", "sdclr stage=linear stage.checkpoint=", "sdclr -m split="):
        assert command in help_.template
