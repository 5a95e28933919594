"""The schema: every config group option composes; typos and bad values fail early."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from sdclr.config.compose import compose_config
from sdclr.config.derived import bn_mode, head_depth, method_label
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
        ("prune.random_ratio=0.95", "prune.random_ratio"),
        ("device=tpu", "device"),
        ("compile_mode=fastest", "compile_mode"),
        ("fuse_branches=true method=moco", "fuse_branches"),
        ("fuse_branches=true bn=shared", "fuse_branches"),
    ],
)
def test_out_of_range_values_name_the_key(override, key):
    cfg = compose_config(override.split())
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_cli_rejects_bad_values_before_any_work(tmp_path, env):
    for args, key in [
        (["prune.ratio=1.2"], "prune.ratio"),
        (["pretrain.epoch=3"], "epoch"),
        (["prune=p95"], "p95"),
    ]:
        out = subprocess.run(
            [sys.executable, "-m", "sdclr", *args, f"hydra.run.dir={tmp_path / 'run'}"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert out.returncode != 0
        assert key in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
        assert not (tmp_path / "run" / "metrics.json").exists()


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


def test_gpu_check_runs_compose_and_validate(tmp_path):
    """`make gpu-check` is only run on a GPU machine: its run commands must stay valid
    configs as the schema evolves."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    runs = [
        cmd[3:]
        for step in gpu_check.STEPS
        for cmd in gpu_check.commands(step, tmp_path, ["device=cpu"])
        if cmd[1:3] == ["-m", "sdclr"]
    ]
    assert len(runs) == 3  # cifar, folder with nvJPEG, folder with the resized cache
    from sdclr.cli.bench import build_parser

    benches = [
        build_parser().parse_args(cmd[3:])
        for step in gpu_check.STEPS
        for cmd in gpu_check.commands(step, tmp_path, [])
        if cmd[1:3] == ["-m", "sdclr.bench"]
    ]
    assert len(benches) == 2 and benches[1].compile_mode == "reduce-overhead"
    with pytest.raises(SystemExit):  # argparse: one line naming the choices, exit 2
        build_parser().parse_args(["--compile-mode", "fastest"])
    for args in benches:
        if args.compile_mode:
            validate(compose_config([f"compile_mode={args.compile_mode}"]))
    for overrides in runs:
        cfg = compose_config([o for o in overrides if not o.startswith("hydra.")])
        validate(cfg)


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
