"""Checkpoints written by the flat package (tests/fixtures/old_checkpoints, commit a6edc13)
still resume and evaluate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from runs import ok, sdclr

OLD = Path(__file__).resolve().parents[1] / "fixtures" / "old_checkpoints"
# the overrides the fixtures were written with (their README), on the generated split 1 that
# was the default then (the reference's files are now)
ARGS = [
    "split.source=generated",
    "data.fraction=0.02",
    "backbone.channels=[4,4,4,4]",
    "pretrain.epochs=3",
    "pretrain.batch_size=64",
    "pretrain.warmup_epochs=1",
    "linear.epochs=2",
    "linear.milestones=[1]",
    "fewshot.epochs=2",
    "fewshot.milestones=[1]",
    "smoke=true",
    "device=cpu",
    "checkpoint.every=1",
]


def test_an_interrupted_old_checkpoint_resumes_and_the_run_evaluates(tmp_path, env):
    job = tmp_path / "job"
    (job / "checkpoints").mkdir(parents=True)
    shutil.copy(OLD / "interrupted.pt", job / "checkpoints" / "pretrain.pt")
    old = torch.load(OLD / "interrupted.pt", map_location="cpu", weights_only=False)
    assert old["epoch"] == 1 and old["position"] is not None and not old["finished"]
    ok(sdclr([*ARGS, "stage=all", f"hydra.run.dir={job}"], env))
    m = json.loads((job / "metrics.json").read_text())
    pre = m["pretrain"]
    assert pre["resumed"] is True and pre["epochs"] == 3 and len(pre["epoch_loss"]) == 3
    assert pre["epoch_loss"][:1] == old["epoch_losses"]  # the finished epoch carried over
    assert len(pre["mask_density"]) == 3 and len(pre["diagnostics"]) == 3
    for stage in ("linear", "fewshot"):
        assert 0.0 <= m[stage]["acc"] <= 100.0
    assert json.loads((job / "status.json").read_text())["status"] == "completed"


def test_a_finished_old_checkpoint_evaluates(tmp_path, env):
    job = tmp_path / "eval"
    ckpt = OLD / "finished.pt"
    ok(sdclr([*ARGS, "stage=linear", f"stage.checkpoint={ckpt}", f"hydra.run.dir={job}"], env))
    m = json.loads((job / "metrics.json").read_text())
    assert "pretrain" not in m and 0.0 <= m["linear"]["acc"] <= 100.0
    assert {"many", "medium", "few"} <= set(m["linear"])
