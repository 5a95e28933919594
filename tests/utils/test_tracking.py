"""Tracking (sdclr.utils.tracking): what W&B gets of a record, its scalars and flattened
dicts."""

from __future__ import annotations


def test_wandb_gets_scalars_and_flattened_dicts():
    from sdclr.utils.tracking import wandb_scalars

    rec = {
        "epoch": 3,
        "loss_share": [0.5, 0.5],
        "disagreement_few": 0.2,
        "disagreement_many": None,
        "layer_density": {"conv1.weight": 0.3},
    }
    assert wandb_scalars(rec, "diagnostics") == {
        "diagnostics/epoch": 3,
        "diagnostics/disagreement_few": 0.2,
        "diagnostics/layer_density/conv1.weight": 0.3,
    }
