"""The composed config of a set of overrides, without running Hydra's app machinery (tests,
tools, the split command and the benchmark use it; the runner goes through ``hydra.main``)."""

from __future__ import annotations

from omegaconf import DictConfig

from sdclr.config.schema import register_configs
from sdclr.utils.io import CONF_DIR


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The composed config without running Hydra's app machinery (tests, tools)."""
    from hydra import compose, initialize_config_dir  # Hydra's app machinery: only when asked
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))
