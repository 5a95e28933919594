"""The pretraining loop (sdclr.train.loop): the mask changes only at epoch starts, the cosine
temperature is set at every epoch start, BCL's memory is indexed by dataset position, and
an interrupted MoCo run resumes its queue, momentum network and BCL memory exactly."""

from __future__ import annotations

import signal
import tempfile
from pathlib import Path

import pytest
import torch
from tiny import (
    images,
    load_checkpoint_raw,
    run_pretrain,
    small_model,
    tiny_cfg,
    tiny_model,
    tiny_monitor,
)

from sdclr.augment.boost import BoostConfig
from sdclr.methods.registry import build_method
from sdclr.methods.simclr import ContrastiveMethod
from sdclr.train.bcl import strengths
from sdclr.train.loop import Checkpointing, pretrain
from sdclr.utils.schedule import cosine_temperature
from sdclr.utils.signals import Interrupted


def test_mask_changes_only_at_epoch_starts():
    """Through the real pretraining loop: record the mask at every step."""
    from omegaconf import OmegaConf

    from sdclr.config.compose import compose_config
    from sdclr.train.loop import pretrain

    cfg = compose_config(
        [
            "pretrain.epochs=3",
            "pretrain.batch_size=8",
            "pretrain.warmup_epochs=1",
            "pretrain.lr=2.0",
            "checkpoint.every=100",
        ]
    )
    model = small_model(dual_bn=True)
    gen = torch.Generator().manual_seed(0)
    method = ContrastiveMethod(0.2, 0.9, dual_bn=True, generator=gen)
    seen = []
    original = method.loss

    def recording_loss(m, a, b):
        seen.append((method_epoch[0], {k: v.clone() for k, v in method.masks.items()}))
        return original(m, a, b)

    method_epoch = [0]
    original_start = method.on_epoch_start

    def counting_start(m):
        method_epoch[0] += 1
        return original_start(m)

    method.loss = recording_loss
    method.on_epoch_start = counting_start
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        result = pretrain(
            cfg, model, method, images, gen, Checkpointing(Path(d) / "c.pt"), log=None,
            progress=False,
        )  # fmt: skip
    assert OmegaConf.is_config(cfg) and len(result["mask_density"]) == 3
    assert len(seen) == 9  # 3 epochs x 3 steps
    for epoch in (1, 2, 3):
        masks = [m for e, m in seen if e == epoch]
        assert all(all(torch.equal(masks[0][k], m[k]) for k in m) for m in masks[1:])
    first = [m for e, m in seen if e == 1][0]
    last = [m for e, m in seen if e == 3][0]
    assert any(not torch.equal(first[k], last[k]) for k in first)


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
            cfg, model, method, imgs, gen, Checkpointing(ref_path), None, False,
            monitor=tiny_monitor(cfg, imgs, labels, knn_every=2),
        )  # fmt: skip
        reference = torch.load(ref_path, weights_only=False)
        torch.manual_seed(0)
        model, method, gen = fresh(0)
        path = Path(d) / "job.pt"
        stop = StopAfter(method, 4)  # epoch 2, after its first step
        with pytest.raises(Interrupted):
            pretrain(
                cfg, model, method, imgs, gen, Checkpointing(path), None, False,
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
            cfg, model, method, imgs, gen,
            Checkpointing(path, resume_from=load_checkpoint_raw(path)), None, False,
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
