"""logger.artifact (sdclr.cli.artifacts): when pretraining finishes, the export is written to
<job>/export/ and, with the checkpoint, logged as W&B artifacts of the run; read back from
the offline run's transaction log and W&B's staging copies."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from export_checkpoint import write_tiny_checkpoint
from tiny import tiny_cfg
from wandb_log import artifacts, wait_until_written

from sdclr.cli.artifacts import log_pretrain_artifacts
from sdclr.utils.tracking import Tracker


@pytest.fixture()
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # the staging copies
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def job(tmp_path: Path, *overrides: str, start: bool = True):
    cfg = tiny_cfg("logger=wandb", "logger.mode=offline", *overrides)
    folder = tmp_path / "job"
    ckpt = write_tiny_checkpoint(folder / "checkpoints" / "pretrain.pt")
    tracker = Tracker(folder)
    run_id = tracker.start_wandb(cfg.logger, {}, name="job", group=None) if start else None
    return SimpleNamespace(
        cfg=cfg,
        dir=folder,
        checkpoint=ckpt,
        main_process=True,
        tracker=tracker,
        wandb_id=run_id,
        metrics={"run": {"label": "SDCLR"}, "pretrain": {"epochs": 2, "final_loss": 4.5}},
    )


def test_the_checkpoint_and_the_export_become_artifacts_of_the_run(tmp_path, offline_wandb):
    j = job(tmp_path, "logger.artifact=true")
    assert j.wandb_id
    log_pretrain_artifacts(j)
    j.tracker.finish(0)
    (log,) = (j.dir / "wandb").glob("offline-run-*/run-*.wandb")
    wait_until_written(log)
    found = artifacts(log)
    assert set(found) == {f"checkpoint-{j.wandb_id}", f"backbone-{j.wandb_id}"}
    ckpt, backbone = found[f"checkpoint-{j.wandb_id}"], found[f"backbone-{j.wandb_id}"]
    assert ckpt["type"] == "checkpoint" and backbone["type"] == "model"
    assert ckpt["aliases"] == backbone["aliases"] == ["latest"]
    assert set(ckpt["files"]) == {"pretrain.pt"}
    assert set(backbone["files"]) == {"model.safetensors", "config.json"}
    # W&B keeps its own copy until uploaded: the same bytes as the job's files
    export = j.dir / "export"
    assert Path(ckpt["files"]["pretrain.pt"]).read_bytes() == j.checkpoint.read_bytes()
    for name in ("model.safetensors", "config.json"):
        assert Path(backbone["files"][name]).read_bytes() == (export / name).read_bytes()
    config = json.loads((export / "config.json").read_text())
    assert backbone["metadata"]["load"] == config["sdclr"]["load"]
    assert ckpt["metadata"]["epochs"] == 2 and ckpt["metadata"]["label"] == "SDCLR"
    assert ckpt["metadata"]["spec"]["channels"] == [8, 16, 32, 64]
    saved = torch.load(j.checkpoint, weights_only=False)["model"]
    from safetensors.torch import load_file

    weights = load_file(export / "model.safetensors")
    assert torch.equal(weights["conv1.weight"], saved["backbone.conv1.weight"])


def test_off_by_default_and_a_dead_wandb_still_gets_the_export(tmp_path, offline_wandb):
    j = job(tmp_path)  # logger.artifact defaults to false
    log_pretrain_artifacts(j)
    j.tracker.finish(0)
    (log,) = (j.dir / "wandb").glob("offline-run-*/run-*.wandb")
    wait_until_written(log)
    assert artifacts(log) == {} and not (j.dir / "export").exists()
    j = job(tmp_path / "dead", "logger.artifact=true", start=False)  # W&B never started
    log_pretrain_artifacts(j)
    assert (j.dir / "export" / "model.safetensors").is_file()
