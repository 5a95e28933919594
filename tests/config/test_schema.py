"""The schema's defaults: the published SDCLR recipe, and SimCLR with prune=none."""

from __future__ import annotations

from sdclr.config.compose import compose_config
from sdclr.config.derived import bn_mode, head_depth, method_label


def test_defaults_are_the_published_sdclr_recipe():
    cfg = compose_config([])
    assert cfg.prune.ratio == 0.9 and bn_mode(cfg) == "dual" and head_depth(cfg) == 3
    assert cfg.pretrain.epochs == 2000 and cfg.pretrain.batch_size == 512
    assert cfg.pretrain.lr == 0.5 and cfg.pretrain.temperature == 0.2
    assert cfg.linear.lr == 30 and list(cfg.linear.milestones) == [10, 20]
    assert cfg.fewshot.epochs == 100 and list(cfg.fewshot.milestones) == [40, 60]
    simclr = compose_config(["prune=none"])
    assert bn_mode(simclr) == "shared" and head_depth(simclr) == 2
    assert method_label(simclr).startswith("SimCLR")
