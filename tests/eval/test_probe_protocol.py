"""The probe follows the reference's schedule and model selection (issue 24, section 3): the
lr of every epoch against a literal transcription of the reference's two loops, validation
every ``val_every`` epochs (and after the last), selection by top-1 or top-5, feature-norm
statistics, and the optional affine-free BatchNorm (``normalize``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from sdclr.config.compose import compose_config
from sdclr.eval import probe as probe_module
from sdclr.eval.collapse import collapse_reason
from sdclr.eval.features import extract_bank_features
from sdclr.eval.probe import _accuracies
from tests.eval.test_probe import GROUPS, Loud, MeanColour, _settings, colour_images, probe_cfg
from tests.eval.test_probe import _run as probe_run

# --- the reference's loops, transcribed -------------------------------------------------


def _reference_cifar_lrs(epochs: int, milestones: list[int], lr: float) -> list[float]:
    """train_cifar.py: MultiStepLR stepped at the start of each 1-based epoch (the order of
    PyTorch before 1.1), then the epoch trains."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    used = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # step() before optimizer.step(), as the reference
        for _epoch in range(1, epochs + 1):
            scheduler.step()
            used.append(optimizer.param_groups[0]["lr"])  # train(...)
            optimizer.step()
    return used


def _reference_imagenet_lrs(epochs: int, milestones: list[int], lr: float) -> list[float]:
    """train_imagenet.py: the epoch trains, then MultiStepLR steps."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    used = []
    for _epoch in range(1, epochs + 1):
        used.append(optimizer.param_groups[0]["lr"])  # train(...)
        optimizer.step()
        scheduler.step()
    return used


def _run(cfg, encoder=None, seed=0, log=None, classes=3, n_per_class=40):
    """tests/eval/test_probe.py's probe run, on the three colour classes or (``classes=8``)
    on :func:`_many_classes`."""
    if classes == 3:
        data, groups = (colour_images(n_per_class, 0), colour_images(10, 1)), GROUPS
    else:
        data = (_many_classes(0), _many_classes(1))
        groups = {"many": [0, 1], "medium": [2, 3], "few": [4, 5, 6, 7]}
    return probe_run(cfg, encoder, seed, log, data, _settings(classes, groups))


def _many_classes(seed, n_per_class=24):
    """Eight noisy colour classes, some close to each other: top-1 and top-5 differ."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor(
        [[c1, c2, c3] for c1 in (60, 190) for c2 in (60, 190) for c3 in (60, 190)],
        dtype=torch.float,
    )
    labels = torch.arange(8).repeat_interleave(n_per_class)
    noise = torch.randint(-90, 91, (len(labels), 3, 8, 8), generator=g).float()
    images = (colours[labels][:, :, None, None] + noise).clamp(0, 255).to(torch.uint8)
    return images, labels


@pytest.mark.parametrize(
    "data,stage,reference",
    [
        ("cifar10_lt", "linear", _reference_cifar_lrs),
        ("cifar100_lt", "fewshot", _reference_cifar_lrs),
        ("cifar10_lt", "fewshot", _reference_cifar_lrs),
        ("imagenet100_lt", "linear", _reference_imagenet_lrs),
        ("imagenet_lt_exp", "fewshot", _reference_imagenet_lrs),
    ],
)
def test_every_epochs_lr_is_the_references(data, stage, reference):
    """The dataset's own probe section (30 epochs at [10, 20] or 100 at [40, 60], lr 30),
    run through fit_probe: the lr each epoch trained at (its log record) is the one the
    reference's loop gives that epoch."""
    cfg = compose_config([f"data={data}"])[stage].copy()
    cfg.augment, cfg.batch_size = False, 1024  # fixed features, one step per epoch
    records = []
    r = _run(cfg, log=records.append)
    used = [rec["lr"] for rec in records]
    assert [rec["epoch"] for rec in records] == list(range(1, cfg.epochs + 1))
    assert used == reference(int(cfg.epochs), list(cfg.milestones), float(cfg.lr))
    assert r["lr_step"] == cfg.lr_step
    # and in words (protocol.md section 2)
    first, second = cfg.milestones
    if reference is _reference_cifar_lrs:  # 1-9 / 10-19 / 20-30 (1-39 / 40-59 / 60-100)
        spans = [(1, first - 1), (first, second - 1), (second, cfg.epochs)]
    else:  # 1-10 / 11-20 / 21-30
        spans = [(1, first), (first + 1, second), (second + 1, cfg.epochs)]
    for (lo, hi), lr in zip(spans, (30.0, 3.0, 0.3)):
        assert used[lo - 1 : hi] == pytest.approx([lr] * (hi - lo + 1))


#: (lr_step, val_every, select_metric) of the linear and the few-shot probe, by data config
PROBE_DEFAULTS = {
    ("cifar10_lt", "cifar100_lt", "folder"): (
        ("epoch_start", 1, "top1"),
        ("epoch_start", 5, "top1"),
    ),
    ("imagenet100_lt", "imagenet_lt_exp"): (("epoch_end", 2, "top5"), ("epoch_end", 10, "top5")),
}


def test_per_dataset_probe_defaults():
    for datasets, (linear, fewshot) in PROBE_DEFAULTS.items():
        for data in datasets:
            cfg = compose_config([f"data={data}"])
            for probe, expected in ((cfg.linear, linear), (cfg.fewshot, fewshot)):
                assert (probe.lr_step, probe.val_every, probe.select_metric) == expected, data
            assert not cfg.linear.normalize and not cfg.fewshot.normalize
    cfg = compose_config(["data=imagenet100_lt", "linear.val_every=1", "fewshot.normalize=true"])
    assert cfg.linear.val_every == 1 and cfg.fewshot.normalize


# --- validation frequency and selection -----------------------------------------------------


def test_validation_every_n_epochs_and_after_the_last_picks_the_best_of_those():
    # a huge rate that never decays makes the curve erratic, so the pick matters
    every = _run(probe_cfg(lr=3000.0, milestones=[], epochs=12))
    records = []
    sparse = _run(probe_cfg(lr=3000.0, milestones=[], epochs=12, val_every=5), log=records.append)
    assert sparse["val_every"] == 5 and sparse["val_epochs"] == [5, 10, 12]  # 12: the last
    # validation draws nothing: the same training, seen at fewer epochs
    assert sparse["val_acc"] == [every["val_acc"][e - 1] for e in (5, 10, 12)]
    assert [rec["epoch"] for rec in records if "val_acc" in rec] == [5, 10, 12]
    assert len(records) == 12  # every epoch still logs its loss and lr
    best = int(np.argmax(sparse["val_acc"]))
    assert sparse["best_epoch"] == sparse["val_epochs"][best]
    assert sparse["best_val_acc"] == max(sparse["val_acc"])
    assert every["best_epoch"] == int(np.argmax(every["val_acc"])) + 1
    # the whole-curve best is not necessarily one of the validated epochs: each run reports
    # the test accuracy of its own pick
    if every["best_epoch"] not in (5, 10, 12):
        assert every["best_val_acc"] >= sparse["best_val_acc"]


def test_a_non_finite_loss_between_validations_is_caught():
    r = _run(probe_cfg(lr=1e38, val_every=4, epochs=6), encoder=Loud())
    assert r["diverged_epoch"] == 1 and r["val_epochs"] == [4, 6]
    assert r["val_acc"] == [None, None] and r["best_epoch"] is None


def test_top5_accuracy():
    logits = torch.tensor(
        [[6.0, 5, 4, 3, 2, 1, 0], [0.0, 1, 2, 3, 4, 5, 6], [6.0, 5, 4, 3, 2, 1, 0]]
    )
    # label 0: top-1; label 0 ranked last: a miss; label 5: 6th of 7, a top-5 miss
    assert _accuracies(logits, torch.tensor([0, 0, 5])) == pytest.approx((100 / 3, 100 / 3))
    # label 2 ranked 5th, label 4 ranked 5th: top-5 hits, top-1 misses
    assert _accuracies(logits, torch.tensor([0, 2, 4])) == pytest.approx((100 / 3, 100.0))
    # fewer than five classes: top-5 is every class
    assert _accuracies(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([2])) == (0.0, 100.0)


@pytest.mark.parametrize("metric", ["top1", "top5"])
def test_the_selection_metric_chooses_the_epoch_and_is_recorded(metric):
    cfg = probe_cfg(lr=300.0, milestones=[], epochs=10, select_metric=metric)
    r = _run(cfg, classes=8)
    assert r["select_metric"] == metric
    curve = r["val_acc"] if metric == "top1" else r["val_top5"]
    best = int(np.argmax(curve))  # the first of equal scores, as the reference's strict >
    assert r["best_epoch"] == r["val_epochs"][best]
    assert r["best_val_acc"] == r["val_acc"][best] and r["best_val_top5"] == r["val_top5"][best]
    assert all(t5 >= t1 for t1, t5 in zip(r["val_acc"], r["val_top5"]))


def test_top1_and_top5_selection_pick_different_epochs_here():
    cfg = probe_cfg(lr=300.0, milestones=[], epochs=10)
    by_top1 = _run(cfg, classes=8)
    by_top5 = _run(probe_cfg(**{**cfg, "select_metric": "top5"}), classes=8)
    # one training, two picks: top-5 saturates first, so it keeps an earlier epoch
    assert by_top1["val_acc"] == by_top5["val_acc"] and by_top1["val_top5"] == by_top5["val_top5"]
    assert by_top5["best_epoch"] < by_top1["best_epoch"]
    assert by_top5["best_val_top5"] == 100.0 and by_top5["best_val_acc"] < by_top1["best_val_acc"]


def test_top5_selection_over_a_grid_of_rates():
    r = _run(probe_cfg(lrs=[1e-4, 300.0], epochs=6, select_metric="top5"), classes=8)
    scores = [max(g["val_top5"]) for g in r["grid"]]
    chosen = r["grid"][int(np.argmax(scores))]
    assert r["lr"] == chosen["lr"] and r["best_val_top5"] == max(scores)
    assert r["best_epoch"] == chosen["best_epoch"] and r["select_metric"] == "top5"


# --- feature scale and normalize ------------------------------------------------------------


class Offset(MeanColour):
    """MeanColour plus 100 in every dimension: the class signal rides on a large shared
    offset, the scale the frozen features of an early checkpoint have."""

    def forward(self, x):
        return super().forward(x) + 100.0


def test_feature_norm_statistics_are_recorded():
    images, labels = colour_images(40, 0)
    bank, idx = probe_module.as_images(images), np.arange(len(labels))
    encoder = Loud().eval()
    settings = _settings().sized_for(bank)
    for augment in (False, True):
        r = _run(probe_cfg(augment=augment, epochs=2), encoder=Loud())
        stats = r["feature_norm"]
        assert set(stats) == {"train", "val"}
        assert stats["train"]["images"] == r["train_images"] == int((idx % 4 != 0).sum())
        assert stats["val"]["images"] == int((idx % 4 == 0).sum())
        for part, sel in (("train", idx % 4 != 0), ("val", idx % 4 == 0)):
            feats = extract_bank_features(encoder, bank, torch.as_tensor(idx[sel]), settings)
            norms = feats.norm(dim=1).double()
            s = stats[part]
            assert s["min"] <= s["mean"] <= s["max"] and s["std"] >= 0
            if part == "val" or not augment:  # the un-augmented features, exactly
                assert s["mean"] == pytest.approx(float(norms.mean()), rel=1e-5)
                assert s["std"] == pytest.approx(float(norms.std(unbiased=False)), rel=1e-4)
                assert s["max"] == pytest.approx(float(norms.max()), rel=1e-5)
            else:  # the first epoch's augmented views: the same scale
                assert s["mean"] == pytest.approx(float(norms.mean()), rel=0.3)


def test_normalize_adds_an_affine_free_batchnorm_and_rescues_a_runaway_scale(monkeypatch):
    made = []

    class Recorded(nn.BatchNorm1d):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    val = colour_images(40, 0)[1].numpy()
    val = val[np.arange(len(val)) % 4 == 0]
    # lr 30 on features with a large common offset (as BN statistics that lag the weights
    # leave them): the protocol's probe stays at chance
    runaway = _run(probe_cfg(lr=30.0, milestones=[]), encoder=Offset())
    reason = collapse_reason(runaway, val, "linear")
    assert reason is not None and "at chance level" in reason and not runaway["normalize"]
    assert "feature scale: L2 norm" in reason and "linear.normalize=true" in reason
    assert f"{runaway['feature_norm']['train']['mean']:.3g}" in reason
    encoder = Offset()  # built before the patch: its own BN is not recorded
    monkeypatch.setattr(probe_module.nn, "BatchNorm1d", Recorded)
    fixed = _run(probe_cfg(lr=30.0, milestones=[], normalize=True), encoder=encoder)
    assert len(made) == 1 and made[0].affine is False and made[0].weight is None
    assert made[0].num_features == 3 and made[0].num_batches_tracked > 0
    assert fixed["normalize"] and fixed["acc"] == 100.0
    assert collapse_reason(fixed, val, "linear") is None
    # the norms are recorded before the normalisation (the same draws: normalize adds none)
    assert fixed["feature_norm"] == runaway["feature_norm"]
    assert fixed["feature_norm"]["train"]["mean"] > 100


def test_normalize_is_blind_to_the_feature_scale_and_off_changes_nothing():
    quiet = _run(probe_cfg(normalize=True))
    loud = _run(probe_cfg(normalize=True), encoder=Loud())
    assert quiet["val_acc"] == loud["val_acc"] and quiet["per_class"] == loud["per_class"]
    # a batch of one image: normalised by the running statistics, no error
    r = _run(probe_cfg(normalize=True, batch_size=89, epochs=2))  # 90 training images
    assert r["train_images"] == 90 and r["normalize"]


def test_collapse_reason_without_normalize_advice_when_already_normalised():
    base = {"grid": [{}], "lr": 30.0, "diverged_epoch": 1, "best_val_acc": None}
    stats = {"train": {"mean": 812.0, "std": 40.0, "min": 700.0, "max": 2300.0, "images": 50}}
    plain = collapse_reason({**base, "feature_norm": stats, "normalize": False}, [0, 1], "fewshot")
    assert "L2 norm 812 +/- 40 (max 2.3e+03) over the 50 training images" in plain
    assert "fewshot.normalize=true" in plain and "fewshot.lrs=" in plain
    done = collapse_reason({**base, "feature_norm": stats, "normalize": True}, [0, 1], "fewshot")
    assert "normalize=true" not in done and "fewshot.lrs=" in done
    grid = {**base, "grid": [{}, {}], "normalize": True}
    assert "no class information" in collapse_reason(grid, [0, 1], "linear")
    old = collapse_reason(base, [0, 1], "linear")  # a result from before the statistics
    assert "feature scale" not in old and "linear.normalize=true" in old
