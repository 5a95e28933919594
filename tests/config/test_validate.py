"""Validation (sdclr.config.validate): bad values and bad method settings fail early with a
message naming the key, and the checks against the number of processes."""

from __future__ import annotations

import pytest

from sdclr.config.compose import compose_config
from sdclr.config.validate import check_world_size, validate
from sdclr.errors import ConfigError


@pytest.mark.parametrize(
    "override,key",
    [
        ("prune.ratio=1.0", "prune.ratio"),
        ("prune.ratio=-0.1", "prune.ratio"),
        ("pretrain.epochs=0", "pretrain.epochs"),
        ("linear.epochs=-3", "linear.epochs"),
        ("fewshot.epochs=0", "fewshot.epochs"),
        ("pretrain.batch_size=0", "pretrain.batch_size"),
        ("data.fraction=0", "data.fraction"),
        ("data.fraction=1.5", "data.fraction"),
        ("split.pretrain_set=D_x", "split.pretrain_set"),
        # the repository ships the reference's files for cifar10/100_lt and imagenet100_lt only
        ("data=folder split.source=official", "split.official_dir"),
        ("data=imagenet_lt_exp split.source=official", "split.official_dir"),
        ("data=imagenet100_lt split=split3", "split.index"),  # the reference has one split
        ("prune.random_ratio=0.95", "prune.random_ratio"),
        ("device=tpu", "device"),
        ("compile_mode=fastest", "compile_mode"),
        ("fuse_branches=true method=moco", "fuse_branches"),
        ("fuse_branches=true bn=shared", "fuse_branches"),
        ("prune.random_rule=above", "prune.random_rule"),
        ("linear.lrs=[0.1,0.1]", "linear.lrs"),
        ("fewshot.lrs=[1,-1]", "fewshot.lrs"),
        ("linear.lr_step=epoch_middle", "linear.lr_step"),
        ("fewshot.select_metric=top3", "fewshot.select_metric"),
        ("linear.val_every=0", "linear.val_every"),
        ("stage=pretrain stage.random_init=true", "stage.random_init"),
        ("stage=linear stage.knn=true", "stage.knn"),  # stage.knn adds it to stage=all
        ("stage=knn stage.embed=true", "stage.embed"),
        ("knn.k=0", "knn.k"),
        ("knn.temperature=0", "knn.temperature"),
        ("knn.batch_size=0", "knn.batch_size"),
        ("embed.method=umap", "embed.method"),
        ("embed.max_points=1", "embed.max_points"),
        ("embed.perplexity=0", "embed.perplexity"),
        ("embed.batch_size=0", "embed.batch_size"),
        ("distributed.timeout_min=0", "distributed.timeout_min"),
        ("distributed.timeout_min=-5", "distributed.timeout_min"),
        ("logger.artifact=true", "logger.artifact"),  # W&B artifacts need logger=wandb
    ],
)
def test_out_of_range_values_name_the_key(override, key):
    cfg = compose_config(override.split())
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_a_warmup_may_take_the_whole_pretraining_but_not_more():
    validate(compose_config(["pretrain.epochs=2", "pretrain.warmup_epochs=2"]))
    with pytest.raises(ConfigError, match=r"'pretrain\.warmup_epochs': 3 is more than pretrain"):
        validate(compose_config(["pretrain.epochs=2", "pretrain.warmup_epochs=3"]))


def test_torchrun_needs_a_global_batch_that_splits_evenly():
    from sdclr.config.validate import check_world_size

    check_world_size(compose_config(["pretrain.batch_size=512"]), 4)
    with pytest.raises(ConfigError, match="pretrain.batch_size.*multiple of 3"):
        check_world_size(compose_config(["pretrain.batch_size=512"]), 3)


def test_fused_branches_are_refused_under_torchrun():
    from sdclr.config.validate import check_world_size

    check_world_size(compose_config(["fuse_branches=true"]), 1)
    with pytest.raises(ConfigError, match="fuse_branches.*one process"):
        check_world_size(compose_config(["fuse_branches=true"]), 2)
    # SimCLR with shared BN already runs both views in one pass: nothing to refuse
    validate(compose_config(["fuse_branches=true", "prune=none"]))


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["method.name=simsiam"], "method.name"),
        (["method=byol", "loss=hard"], "loss.name"),
        (["method.mochi=true"], "method.mochi"),
        (["method=moco", "method.symmetric=false"], "method.symmetric"),
        (["method=moco", "method.queue_size=0"], "method.queue_size"),
        (["method=byol", "method.momentum=1.5"], "method.momentum"),
        (["loss=debiased", "loss.tau_plus=1.0"], "loss.tau_plus"),
        (["temperature.schedule=step"], "temperature.schedule"),
        (["temperature.schedule=cosine", "temperature.t_min=0"], "temperature.t_min"),
        (["temperature.schedule=cosine", "temperature.t_max=0.05"], "temperature.t_max"),
        (["method=byol", "temperature.schedule=cosine"], "temperature.schedule"),
        (["bcl.momentum=1.0"], "bcl.momentum"),
        (["bcl.k=0"], "bcl.k"),
        (["bcl.span=40"], "bcl.span"),
        (["monitor.knn_every=-1"], "monitor.knn_every"),
        (["monitor.diagnostics_every=0"], "monitor.diagnostics_every"),
    ],
)
def test_bad_method_settings_name_the_key(overrides, key):
    cfg = compose_config(overrides)
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        validate(cfg)


def test_moco_and_byol_refuse_torchrun():
    for name in ("moco", "byol"):
        with pytest.raises(ConfigError, match="method.name.*one process"):
            check_world_size(compose_config([f"method={name}"]), 2)
        check_world_size(compose_config([f"method={name}"]), 1)
    check_world_size(compose_config([]), 2)


def test_compile_true_is_refused_under_torchrun_in_one_line():
    check_world_size(compose_config(["compile=true"]), 1)
    check_world_size(compose_config(["compile=false"]), 2)
    check_world_size(compose_config([]), 2)  # compile=null: off under torchrun by itself
    with pytest.raises(ConfigError) as caught:
        check_world_size(compose_config(["compile=true"]), 2)
    message = str(caught.value)
    assert message.startswith("config key 'compile': ") and "\n" not in message
    assert "torchrun" in message and "set compile=false" in message
