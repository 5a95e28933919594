"""The methods, losses and options wired into the suite: config groups and checks, the method
factory (one CPU step of every method / loss / option), the temperature schedule, BCL in the
loop, the kNN monitor, the SDCLR diagnostics, exact resume of MoCo's state, the report over
a mix of methods, and one end-to-end pair of runs through the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from numerics import assert_close64
from test_runner import TINY, ok, sdclr

from sdclr.augment.boost import BoostConfig, sample_boost_params
from sdclr.config.compose import compose_config
from sdclr.config.derived import boost_preset, diagnostics_on, method_label, method_slug
from sdclr.config.drift import config_differences
from sdclr.config.validate import check_world_size, validate
from sdclr.data.banks import TensorImages
from sdclr.errors import ConfigError
from sdclr.eval.features import EvalSettings
from sdclr.eval.knn import knn_evaluate
from sdclr.eval.monitor import (
    Diagnostics,
    KnnMonitor,
    TrainingMonitor,
    default_per_class,
    layer_density,
    stratified_sample,
)
from sdclr.losses.contrastive import nt_xent
from sdclr.methods.registry import build_method
from sdclr.methods.simclr import ContrastiveMethod
from sdclr.models.checkpoint import build_from_spec, model_spec
from sdclr.train.bcl import strengths
from sdclr.train.loop import pretrain
from sdclr.train.step import make_optimizer, make_views, train_step
from sdclr.utils.precision import StepSettings
from sdclr.utils.schedule import cosine_temperature
from sdclr.utils.signals import Interrupted

SMALL = [
    "backbone.channels=[8,16,32,64]",
    "pretrain.batch_size=8",
    "pretrain.epochs=2",
    "pretrain.warmup_epochs=1",
    "checkpoint.every=100",
    "method.queue_size=32",
    "method.mochi_n=8",
    "method.mochi_s=4",
    "method.mochi_s_prime=2",
    "method.predictor_hidden=32",
]
GROUPS3 = {"many": [0], "medium": [1], "few": [2]}


def tiny_cfg(*overrides: str):
    cfg = compose_config([*SMALL, *overrides])
    validate(cfg)
    return cfg


def tiny_model(cfg, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    return build_from_spec(model_spec(cfg)).to(dtype)


def images(n: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


def params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


# --- config ---------------------------------------------------------------------------------


def test_defaults_keep_the_existing_method_and_names():
    sdclr_cfg, simclr_cfg = compose_config([]), compose_config(["prune=none"])
    for cfg in (sdclr_cfg, simclr_cfg):
        assert cfg.method.name == "simclr" and cfg.loss.name == "ntxent" and not cfg.boost
        assert cfg.temperature.schedule == "constant" and cfg.monitor.knn_every == 50
    assert method_slug(sdclr_cfg) == "sdclr-p90" and method_slug(simclr_cfg) == "simclr"
    assert method_label(sdclr_cfg) == "SDCLR p=0.9 dual-BN head3"
    assert method_label(simclr_cfg) == "SimCLR shared-BN head2"
    assert diagnostics_on(sdclr_cfg) and not diagnostics_on(simclr_cfg)
    moco = compose_config(["method=moco", "prune=p30"])
    assert method_slug(moco) == "moco-p30"
    assert method_label(moco) == "MoCo v2 + SDCLR p=0.3 dual-BN head3"
    assert moco.method.queue_size == 4096 and moco.method.momentum == 0.99
    assert moco.pretrain.temperature == 0.2
    byol = compose_config(["method=byol", "prune=none"])
    assert method_slug(byol) == "byol" and method_label(byol) == "BYOL shared-BN head2"
    assert byol.method.cosine_momentum
    hard = compose_config(["loss=hard", "boost=true", "temperature.schedule=cosine"])
    assert method_label(hard) == (
        "SDCLR p=0.9 dual-BN head3 hard(tau+=0.1,beta=1) T=cos(0.1-1/400) BCL"
    )
    # the job directory carries the slug
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sdclr.utils.io import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        full = compose("config", ["method=moco", "prune=p30"], return_hydra_config=True)
    assert full.hydra.run.dir.endswith("_cifar10_lt_split1_moco-p30")


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["method.name=simsiam"], "method.name"),
        (["method=byol", "loss=hard"], "loss.name"),
        (["method.mochi=true"], "method.mochi"),
        (["method=moco", "method.symmetric=false"], "method.symmetric"),
        (["method=moco", "method.queue_size=0"], "method.queue_size"),
        (["method=byol", "method.momentum=1.5"], "method.momentum"),
        (["loss=debiased", "loss.tau_plus=1.0"], "loss.tau_plus"),
        (["temperature.schedule=step"], "temperature.schedule"),
        (["temperature.schedule=cosine", "temperature.t_min=0"], "temperature.t_min"),
        (["temperature.schedule=cosine", "temperature.t_max=0.05"], "temperature.t_max"),
        (["method=byol", "temperature.schedule=cosine"], "temperature.schedule"),
        (["bcl.momentum=1.0"], "bcl.momentum"),
        (["bcl.k=0"], "bcl.k"),
        (["bcl.span=40"], "bcl.span"),
        (["monitor.knn_every=-1"], "monitor.knn_every"),
        (["monitor.diagnostics_every=0"], "monitor.diagnostics_every"),
    ],
)
def test_bad_method_settings_name_the_key(overrides, key):
    cfg = compose_config(overrides)
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        validate(cfg)


def test_moco_and_byol_refuse_torchrun():
    for name in ("moco", "byol"):
        with pytest.raises(ConfigError, match="method.name.*one process"):
            check_world_size(compose_config([f"method={name}"]), 2)
        check_world_size(compose_config([f"method={name}"]), 1)
    check_world_size(compose_config([]), 2)


def test_bcl_presets_follow_the_pruned_branch_and_overrides():
    assert boost_preset(compose_config([])) == BoostConfig.for_sdclr()
    assert boost_preset(compose_config(["prune=none"])) == BoostConfig.for_simclr()
    assert boost_preset(compose_config(["method=moco", "prune=p30"])) == BoostConfig.for_sdclr()
    custom = boost_preset(compose_config(["prune=none", "bcl.k=3", "bcl.random_scale=true"]))
    assert custom == BoostConfig(k=3, base=10.0, span=20.0, random_scale=True)


def test_older_checkpoints_without_the_new_keys_still_resume():
    from sdclr.config.derived import to_container

    current = to_container(compose_config([]))
    saved = {k: v for k, v in current.items() if k not in ("method", "loss", "boost", "bcl")}
    saved.pop("temperature")
    assert config_differences(saved, current) == []
    moco = to_container(compose_config(["method=moco"]))
    assert "method.name: '<absent>' -> 'moco'" in config_differences(saved, moco)
    # the monitor never changes what is trained
    quiet = to_container(compose_config(["monitor.knn_every=0", "monitor.diagnostics=false"]))
    assert config_differences(current, quiet) == []


# --- one CPU step of every method, loss and option ----------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        ["prune=none"],
        ["loss=debiased"],
        ["loss=hard", "prune=none"],
        ["method=moco", "prune=none"],
        ["method=moco", "prune=p30"],
        ["method=moco", "prune=p30", "loss=hard"],
        ["method=moco", "prune=none", "method.mochi=true"],
        ["method=moco", "prune=none", "method.symmetric=false"],
        ["method=byol", "prune=none"],
        ["method=byol", "prune=p90"],
    ],
    ids=lambda o: "-".join(o),
)
@pytest.mark.numerics
def test_one_step_of_each_method_through_the_factory(overrides):
    cfg = tiny_cfg(*overrides)
    model = tiny_model(cfg, dtype=torch.float64)  # the identities below: tests/numerics.py
    method = build_method(cfg, torch.Generator().manual_seed(0))
    assert type(method).__name__ == {"simclr": "ContrastiveMethod", "moco": "MoCo"}.get(
        cfg.method.name, "BYOL"
    )
    assert method.pruned == (cfg.prune.ratio is not None)
    method.on_epoch_start(model)
    method.setup(model)
    extra = method.extra_parameters()
    assert bool(extra) == (cfg.method.name == "byol")
    opt = make_optimizer(model, cfg.pretrain, extra)
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters())) + len(extra)
    momentum_before = params(method.momentum_model) if cfg.method.name != "simclr" else None
    before = params(model)
    method.track_samples = True
    v1, v2 = torch.randn(
        2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    loss = train_step(model, method, opt, v1, v2, StepSettings())  # after_step included
    assert loss.dim() == 0 and torch.isfinite(loss)
    after = params(model)
    assert sum(not torch.equal(before[k], after[k]) for k in before) > 20
    per = method.sample_losses()
    assert per.shape == (8,) and torch.isfinite(per).all() and not per.requires_grad
    # per-sample losses are each sample's mean over its anchors: SimCLR averages all anchors,
    # MoCo and BYOL sum their two directions. They are stored as float32 (BCL's memory), so
    # the float64 identity holds up to their rounding: 2^-24 relative each, and the mean of
    # positive values keeps that bound; 4x of it for room
    directions = 1 if cfg.method.name == "simclr" or not cfg.method.symmetric else 2
    assert per.dtype == torch.float32
    assert abs(float(per.double().mean()) * directions - float(loss)) <= 2**-22 * float(loss)
    if cfg.method.name != "simclr":
        m = method.momentum
        for name, p in method.momentum_model.named_parameters():
            expected = m * momentum_before[name] + (1 - m) * after[name]
            assert_close64(p, expected, what=name)
    if cfg.method.name == "moco":  # both views' keys of the 8 images, or view 2's
        assert method.queue_ptr == (16 if cfg.method.symmetric else 8)


@pytest.mark.numerics
def test_simclr_losses_in_the_method_reduce_exactly():
    cfg = tiny_cfg("prune=none")
    v1, v2 = torch.randn(
        2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    model = tiny_model(cfg, dtype=torch.float64)
    z1, z2 = model(torch.cat([v1, v2])).chunk(2)
    default = ContrastiveMethod(0.2)
    # the default loss is exactly the NT-Xent the method used before the loss group existed
    assert torch.equal(default.loss(model, v1, v2), nt_xent(z1, z2, 0.2))
    zero_prior = ContrastiveMethod(0.2, loss="debiased", tau_plus=0.0)
    assert_close64(zero_prior.loss(model, v1, v2), nt_xent(z1, z2, 0.2), what="tau+ 0")
    debiased = ContrastiveMethod(0.2, loss="debiased", tau_plus=0.1)
    hard_beta0 = ContrastiveMethod(0.2, loss="hard", tau_plus=0.1, beta=0.0)
    assert torch.equal(debiased.loss(model, v1, v2), hard_beta0.loss(model, v1, v2))
    assert not torch.allclose(debiased.loss(model, v1, v2), default.loss(model, v1, v2))
    # the factory passes loss, tau_plus and beta through
    m = build_method(tiny_cfg("loss=hard", "loss.tau_plus=0.05", "loss.beta=2"))
    assert (m.loss_kind, m.tau_plus, m.beta) == ("hard", 0.05, 2.0)


# --- the loop: temperature, BCL ------------------------------------------------------------


def run_pretrain(cfg, model, method, imgs, log=None, monitor=None, gen_seed=0, **kw):
    gen = torch.Generator().manual_seed(gen_seed)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.pt"
        result = pretrain(
            cfg, model, method, imgs, gen, path, {}, log, False, monitor=monitor, **kw
        )
        return result, load_checkpoint_raw(path)


def load_checkpoint_raw(path: Path):
    return torch.load(path, weights_only=False)


def test_cosine_temperature_is_set_at_every_epoch_start_and_logged():
    cfg = tiny_cfg("prune=none", "pretrain.epochs=3", "temperature.schedule=cosine")
    cfg.temperature.period = 4
    model = tiny_model(cfg)
    method = build_method(cfg)
    seen, records = [], []
    original = method.loss

    def recording(m, a, b):
        seen.append(method.temperature)
        return original(m, a, b)

    method.loss = recording
    result, _ = run_pretrain(cfg, model, method, images(), log=lambda r, s: records.append(r))
    expected = [cosine_temperature(e, 0.1, 1.0, 4) for e in range(3)]
    assert expected == pytest.approx([1.0, 0.55, 0.1])
    assert result["temperature"] == pytest.approx(expected)
    assert seen == [t for t in expected for _ in range(3)]  # 3 steps per epoch
    assert [r["temperature"] for r in records if "epoch_loss" in r] == pytest.approx(expected)
    constant = tiny_cfg("prune=none", "pretrain.epochs=1", "pretrain.temperature=0.3")
    result, _ = run_pretrain(constant, tiny_model(constant), build_method(constant), images())
    assert result["temperature"] == [0.3]


def test_boost_goes_after_the_augmentation_and_before_normalisation():
    from sdclr.augment.ops import normalize
    from sdclr.augment.views import contrastive_view
    from sdclr.train.step import augment_config

    cfg = compose_config([])
    aug = augment_config(cfg.data)
    mean, std = list(cfg.data.mean), list(cfg.data.std)
    x = images(6)
    bcfg = BoostConfig.for_sdclr()
    for s in (0.0, 1.0):
        strength = torch.full((6,), s)
        v1, v2 = make_views(
            x, aug, torch.Generator().manual_seed(3), mean, std, StepSettings(), (strength, bcfg)
        )
        g = torch.Generator().manual_seed(3)
        a = contrastive_view(x, aug, g)
        pa = sample_boost_params(6, strength, bcfg, g)
        b = contrastive_view(x, aug, g)
        pb = sample_boost_params(6, strength, bcfg, g)
        from sdclr.augment.boost import apply_boost

        assert torch.equal(v1, normalize(apply_boost(a, pa), mean, std))
        assert torch.equal(v2, normalize(apply_boost(b, pb), mean, std))
        if s == 0.0:  # strength 0 leaves the augmented views as they were
            assert torch.equal(v1, normalize(a, mean, std))
        else:
            assert not torch.equal(v1, normalize(a, mean, std))
    # without boost: the views of before, bit for bit
    plain = make_views(x, aug, torch.Generator().manual_seed(3), mean, std, StepSettings())
    g = torch.Generator().manual_seed(3)
    assert torch.equal(plain[0], normalize(contrastive_view(x, aug, g), mean, std))
    assert torch.equal(plain[1], normalize(contrastive_view(x, aug, g), mean, std))


class IdMethod(ContrastiveMethod):
    """A real SimCLR step whose per-sample 'losses' are the images' ids (their pixel value)."""

    def loss(self, model, v1, v2):
        self._ids = v1[:, 0, 0, 0].detach().clone()
        return super().loss(model, v1, v2)

    def sample_losses(self):
        return self._ids


def test_bcl_memory_is_indexed_by_dataset_position_and_strengths_follow_it(monkeypatch):
    import sdclr.train.loop as pre

    n = 24
    ids = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 32, 32).contiguous()
    boosts = []

    def fake_views(x, aug, generator, mean, std, settings, boost=None, shard=None):
        boosts.append((x[:, 0, 0, 0].long().clone(), boost[0].clone(), boost[1]))
        return x.float(), x.float()

    monkeypatch.setattr(pre, "make_views", fake_views)
    cfg = tiny_cfg("prune=none", "boost=true", "bcl.momentum=0.5")
    method = IdMethod(0.2)
    result, ckpt = run_pretrain(cfg, tiny_model(cfg), method, ids)
    assert result["boost"] == {
        "k": 1,
        "base": 10.0,
        "span": 20.0,
        "random_scale": False,
        "momentum": 0.5,
    }
    assert len(boosts) == 6 and all(b[2] == BoostConfig.for_simclr() for b in boosts)
    first, second = boosts[:3], boosts[3:]
    # epoch 1: strength 0 for everyone, and every image is seen once
    assert all(torch.equal(s, torch.zeros_like(s)) for _, s, _ in first)
    assert sorted(torch.cat([i for i, _, _ in first]).tolist()) == list(range(n))
    # epoch 2: the strengths of the memory after epoch 1 (loss = id), at each batch's positions
    expected = strengths(torch.arange(n, dtype=torch.float32))
    for i, s, _ in second:
        assert torch.allclose(s, expected[i])
    memory = ckpt["boost"]["memory"]
    assert memory["seen"].all()
    assert torch.allclose(memory["ema"], torch.arange(n, dtype=torch.float32))  # m*id+(1-m)*id


# --- monitor ------------------------------------------------------------------------------


def tiny_monitor(cfg, imgs, labels, knn_every=1, diag_every=1):
    bank = TensorImages(imgs)
    settings = EvalSettings(
        num_classes=3, groups=GROUPS3, mean=list(cfg.data.mean), std=list(cfg.data.std), size=32
    )
    knn = KnnMonitor(knn_every, bank, torch.arange(len(imgs)), labels, bank, labels, settings)
    sample = torch.as_tensor(stratified_sample(labels.numpy(), 3, 4))
    diag = Diagnostics(diag_every, bank, sample, labels, settings)
    return TrainingMonitor(knn, diag)


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
    assert [e["epoch"] for e in watched["knn"]] == [1, 2]
    assert [e["epoch"] for e in watched["diagnostics"]] == [1, 2]
    assert sum(watched["diagnostics"][-1]["loss_share"]) == pytest.approx(1.0)
    kinds = [k for k, _ in logged]
    assert kinds.count("knn") == 2 and kinds.count("diagnostics") == 2
    knn_rec = next(r for k, r in logged if k == "knn")
    assert set(knn_rec) >= {"epoch", "acc", "many", "medium", "few"}


# --- resume ---------------------------------------------------------------------------------


class StopAfter:
    """A StopSignal stand-in that asks to stop once ``steps`` optimiser steps are done."""

    signum = signal.SIGTERM

    def __init__(self, method, steps: int):
        self.done = 0
        original = method.after_step

        def counting(model):
            original(model)
            self.done += 1

        method.after_step = counting
        self.steps = steps

    @property
    def requested(self) -> bool:
        return self.done >= self.steps


def test_interrupted_moco_resumes_its_queue_momentum_network_and_bcl_memory_exactly():
    cfg = tiny_cfg(
        "method=moco",
        "prune=p30",
        "method.mochi=true",
        "method.cosine_momentum=true",
        "boost=true",
        "temperature.schedule=cosine",
        "pretrain.epochs=3",
    )
    imgs, labels = images(), torch.arange(24) % 3

    def fresh(seed):
        gen = torch.Generator().manual_seed(0)
        return tiny_model(cfg, seed), build_method(cfg, gen), gen

    torch.manual_seed(0)
    model, method, gen = fresh(0)
    with tempfile.TemporaryDirectory() as d:
        ref_path = Path(d) / "ref.pt"
        ref = pretrain(
            cfg, model, method, imgs, gen, ref_path, {}, None, False,
            monitor=tiny_monitor(cfg, imgs, labels, knn_every=2),
        )  # fmt: skip
        reference = torch.load(ref_path, weights_only=False)
        torch.manual_seed(0)
        model, method, gen = fresh(0)
        path = Path(d) / "job.pt"
        stop = StopAfter(method, 4)  # epoch 2, after its first step
        with pytest.raises(Interrupted):
            pretrain(
                cfg, model, method, imgs, gen, path, {}, None, False,
                stop=stop, monitor=tiny_monitor(cfg, imgs, labels, knn_every=2),
            )  # fmt: skip
        saved = torch.load(path, weights_only=False)
        assert saved["position"]["batch"] == 1 and saved["epoch"] == 1 and not saved["finished"]
        assert saved["method_state"]["queue_ptr"] == (4 * 16) % 32
        # a new process: other weights and seeds until the checkpoint is loaded
        torch.manual_seed(123)
        model, method, gen = fresh(7)
        gen.manual_seed(99)
        resumed = pretrain(
            cfg, model, method, imgs, gen, path, {}, None, False,
            resume_from=load_checkpoint_raw(path),
            monitor=tiny_monitor(cfg, imgs, labels, knn_every=2),
        )  # fmt: skip
        final = torch.load(path, weights_only=False)
    assert resumed["resumed"] and resumed["epoch_loss"] == ref["epoch_loss"]
    for k, v in reference["model"].items():
        assert torch.equal(v, final["model"][k]), k
    a, b = reference["method_state"], final["method_state"]
    assert torch.equal(a["queue"], b["queue"]) and a["queue_ptr"] == b["queue_ptr"]
    assert a["momentum"] == b["momentum"] and a["momentum"] > 0.99  # the cosine schedule moved
    for k, v in a["momentum_model"].items():
        assert torch.equal(v, b["momentum_model"][k]), k
    ma, mb = reference["boost"]["memory"], final["boost"]["memory"]
    assert torch.equal(ma["ema"], mb["ema"]) and torch.equal(ma["seen"], mb["seen"])
    assert resumed["temperature"] == ref["temperature"] and len(ref["temperature"]) == 3
    assert resumed["diagnostics"] == ref["diagnostics"] and resumed["knn"] == ref["knn"]
    assert resumed["mask_density"] == ref["mask_density"]


# --- tracking and report ----------------------------------------------------------------------


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


def _fake_job(root: Path, name: str, label: str, method: str, split: int, acc: float, knn=True):
    counts = [500, 300, 180, 110, 65, 40, 24, 14, 9, 5]
    probe = {
        "acc": acc,
        "many": acc + 5,
        "medium": acc,
        "few": acc - 5,
        "std": 4.0,
        "per_class": [acc] * 10,
        "class_counts": counts,
    }
    pre = {"epochs": 4, "final_loss": 1.0, "seconds": 1.0, "split_counts": {"D_i": counts}}
    if knn:
        pre["knn"] = [
            {"epoch": e, "acc": acc - 8 + e, "many": acc, "medium": acc - 2, "few": acc - 4}
            for e in (2, 4)
        ]
    pre["diagnostics"] = [
        {
            "epoch": 4,
            "disagreement": None if "SDCLR" not in label else [0.01 * (i + 1) for i in range(10)],
            "loss_share": [c / sum(counts) for c in counts],
        }
    ]
    job = root / name
    job.mkdir(parents=True)
    metrics = {
        "run": {"method": method, "label": label, "split": split},
        "pretrain": pre,
        "linear": probe,
        "fewshot": probe,
    }
    (job / "metrics.json").write_text(json.dumps(metrics))
    (job / "status.json").write_text(json.dumps({"status": "completed"}))


def test_report_groups_any_mix_of_methods_with_curves_and_diagnostics(tmp_path):
    from sdclr.report.build import build_report

    jobs = [
        ("BYOL shared-BN head2", "BYOL"),
        ("MoCo v2 + SDCLR p=0.3 dual-BN head3", "MoCo v2 + SDCLR"),
        ("SDCLR p=0.9 dual-BN head3", "SDCLR"),
        ("SimCLR shared-BN head2", "SimCLR"),
        ("shared-BN head2 custom", "MoCo v2"),  # a label without the method: prefixed
    ]
    i = 0
    for label, method in jobs:
        for split in (1, 2):
            _fake_job(tmp_path, str(i), label, method, split, 50.0 + i, knn=method != "SimCLR")
            i += 1
    md = build_report(tmp_path)
    summary = json.loads((tmp_path / "report.json").read_text())
    labels = [m["label"] for m in summary["methods"]]
    assert labels == [
        "SimCLR shared-BN head2",
        "SDCLR p=0.9 dual-BN head3",
        "MoCo v2 + SDCLR p=0.3 dual-BN head3",
        "MoCo v2 shared-BN head2 custom",
        "BYOL shared-BN head2",
    ]
    assert all(m["linear"]["n"] == 2 for m in summary["methods"])
    byol = summary["methods"][-1]
    assert byol["knn"]["epoch"] == [4] and byol["knn"]["acc"]["mean"] == pytest.approx(46.5)
    assert byol["knn"]["curve"]["epoch"] == [2, 4]
    assert summary["methods"][0]["knn"] is None
    assert summary["plots"]["knn_curves"] == "knn_curves.png"
    assert summary["plots"]["diagnostics"] == "diagnostics.png"
    for name in ("knn_curves.png", "diagnostics.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
        assert f"]({name})" in md
    assert "## kNN monitor (last monitored epoch)" in md


def test_pretrain_only_job_gets_its_plots(tmp_path):
    from sdclr.report.plots import write_pretrain_plots

    _fake_job(tmp_path, "job", "SDCLR p=0.9 dual-BN head3", "SDCLR", 1, 50.0)
    metrics = json.loads((tmp_path / "job" / "metrics.json").read_text())
    del metrics["linear"], metrics["fewshot"]
    written = write_pretrain_plots(metrics, tmp_path / "job" / "report")
    assert set(written) == {"knn_curves", "diagnostics"}
    assert all(p.stat().st_size > 1000 for p in written.values())
    assert write_pretrain_plots({"pretrain": {"epochs": 1}}, tmp_path / "none") == {}


# --- end to end through the CLI ------------------------------------------------------------

E2E = [
    *[a for a in TINY if not a.startswith(("pretrain.batch_size", "linear.", "fewshot."))],
    "pretrain.batch_size=16",
    "linear.epochs=1",
    "linear.milestones=[1]",
    "fewshot.epochs=1",
    "fewshot.milestones=[1]",
]


def test_moco_sdclr_and_byol_end_to_end_with_every_option_and_a_mixed_report(tmp_path, env):
    root = tmp_path / "runs"
    moco = root / "moco"
    out = ok(
        sdclr(
            [
                *E2E,
                "method=moco",
                "prune=p30",
                "method.queue_size=256",
                "temperature.schedule=cosine",
                "temperature.period=4",
                "boost=true",
                "monitor.knn_every=1",
                f"hydra.run.dir={moco}",
            ],
            env,
        )
    )
    m = json.loads((moco / "metrics.json").read_text())
    assert m["run"]["label"] == "MoCo v2 + SDCLR p=0.3 dual-BN head3 T=cos(0.1-1/4) BCL"
    assert m["run"]["method"] == "MoCo v2 + SDCLR" and m["run"]["method_name"] == "moco"
    pre = m["pretrain"]
    assert pre["temperature"] == pytest.approx([1.0, 0.55])
    assert pre["boost"]["k"] == 2 and len(pre["mask_density"]) == 2
    assert [p["epoch"] for p in pre["knn"]] == [1, 2]
    assert all(0 <= p["acc"] <= 100 for p in pre["knn"])
    diag = pre["diagnostics"]
    assert [d["epoch"] for d in diag] == [1, 2]  # on by default with a pruned branch
    assert len(diag[-1]["disagreement"]) == 10 and sum(diag[-1]["loss_share"]) == pytest.approx(1)
    assert len(diag[-1]["layer_density"]) > 15
    assert all(0 <= d <= 1 for d in diag[-1]["layer_density"].values())
    ckpt = torch.load(moco / "checkpoints" / "pretrain.pt", weights_only=False)
    assert ckpt["method_state"]["queue"].shape == (256, 128) and ckpt["boost"] is not None
    for stage in ("linear", "fewshot"):
        assert 0 <= m[stage]["acc"] <= 100
    assert (moco / "report" / "diagnostics.png").is_file()
    assert (moco / "report" / "knn_curves.png").is_file()
    kinds = [json.loads(line)["kind"] for line in (moco / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("knn") == 2 and kinds.count("diagnostics") == 2
    assert "kNN monitor (epoch 2)" in out.stdout

    byol = root / "byol"
    ok(
        sdclr(
            [
                *E2E,
                "method=byol",
                "prune=none",
                "monitor.knn_every=2",
                "monitor.diagnostics=true",
                f"hydra.run.dir={byol}",
            ],
            env,
        )
    )
    m = json.loads((byol / "metrics.json").read_text())
    assert m["run"]["label"] == "BYOL shared-BN head2"
    pre = m["pretrain"]
    assert "temperature" not in pre and "mask_density" not in pre
    assert [p["epoch"] for p in pre["knn"]] == [2]
    assert pre["diagnostics"][-1]["disagreement"] is None
    assert (
        "predictor"
        in torch.load(byol / "checkpoints" / "pretrain.pt", weights_only=False)["method_state"]
    )

    report = subprocess.run(
        [sys.executable, "-m", "sdclr.report", str(root)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert report.returncode == 0, report.stderr
    summary = json.loads((root / "report.json").read_text())
    assert [x["label"] for x in summary["methods"]] == [
        "MoCo v2 + SDCLR p=0.3 dual-BN head3 T=cos(0.1-1/4) BCL",
        "BYOL shared-BN head2",
    ]
    assert set(summary["plots"]) >= {"knn_curves", "diagnostics"}


@pytest.mark.numerics
def test_moco_losses_reduce_exactly_and_train():
    """MoCo with the debiased / hard estimator over its queue: tau+=0 is InfoNCE, beta=0 is
    the debiased loss; a step with loss=hard runs through the factory."""
    from sdclr.losses.contrastive import debiased_from_logits

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 33, generator=g, dtype=torch.float64).clamp(-1, 1) / 0.2
    ce = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long), reduction="none")
    plain = debiased_from_logits(logits[:, 0], logits[:, 1:], 0.2, 0.0, 0.0)
    assert torch.allclose(plain, ce, atol=1e-12, rtol=0)

    v1, v2 = images(8, 1).double() / 255, images(8, 2).double() / 255
    losses = {}
    for name, extra in (
        ("ntxent", []),
        ("debiased0", ["loss=debiased", "loss.tau_plus=0.0"]),
        ("debiased", ["loss=debiased", "loss.tau_plus=0.1"]),
        ("hard0", ["loss=hard", "loss.tau_plus=0.1", "loss.beta=0.0"]),
        ("hard", ["loss=hard", "loss.tau_plus=0.1", "loss.beta=1.0"]),
    ):
        c = tiny_cfg("method=moco", "prune=none", "method.queue_size=64", *extra)
        model = tiny_model(c, dtype=torch.float64)
        method = build_method(c, torch.Generator().manual_seed(0))
        method.setup(model)
        losses[name] = method.loss(model, v1, v2).detach()
    assert_close64(losses["debiased0"], losses["ntxent"], what="tau+ 0")
    assert_close64(losses["hard0"], losses["debiased"], what="beta 0")
    assert not torch.allclose(losses["hard"], losses["debiased"])
    assert "hard(tau+=0.1,beta=1)" in method_label(c)
