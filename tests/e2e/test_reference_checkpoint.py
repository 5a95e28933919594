"""A checkpoint in the reference code's layout (VITA-Group/SDCLR), probed the way its README's
"evaluate pretrained model" is asked of this suite: stage=linear stage.checkpoint=model.pt."""

from __future__ import annotations

import json

import torch
from reference_layout import write_reference_checkpoint
from runs import TINY, ok, sdclr

from sdclr.models.contrastive import build_model


def test_the_probe_evaluates_a_reference_checkpoint(tmp_path, env):
    torch.manual_seed(0)
    model = build_model("resnet18", True, [8, 16, 32, 64], 3, 128, True)
    ckpt = write_reference_checkpoint(model, tmp_path / "model_2000.pt")
    job = tmp_path / "eval"
    out = ok(
        sdclr([*TINY, "stage=linear", f"stage.checkpoint={ckpt}", f"hydra.run.dir={job}"], env)
    )
    assert "reference checkpoint (VITA-Group/SDCLR layout, dual BN): the dense branch" in out.stdout
    linear = json.loads((job / "metrics.json").read_text())["linear"]
    assert 0.0 <= linear["acc"] <= 100.0 and {"many", "medium", "few"} <= set(linear)
    assert "batch norm copy 0 ('nonprune'" in linear["checkpoint_source"]
    # another input normalisation than the checkpoint's is refused, with the fix
    out = sdclr(
        [
            *TINY,
            "stage=linear",
            f"stage.checkpoint={ckpt}",
            f"hydra.run.dir={tmp_path / 'b'}",
            "data.mean=[0.5,0.5,0.5]",
        ],
        env,
    )
    assert out.returncode != 0
    assert "data.mean=[0.485,0.456,0.406] data.std=[0.229,0.224,0.225]" in out.stderr
