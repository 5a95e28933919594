"""sdclr.models.export: the timm export (model.safetensors + config.json) loads with the
documented timm statements into a model whose features are the suite's encoder's, in
float64; bad checkpoints and destinations are refused before anything is written."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from export_checkpoint import MEAN, STD, write_tiny_checkpoint

from sdclr.errors import CheckpointError
from sdclr.models.checkpoint import load_encoder
from sdclr.models.export import CONFIG, WEIGHTS, ExportError, export_timm, load_lines


def documented_load(folder) -> torch.nn.Module:
    """Run the statements config.json documents (sdclr.load, DIR = the folder)."""
    config = json.loads((folder / CONFIG).read_text())
    scope: dict = {}
    exec("\n".join(config["sdclr"]["load"]).replace("DIR", str(folder)), scope)
    return scope["model"]


def suite_and_timm_features(ckpt, folder, size=32):
    suite, _ = load_encoder(ckpt)
    encoder = suite.backbone.double().eval()  # what the probes and the kNN classifier use
    model = documented_load(folder).double().eval()
    x = torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(3)).double()
    with torch.no_grad():
        return encoder(x), model(x), model


@pytest.mark.parametrize("cifar_stem", [True, False])
def test_timm_loads_the_export_and_computes_the_suites_features(tmp_path, cifar_stem):
    ckpt = write_tiny_checkpoint(tmp_path / "pretrain.pt", cifar_stem=cifar_stem)
    config = export_timm(ckpt, tmp_path / "export")
    ours, theirs, model = suite_and_timm_features(ckpt, tmp_path / "export")
    assert ours.shape == theirs.shape == (6, 64)
    torch.testing.assert_close(theirs, ours, rtol=1e-12, atol=1e-12)
    assert type(model).__name__ == "ResNet" and model.num_classes == 0
    if cifar_stem:  # the swapped-in stem: 3x3 stride 1, no max-pool
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
        assert isinstance(model.maxpool, torch.nn.Identity)
        assert (
            len(config["sdclr"]["load"]) == 4
            and "CIFAR stem" in config["pretrained_cfg"]["notes"][1]
        )
    else:  # timm's own stem: one line, timm loads the weights itself
        assert config["sdclr"]["load"][1:] == load_lines(False, 64)
        assert (
            config["sdclr"]["load"][1]
            == "model = timm.create_model('local-dir:DIR', pretrained=True)"
        )
    # the preprocessing travels with it: timm resolves the data's input size, mean and std
    data = timm.data.resolve_data_config(model=model)
    assert tuple(data["input_size"]) == (3, 32, 32) and data["crop_pct"] == 1.0
    assert list(data["mean"]) == MEAN and list(data["std"]) == STD
    assert config["architecture"] == "resnet18" and config["num_classes"] == 0
    assert config["model_args"] == {"channels": [8, 16, 32, 64]}
    assert config["pretrained_cfg"]["pool_size"] == ([4, 4] if cifar_stem else [1, 1])


def test_the_weights_are_the_dense_branch_with_timm_names(tmp_path):
    from safetensors.torch import load_file

    ckpt = write_tiny_checkpoint(tmp_path / "pretrain.pt")
    export_timm(ckpt, tmp_path / "export")
    state = load_file(tmp_path / "export" / WEIGHTS)
    model = torch.load(ckpt, weights_only=False)["model"]
    assert not any(".bn." in k or k.startswith(("head", "backbone")) for k in state)
    for key in ("layer1.0.bn1.running_mean", "bn1.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(state[key], model["backbone." + _dual(key)])
        assert not torch.equal(state[key], model["backbone." + _dual(key, 1)])


def _dual(key: str, copy: int = 0) -> str:
    """``layer1.0.bn1.running_mean`` -> ``layer1.0.bn1.bn.<copy>.running_mean``."""
    module, name = key.rsplit(".", 1)
    return f"{module}.bn.{copy}.{name}"


def test_the_crop_follows_the_runs_eval_resize(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "pretrain.pt", eval_resize=40)
    config = export_timm(ckpt, tmp_path / "export")
    assert config["pretrained_cfg"]["crop_pct"] == 32 / 40
    assert config["pretrained_cfg"]["interpolation"] == "bilinear"


def test_an_existing_export_is_kept_without_force(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "pretrain.pt")
    other = write_tiny_checkpoint(tmp_path / "other.pt", seed=5)
    out = tmp_path / "export"
    export_timm(ckpt, out)
    before = (out / WEIGHTS).read_bytes()
    with pytest.raises(ExportError, match="already holds an export .*--force"):
        export_timm(other, out)
    assert (out / WEIGHTS).read_bytes() == before
    export_timm(other, out, force=True)
    assert (out / WEIGHTS).read_bytes() != before
    assert sorted(p.name for p in out.iterdir()) == [CONFIG, WEIGHTS]  # no temporary left


def test_bad_checkpoints_and_destinations_are_refused_before_writing(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "pretrain.pt")
    with pytest.raises(CheckpointError, match="not found"):
        export_timm(tmp_path / "missing.pt", tmp_path / "a")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        export_timm(tmp_path / "notes.txt", tmp_path / "b")
    with pytest.raises(ExportError, match="it is a file, not a folder"):
        export_timm(ckpt, tmp_path / "notes.txt")
    with pytest.raises(ExportError, match="cannot write the export into"):
        export_timm(ckpt, tmp_path / "notes.txt" / "sub")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
