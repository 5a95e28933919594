"""The training monitor (sdclr.eval.monitor): the kNN monitor against knn_evaluate, the SDCLR
diagnostics by hand, and that neither changes what is trained."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from numerics import assert_close64
from tiny import GROUPS3, images, run_pretrain, tiny_cfg, tiny_model, tiny_monitor

from sdclr.eval.knn import knn_evaluate
from sdclr.eval.monitor import default_per_class, layer_density, stratified_sample
from sdclr.methods.registry import build_method


@pytest.mark.numerics
def test_knn_monitor_matches_knn_evaluate_and_restores_the_mode():
    """Chunked against whole-batch features, in float64 (tests/numerics.py): the kNN of
    float32 features could flip a near tie on another CPU's kernels."""
    from sdclr.augment.ops import normalize, to_float

    cfg = tiny_cfg()
    model = tiny_model(cfg, dtype=torch.float64)
    imgs, labels = images(), torch.arange(24) % 3
    mon = tiny_monitor(cfg, imgs, labels).knn
    model.train()
    model.head.eval()  # a mixed state must come back as it was
    out = mon(model.backbone)
    assert model.backbone.training and not model.head.training
    model.eval()
    with torch.no_grad():  # the reference: the whole resident batch in one plain forward
        feats = model.backbone(
            normalize(to_float(imgs), list(cfg.data.mean), list(cfg.data.std)).double()
        )
    ref = knn_evaluate(feats.float(), labels, feats.float(), labels, 3, GROUPS3, 200, 0.1)
    assert {k: out[k] for k in ("acc", "many", "medium", "few")} == {
        k: ref[k] for k in ("acc", "many", "medium", "few")
    }
    assert out["k"] == 24 and mon.due(2)
    assert not tiny_monitor(cfg, imgs, labels, knn_every=0).knn.due(1)
    assert not tiny_monitor(cfg, imgs, labels, diag_every=2).diagnostics.due(1)


@pytest.mark.numerics
def test_diagnostics_by_hand():
    cfg = tiny_cfg()
    model = tiny_model(cfg, dtype=torch.float64)  # the disagreement: tests/numerics.py
    method = build_method(cfg)
    method.on_epoch_start(model)
    imgs, labels = images(), torch.arange(24) % 3
    assert stratified_sample(labels.numpy(), 3, 4).tolist() == list(range(12))
    assert default_per_class(10) == 64 and default_per_class(100) == 8
    diag = tiny_monitor(cfg, imgs, labels).diagnostics
    diag.reset_epoch()
    diag.add_losses(torch.tensor([0, 1, 2, 3]), torch.tensor([1.0, 2.0, 3.0, 5.0]))
    diag.add_losses(torch.tensor([4, 5]), torch.tensor([1.0, 1.0]))
    model.train()
    rec = diag(model, method, epoch=3)
    assert model.training and rec["epoch"] == 3
    # loss share from the training steps: classes 0 (ids 0, 3), 1 (1, 4), 2 (2, 5)
    assert rec["loss_share"] == pytest.approx([6 / 13, 3 / 13, 4 / 13])
    assert rec["loss_mean"] == pytest.approx([3.0, 1.5, 2.0])
    assert rec["loss_share_few"] == pytest.approx(4 / 13)
    # disagreement: the first 4 images of each class, eval mode, dense vs pruned branch 1
    model.eval()
    with torch.no_grad():
        from sdclr.augment.ops import normalize, to_float

        # the monitor's own float32 view (to_float scales by a product, not a division)
        x = normalize(to_float(imgs[:12]), list(cfg.data.mean), list(cfg.data.std)).double()
        dense = model(x, branch=0)
        pruned = model(x, branch=1, masks=method.masks)
    dis = 1 - F.cosine_similarity(dense, pruned, dim=1)
    expected = [float(dis[labels[:12] == c].mean()) for c in range(3)]
    as64 = dict(dtype=torch.float64)
    assert_close64(torch.tensor(rec["disagreement"], **as64), torch.tensor(expected, **as64))
    assert rec["disagreement_many"] == rec["disagreement"][0]
    assert rec["sample_counts"] == [4, 4, 4]
    dens = rec["layer_density"]
    assert set(dens) == set(method.masks)
    kept = sum(d * method.masks[k].numel() for k, d in dens.items())
    total = sum(m.numel() for m in method.masks.values())
    assert kept / total == pytest.approx(0.1, abs=1e-3)
    assert layer_density({"a": torch.tensor([1.0, 0.0, 0.0, 1.0])}) == {"a": 0.5}
    # without a pruned branch there is nothing to disagree with; the loss share remains
    simclr = tiny_cfg("prune=none")
    rec = diag(tiny_model(simclr), build_method(simclr), epoch=1)
    assert rec["disagreement"] is None and rec["layer_density"] is None
    assert rec["loss_share"] is not None


def test_monitor_and_diagnostics_do_not_change_what_is_trained():
    cfg = tiny_cfg()
    imgs, labels = images(), torch.arange(24) % 3
    plain, ckpt_plain = run_pretrain(cfg, tiny_model(cfg), build_method(cfg), imgs)
    logged = []
    watched, ckpt_watched = run_pretrain(
        cfg,
        tiny_model(cfg),
        build_method(cfg),
        imgs,
        log=lambda r, s, kind="pretrain": logged.append((kind, r)),
        monitor=tiny_monitor(cfg, imgs, labels),
    )
    for k, v in ckpt_plain["model"].items():
        assert torch.equal(v, ckpt_watched["model"][k]), k
    assert plain["epoch_loss"] == watched["epoch_loss"]
    assert [e["epoch"] for e in watched["knn"]] == [0, 1, 2]  # 0: the random init
    assert [e["epoch"] for e in watched["diagnostics"]] == [1, 2]
    assert sum(watched["diagnostics"][-1]["loss_share"]) == pytest.approx(1.0)
    kinds = [k for k, _ in logged]
    assert kinds.count("knn") == 3 and kinds.count("diagnostics") == 2
    knn_rec = next(r for k, r in logged if k == "knn")
    assert set(knn_rec) >= {"epoch", "acc", "many", "medium", "few"}
