"""Composing the config (sdclr.config.compose): every config group option composes and
validates, typos and wrong types fail at composition, the SLURM launcher composes."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException

from sdclr.config.compose import compose_config
from sdclr.config.validate import validate
from sdclr.errors import ConfigError
from sdclr.utils.io import CONF_DIR


def group_options():
    for group_dir in sorted(p for p in CONF_DIR.iterdir() if p.is_dir()):
        for option in sorted(group_dir.glob("*.yaml")):
            yield f"{group_dir.name}={option.stem}"


@pytest.mark.parametrize("override", list(group_options()))
def test_every_group_option_composes_and_validates(override):
    cfg = compose_config([override])
    validate(cfg)


def test_unknown_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="pretrain.epoch"):
        compose_config(["pretrain.epoch=5"])
    # Hydra lets `+key=value` append past the schema; validate() still refuses it
    cfg = compose_config(["+pretrain.epoch=5"])
    with pytest.raises(ConfigError, match=r"pretrain\.epoch"):
        validate(cfg)


def test_wrong_type_fails_at_composition():
    with pytest.raises(Exception, match="pretrain.epochs"):
        compose_config(["pretrain.epochs=many"])


def test_slurm_launcher_config_composes():
    """The ready SLURM launcher (Hydra's submitit plugin, a dev/slurm extra)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sdclr.config.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.max_num_timeout == 3


def test_the_makefiles_demo_command_composes_and_validates():
    """`make demo` is a new user's first command: its overrides must be valid keys and values."""
    import re
    import shlex
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    demo_args = re.search(r"^DEMO_ARGS \?= (.*)$", makefile, re.M).group(1)
    recipe = re.search(r"^demo:\n\t\$\(BIN\)/sdclr (.*)$", makefile, re.M).group(1)
    line = recipe.replace("$(DEMO_ARGS)", demo_args).replace("$(SEED)", "0")
    cfg = compose_config(shlex.split(line))
    validate(cfg)
    assert cfg.stage.random_init and cfg.prune.ratio == 0.9 and cfg.seed == 0
    assert list(cfg.linear.lrs) == [0.01, 0.1, 1.0, 10.0, 30.0]
