"""logger=wandb: an offline run directory with the config, metrics and summary."""

from __future__ import annotations

import json
from pathlib import Path

from runs import TINY, ok, sdclr
from wandb_log import logged_keys, media_types, run_config


def test_offline_wandb_run_has_the_expected_keys(tmp_path, env):
    job = tmp_path / "job"
    env = dict(env, WANDB_MODE="", WANDB_DISABLE_GIT="true")
    env.pop("WANDB_MODE")
    ok(
        sdclr(
            [
                "logger=wandb",
                *TINY,
                "pretrain.log_every=1",
                f"hydra.run.dir={job}",
            ],
            env,
        )
    )
    runs = list((job / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((job / "wandb").iterdir())  # no API key: offline by default
    (log,) = runs[0].glob("run-*.wandb")
    keys = logged_keys(log)
    for key in (
        "pretrain/loss",
        "pretrain/lr",
        "pretrain/mask_density",
        "pretrain/epoch_loss",
        "linear/val_acc",
        "fewshot/loss",
    ):
        assert key in keys["history"], (key, sorted(keys["history"]))
    # the report's tables (wandb.Table) and the plots are media: W&B stores them as nested keys
    for key in (
        "results/linear",
        "results/fewshot",
        "results/per_class_accuracy",
        "per_class_accuracy",
        "group_accuracy",
    ):
        assert f"{key}/_type" in keys["history"], (key, sorted(keys["history"]))
    types = media_types(log)
    assert types["results/linear"] == types["results/per_class_accuracy"] == "table-file"
    assert types["per_class_accuracy"] == "image-file"
    assert "linear/collapsed" in keys["summary"]
    for key in (
        "linear/acc",
        "linear/many",
        "linear/medium",
        "linear/few",
        "linear/std",
        "fewshot/acc",
        "fewshot/few",
    ):
        assert key in keys["summary"], (key, sorted(keys["summary"]))
    config = run_config(log)
    assert config["prune"]["ratio"] == 0.9 and config["data"]["fraction"] == 0.02
    # the job's own table and plots exist whatever the logger
    assert (job / "report" / "per_class_accuracy.png").is_file()


def test_wandb_failure_never_stops_a_run(tmp_path, env):
    job = tmp_path / "job"
    env = dict(
        env,
        WANDB_MODE="online",
        WANDB_API_KEY="x" * 40,
        WANDB_BASE_URL="http://127.0.0.1:9",
        WANDB_INIT_TIMEOUT="5",
    )
    out = ok(
        sdclr(
            [
                "logger=wandb",
                "logger.mode=online",
                *TINY,
                "stage=pretrain",
                f"hydra.run.dir={job}",
            ],
            env,
        )
    )
    assert json.loads((job / "status.json").read_text())["status"] == "completed"
    assert "W&B" in out.stderr or "wandb" in out.stderr.lower()


def test_resumed_run_reattaches_to_the_same_wandb_run(tmp_path, env):
    job = tmp_path / "job"
    args = ["logger=wandb", *TINY, f"hydra.run.dir={job}"]
    ok(sdclr([*args, "stage=pretrain"], env))
    run_id = json.loads((job / "status.json").read_text())["wandb_id"]
    assert run_id
    ok(sdclr([*args, "stage=all"], env))
    ids = {p.name.rsplit("-", 1)[-1] for p in (job / "wandb").glob("offline-run-*")}
    assert ids == {run_id}  # the second invocation logged into the same run


def test_logger_artifact_logs_the_checkpoint_and_the_export(tmp_path, env):
    from wandb_log import artifacts

    job = tmp_path / "job"
    env = dict(env, WANDB_MODE="offline", WANDB_DATA_DIR=str(tmp_path / "wandb-data"))
    out = ok(
        sdclr(
            [
                "logger=wandb",
                "logger.artifact=true",
                *TINY,
                "stage=pretrain",
                f"hydra.run.dir={job}",
            ],
            env,
        )
    )
    run_id = json.loads((job / "status.json").read_text())["wandb_id"]
    assert f"W&B artifacts: checkpoint-{run_id}, backbone-{run_id}" in out.stdout
    (log,) = (job / "wandb").glob("offline-run-*/run-*.wandb")
    found = artifacts(log)
    assert set(found[f"checkpoint-{run_id}"]["files"]) == {"pretrain.pt"}
    staged = found[f"backbone-{run_id}"]["files"]
    assert set(staged) == {"model.safetensors", "config.json"}
    assert all(Path(p).is_file() and str(tmp_path / "wandb-data") in p for p in staged.values())
    config = json.loads((job / "export" / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["sdclr"]["cifar_stem"] is True
