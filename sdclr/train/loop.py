"""The pretraining loop: a plain loop over GPU- (or CPU-) resident uint8 images.

Batches are index gathers into the resident dataset; both views are drawn with the batched
augmentation ops from one seeded generator. The loss is accumulated on the device and read
only every ``log_every`` steps, so the step itself never waits on the host.

Any method of :mod:`sdclr.methods` (SimCLR / SDCLR, MoCo v2, BYOL, each with or without a
pruned branch; see :class:`sdclr.methods.base.Method`) trains here: its extra parameters join
the optimiser, ``after_step`` runs after every optimiser step and ``set_progress`` before
every loss. At every epoch start the mask is recomputed and the temperature set (constant,
or ``temperature.schedule=cosine``); with ``boost=true`` (BCL) the per-sample losses of every
step update a loss memory indexed by dataset position, turned into per-sample strengths at
the next epoch start (0 in the first epoch) that drive the boosted augmentation of both
views. The kNN monitor and the diagnostics (:mod:`sdclr.eval.monitor`) run at epoch ends: the
diagnostics on rank 0, the kNN monitor on every rank, each encoding its share of the bank.
What a checkpoint keeps is :class:`sdclr.train.state.TrainState`; the step's parts are in
:mod:`sdclr.train.step`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from sdclr.augment.ops import Shard
from sdclr.config.derived import boost_preset
from sdclr.data.banks import FileImages, TensorImages, as_images
from sdclr.errors import TrainingError
from sdclr.eval.monitor import TrainingMonitor
from sdclr.methods.base import Method
from sdclr.models.checkpoint import save_checkpoint
from sdclr.models.contrastive import ContrastiveModel
from sdclr.train.bcl import LossMemory
from sdclr.train.state import TrainState
from sdclr.train.step import (
    augment_config,
    batches_per_epoch,
    epoch_temperature,
    gather_samples,
    make_optimizer,
    make_views,
    prepare_model,
    train_step,
    wrap_distributed,
)
from sdclr.utils.distributed import any_rank, barrier, global_mean, world_size
from sdclr.utils.distributed import rank as get_rank
from sdclr.utils.precision import StepSettings, step_settings
from sdclr.utils.progress import EpochLines, progress_bar
from sdclr.utils.schedule import warmup_cosine
from sdclr.utils.signals import Interrupted, StopSignal


def pretrain(
    cfg,
    model: ContrastiveModel,
    method: Method,
    images: torch.Tensor | TensorImages | FileImages,
    generator: torch.Generator,
    checkpoint_path: Path,
    extra_state: dict[str, Any],
    log=None,
    progress: bool = True,
    resume_from: dict[str, Any] | None = None,
    stop: StopSignal | None = None,
    monitor: TrainingMonitor | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``images``: uint8 [N, 3, H, W] on the training device, or a bank of
    image files decoded per batch (:mod:`sdclr.data.banks`).

    ``method`` is any method object (:mod:`sdclr.methods.simclr`, :mod:`sdclr.methods.moco`,
    :mod:`sdclr.methods.byol`). ``log(record, step, kind="pretrain")`` receives the step and epoch
    records, and the ``knn`` / ``diagnostics`` records of ``monitor``.

    Checkpoints (every ``checkpoint.every`` epochs, at the end, and when ``stop`` reports a
    signal) hold everything needed to continue exactly: weights, optimiser, the method's
    state (momentum network, queue, predictor), the BCL loss memory and strengths, position
    in the epoch (its permutation and batch index), the current mask, the monitor's curves
    and every RNG state. ``resume_from`` is such a checkpoint.
    """
    p = cfg.pretrain
    bank = as_images(images)
    device = bank.device
    settings = step_settings(cfg, device)
    n = len(bank)
    world, rank = world_size(), get_rank()
    shard = Shard(rank, world) if world > 1 else None
    batches = batches_per_epoch(n, p.batch_size, p.drop_last, world)
    total_steps = len(batches) * p.epochs
    warmup_steps = len(batches) * p.warmup_epochs
    aug = augment_config(cfg.data)
    mean, std = list(cfg.data.mean), list(cfg.data.std)
    boost_cfg = boost_preset(cfg) if cfg.boost else None
    memory = LossMemory(n, float(cfg.bcl.momentum), device) if boost_cfg is not None else None
    strength = torch.zeros(n, device=device) if boost_cfg is not None else None
    knn = monitor.knn if monitor is not None else None
    diag = monitor.diagnostics if monitor is not None else None
    track = memory is not None or diag is not None
    method.track_samples = track
    has_temperature = method.temperature is not None

    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
    prepare_model(model, settings)
    # the method's own networks (momentum copy, predictor) exist before the optimiser; any
    # random draw this makes is replaced below by the checkpoint's RNG state on resume
    method.setup(model)
    opt = make_optimizer(model, p, method.extra_parameters())
    state = TrainState()
    if resume_from is not None:
        state = TrainState.from_payload(
            resume_from,
            optimizer=opt,
            method=method,
            memory=memory,
            generator=generator,
            device=device,
        )
    perm: torch.Tensor | None = None
    carried_loss = 0.0
    start_batch = 0
    position = state.position
    if position is not None:  # interrupted inside an epoch
        start_batch = int(position["batch"])
        perm = position["perm"].to(device)
        carried_loss = float(position["loss_sum"])
        if strength is not None and position.get("strength") is not None:
            strength = position["strength"].to(device)
        if diag is not None and position.get("class_loss") is not None:
            diag.load_epoch_state(position["class_loss"])
    model.train()
    t0 = time.time()
    lr = p.lr

    ddp = wrap_distributed(model, method)

    def save(epoch: int, position: dict[str, Any] | None = None) -> None:
        state.epoch, state.position = epoch, position
        if rank != 0:
            return
        payload = state.to_payload(
            model=model,
            optimizer=opt,
            method=method,
            memory=memory,
            generator=generator,
            finished=epoch == p.epochs and position is None,
            seconds=state.seconds + time.time() - t0,
        )
        save_checkpoint(checkpoint_path, {**payload, **extra_state})

    def emit(record: dict[str, Any], kind: str = "pretrain") -> None:
        if log is not None:
            if kind == "pretrain":
                log(record, state.step)
            else:
                log(record, state.step, kind)

    if knn is not None and state.epoch == 0 and not state.knn:
        # the curve's start: the encoder at its random initialisation, before any step. Under
        # torchrun every rank encodes its share of the bank and gets rank 0's result
        # (sdclr.eval.knn), so no rank waits alone for the whole pool's encoding
        entry = {"epoch": 0, **knn(model.backbone)}
        state.knn.append(entry)
        emit(entry, "knn")
    bar = progress_bar(
        range(state.epoch, p.epochs),
        desc="pretrain",
        enabled=progress,
        initial=state.epoch,
        total=p.epochs,
    )
    # without a terminal, one line per epoch in place of the bar (and in the job's run.log)
    lines = EpochLines("pretrain", p.epochs, done=state.epoch, enabled=progress and rank == 0)
    for epoch in bar:
        t_epoch = time.time()
        resuming_mid_epoch = perm is not None
        temperature = epoch_temperature(cfg, epoch) if has_temperature else None
        if has_temperature:
            method.temperature = temperature
        if resuming_mid_epoch:
            density = None  # this epoch's mask was restored, its density already recorded
        else:
            density = method.on_epoch_start(model)
            if density is not None:
                state.mask_density.append(density)
            if temperature is not None:
                state.temperatures.append(temperature)
            perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
            if memory is not None:  # BCL: strengths fixed for the epoch, 0 in the first one
                strength = memory.strengths() if epoch > 0 else torch.zeros(n, device=device)
            if diag is not None:
                diag.reset_epoch()
        loss_sum = torch.zeros((), device=device) + carried_loss
        window_sum = torch.zeros((), device=device)
        window = 0
        idx_batches = [perm[s:e] for s, e in batches[start_batch:]]
        images = sum(e - s for s, e in batches[start_batch:])
        # under torchrun each rank decodes and augments only its chunk of the global batch
        local = [i.chunk(world)[rank] for i in idx_batches] if shard else idx_batches
        pending = bank.batches(local)
        for b, idx, x in zip(range(start_batch, len(batches)), idx_batches, pending):
            lr = warmup_cosine(state.step, total_steps, warmup_steps, p.lr, p.min_lr)
            for group in opt.param_groups:
                group["lr"] = lr
            method.set_progress(state.step / total_steps)
            boost = (strength[idx], boost_cfg) if memory is not None else None
            v1, v2 = make_views(x, aug, generator, mean, std, settings, boost, shard)
            loss = train_step(model, method, opt, v1, v2, settings, ddp)
            if track:  # per-sample losses of the global batch, on the device
                per_sample = gather_samples(method.sample_losses(), world)
                if memory is not None:
                    memory.update(idx, per_sample)
                if diag is not None:
                    diag.add_losses(idx, per_sample)
            loss_sum += loss
            window_sum += loss
            window += 1
            state.step += 1
            if state.step % p.log_every == 0:
                value = global_mean(window_sum) / window  # the only host sync in the loop
                _check_finite(value, epoch, state.step, lr)
                emit({"step": state.step, "epoch": epoch + 1, "loss": value, "lr": lr})
                window_sum.zero_()
                window = 0
            # ranks agree on stopping at the same step: checked at every step in one process,
            # at the logging steps (which synchronise anyway) under torchrun
            check = stop is not None and (world == 1 or state.step % p.log_every == 0)
            if check and any_rank(stop.requested, device) and b + 1 < len(batches):
                so_far = global_mean(loss_sum)
                _check_finite(so_far, epoch, state.step, lr)
                position = {"batch": b + 1, "perm": perm.cpu(), "loss_sum": so_far}
                if strength is not None:
                    position["strength"] = strength.cpu()
                if diag is not None:
                    position["class_loss"] = diag.epoch_state()
                save(epoch, position)
                raise Interrupted(
                    _interrupt_message(stop.signum, epoch, state.step, checkpoint_path), stop.signum
                )
        start_batch, carried_loss, perm = 0, 0.0, None
        epoch_loss = global_mean(loss_sum) / len(batches)
        _check_finite(epoch_loss, epoch, state.step, lr)
        train_seconds = time.time() - t_epoch  # the epoch's steps, synchronised by the mean
        state.epoch_losses.append(epoch_loss)
        record = {"epoch": epoch + 1, "epoch_loss": epoch_loss, "lr": lr}
        if density is not None:
            record["mask_density"] = density
        if temperature is not None:
            record["temperature"] = temperature
        if method.momentum is not None:
            record["momentum"] = float(method.momentum)
        emit(record)
        done = epoch + 1
        knn_acc = None
        if knn is not None and knn.due(done):  # on every rank, each encoding its share
            entry = {"epoch": done, **knn(model.backbone)}
            knn_acc = entry["acc"]
            state.knn.append(entry)
            emit(entry, "knn")
        if diag is not None and diag.due(done):
            if rank == 0:
                entry = diag(model, method, done)
                state.diagnostics.append(entry)
                emit(entry, "diagnostics")
            barrier()
        bar.set_postfix(loss=f"{epoch_loss:.4f}", lr=f"{lr:.3g}")
        mask = density if density is not None or not state.mask_density else state.mask_density[-1]
        lines(done, images, train_seconds, loss=epoch_loss, lr=lr, mask=mask, knn=knn_acc)
        last = epoch + 1 == p.epochs
        interrupted = stop is not None and any_rank(stop.requested, device)
        if (epoch + 1) % cfg.checkpoint.every == 0 or last or interrupted:
            save(epoch + 1)
        if interrupted and not last:
            raise Interrupted(
                _interrupt_message(stop.signum, epoch + 1, state.step, checkpoint_path), stop.signum
            )
    return pretrain_result(
        cfg,
        state,
        method,
        settings,
        images=n,
        seconds=state.seconds + time.time() - t0,
        resumed=resume_from is not None,
        monitored=(knn is not None, diag is not None),
    )


def pretrain_result(
    cfg,
    state: TrainState,
    method: Method,
    settings: StepSettings,
    *,
    images: int,
    seconds: float,
    resumed: bool,
    monitored: tuple[bool, bool],
) -> dict[str, Any]:
    """``metrics["pretrain"]``: the schedule, the curves and what ran (numerics, fused
    branches, BCL preset); ``monitored``: whether the kNN monitor and the diagnostics ran."""
    p = cfg.pretrain
    result: dict[str, Any] = {
        "epochs": p.epochs,
        "steps": state.step,
        "final_loss": state.epoch_losses[-1],
        "epoch_loss": state.epoch_losses,
        "images": images,
        "batch_size": p.batch_size,
        "seconds": seconds,
        "precision": "bf16" if settings.amp_dtype else "fp32",
        "channels_last": settings.channels_last,
        "compile": settings.compile,
        "compile_mode": settings.compile_mode if settings.compile else None,
        "fuse_branches": bool(method.fuses),  # what ran
        "resumed": resumed,
    }
    if method.pruned:
        result["mask_density"] = state.mask_density
    if state.temperatures:
        result["temperature"] = state.temperatures
    if cfg.boost:
        boost_cfg = boost_preset(cfg)
        result["boost"] = {
            "k": boost_cfg.k,
            "base": boost_cfg.base,
            "span": boost_cfg.span,
            "random_scale": boost_cfg.random_scale,
            "momentum": float(cfg.bcl.momentum),
        }
    if monitored[0]:
        result["knn"] = state.knn
    if monitored[1]:
        result["diagnostics"] = state.diagnostics
    return result


def _interrupt_message(signum: int | None, epoch: int, step: int, path: Path) -> str:
    import signal

    name = signal.Signals(signum).name if signum else "signal"
    return (
        f"{name} received: stopped at epoch {epoch}, step {step}; checkpoint written to "
        f"{path}. Run the same command again (same job directory) to resume"
    )


def _check_finite(value: float, epoch: int, step: int, lr: float) -> None:
    if not math.isfinite(value):
        raise TrainingError(
            f"the loss became {value} at epoch {epoch + 1}, step {step} (lr {lr:.4g}); the "
            f"last good checkpoint is kept. Lower pretrain.lr or check the data"
        )
