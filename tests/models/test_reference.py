"""The reference code's checkpoints (VITA-Group/SDCLR) read as ours: the key map against the
reference's own key names and shapes (tests/fixtures/reference_checkpoints, no weights), and
a checkpoint in that layout, written from our own model, evaluated to the same features."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reference_layout import IMAGENET_MEAN, IMAGENET_STD, write_reference_checkpoint

from sdclr.errors import CheckpointError
from sdclr.models.checkpoint import build_from_spec, load_checkpoint, load_encoder
from sdclr.models.contrastive import build_model
from sdclr.models.reference import from_reference, is_reference_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference_checkpoints"


def _reference_payload(name: str) -> dict:
    shapes = json.loads((FIXTURES / f"{name}.json").read_text())
    state = {k: torch.zeros(shape) for k, shape in shapes.items()}
    state["module.normalize.mean"] = torch.tensor(IMAGENET_MEAN)
    state["module.normalize.std"] = torch.tensor(IMAGENET_STD)
    return {"epoch": 2000, "state_dict": state, "optim": {"state": {}, "param_groups": []}}


@pytest.mark.parametrize(
    ("name", "backbone", "cifar_stem", "head_depth"),
    [
        ("sdclr_resnet18_cifar_dualbn", "resnet18", True, 3),  # CIFAR SDCLR (--prune_dual_bn)
        ("simclr_resnet18_cifar", "resnet18", True, 2),  # CIFAR SimCLR (models/resnet.py)
        ("sdclr_resnet50_imagenet_dualbn", "resnet50", False, 3),  # ImageNet-100 SDCLR
    ],
)
def test_every_reference_key_maps_onto_our_model(name, backbone, cifar_stem, head_depth):
    payload = _reference_payload(name)
    assert is_reference_checkpoint(payload)
    ours = from_reference(payload)
    spec = ours["spec"]
    assert (spec["backbone"], spec["cifar_stem"], spec["head_depth"]) == (
        backbone,
        cifar_stem,
        head_depth,
    )
    assert spec["channels"] is None and spec["out_dim"] == 128 and spec["dual_bn"] is False
    assert spec["mean"] == pytest.approx(IMAGENET_MEAN) and spec["std"] == pytest.approx(
        IMAGENET_STD
    )
    model = build_from_spec(spec).state_dict()
    # exactly our model's keys, each with its shape: nothing left over, nothing missing
    assert {k: tuple(v.shape) for k, v in ours["model"].items()} == {
        k: tuple(v.shape) for k, v in model.items()
    }
    dual = "dualbn" in name
    assert ("batch norm copy 0 ('nonprune'" in ours["source"]) is dual
    assert "the dense branch" in ours["source"]


def _randomised_dual_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet18", True, [8, 16, 32, 64], 3, 128, True)  # float32, as saved
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # different statistics and affine terms in the two BN copies
        for name, t in model.state_dict().items():
            if t.is_floating_point() and ("bn" in name or "downsample.1" in name):
                low = 0.5 if "running_var" in name else -0.5
                t.copy_(low + torch.rand(t.shape, generator=g, dtype=t.dtype))
    return model.eval()


def test_a_reference_layout_checkpoint_evaluates_its_dense_branch(tmp_path: Path):
    model = _randomised_dual_model()
    path = write_reference_checkpoint(model, tmp_path / "model_2000.pt")
    model = model.double()  # computed in float64 from the same (float32) weights

    loaded, payload = load_encoder(path, "resnet18")
    assert payload["epoch"] == 2000 and payload["spec"]["channels"] == [8, 16, 32, 64]
    loaded = loaded.double().eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        want = model.backbone(x)  # branch 0: the dense weights and BN copy, no mask
        got = loaded.backbone(x)
        for m in model.modules():  # the pruned copy's statistics give other features
            if hasattr(m, "branch"):
                m.branch = 1
        other = model.backbone(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got, other)
    # the head too: the reference's fc.fc1..bn3 are ours head.0..7
    torch.testing.assert_close(loaded.head(want), _dense_head(model)(want), rtol=1e-12, atol=1e-12)


def _dense_head(model):
    for m in model.modules():
        if hasattr(m, "branch"):
            m.branch = 0
    return model.head


def test_a_reference_checkpoint_the_map_cannot_take_is_named(tmp_path: Path):
    payload = _reference_payload("simclr_resnet18_cifar")
    payload["state_dict"]["module.extra.weight"] = torch.zeros(3)
    path = tmp_path / "odd.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="reference code's layout.*module|extra.weight"):
        load_checkpoint(path)
