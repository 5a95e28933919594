"""Values derived from a config (sdclr.config.derived): the defaults' method names, slugs and
labels, the diagnostics default, BCL's boost presets."""

from __future__ import annotations

from sdclr.augment.boost import BoostConfig
from sdclr.config.compose import compose_config
from sdclr.config.derived import boost_preset, diagnostics_on, method_label, method_slug


def test_defaults_keep_the_existing_method_and_names():
    sdclr_cfg, simclr_cfg = compose_config([]), compose_config(["prune=none"])
    for cfg in (sdclr_cfg, simclr_cfg):
        assert cfg.method.name == "simclr" and cfg.loss.name == "ntxent" and not cfg.boost
        assert cfg.temperature.schedule == "constant" and cfg.monitor.knn_every == 50
    assert method_slug(sdclr_cfg) == "sdclr-p90" and method_slug(simclr_cfg) == "simclr"
    assert method_label(sdclr_cfg) == "SDCLR p=0.9 dual-BN head3"
    assert method_label(simclr_cfg) == "SimCLR shared-BN head2"
    assert diagnostics_on(sdclr_cfg) and not diagnostics_on(simclr_cfg)
    moco = compose_config(["method=moco", "prune=p30"])
    assert method_slug(moco) == "moco-p30"
    assert method_label(moco) == "MoCo v2 + SDCLR p=0.3 dual-BN head3"
    assert moco.method.queue_size == 4096 and moco.method.momentum == 0.99
    assert moco.pretrain.temperature == 0.2
    byol = compose_config(["method=byol", "prune=none"])
    assert method_slug(byol) == "byol" and method_label(byol) == "BYOL shared-BN head2"
    assert byol.method.cosine_momentum
    hard = compose_config(["loss=hard", "boost=true", "temperature.schedule=cosine"])
    assert method_label(hard) == (
        "SDCLR p=0.9 dual-BN head3 hard(tau+=0.1,beta=1) T=cos(0.1-1/400) BCL"
    )
    # the job directory carries the slug
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sdclr.utils.io import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        full = compose("config", ["method=moco", "prune=p30"], return_hydra_config=True)
    assert full.hydra.run.dir.endswith("_cifar10_lt_split1_moco-p30")


def test_bcl_presets_follow_the_pruned_branch_and_overrides():
    assert boost_preset(compose_config([])) == BoostConfig.for_sdclr()
    assert boost_preset(compose_config(["prune=none"])) == BoostConfig.for_simclr()
    assert boost_preset(compose_config(["method=moco", "prune=p30"])) == BoostConfig.for_sdclr()
    custom = boost_preset(compose_config(["prune=none", "bcl.k=3", "bcl.random_scale=true"]))
    assert custom == BoostConfig(k=3, base=10.0, span=20.0, random_scale=True)
