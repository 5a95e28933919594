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
:mod:`sdclr.train.step`. :func:`pretrain` reads as its steps: :func:`start_run` (setup and
resume), then per epoch :func:`start_epoch` (mask, order, strengths; or the interrupted
epoch's :class:`sdclr.train.state.EpochPosition` restored), :func:`train_epoch` (the step
body), :func:`end_epoch` (records, kNN monitor, diagnostics) and the checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdclr.augment.boost import BoostConfig
from sdclr.augment.ops import Shard
from sdclr.config.derived import boost_preset
from sdclr.data.banks import Images, as_images
from sdclr.errors import TrainingError
from sdclr.eval.monitor import Diagnostics, KnnMonitor, TrainingMonitor
from sdclr.methods.base import Method
from sdclr.models.checkpoint import save_checkpoint
from sdclr.models.contrastive import ContrastiveModel
from sdclr.train.bcl import LossMemory
from sdclr.train.state import EpochPosition, TrainState
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
from sdclr.utils.signals import Interrupted, StopSignal, signal_name


def pretrain(
    cfg,
    model: ContrastiveModel,
    method: Method,
    images: torch.Tensor | Images,
    generator: torch.Generator,
    checkpoints: Checkpointing,
    log=None,
    progress: bool = True,
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
    and every RNG state; they go to ``checkpoints.path`` with ``checkpoints.extra`` beside them,
    and the run continues ``checkpoints.resume_from`` (such a checkpoint) when it is given.
    """
    p = cfg.pretrain
    resume_from = checkpoints.resume_from
    run = start_run(cfg, model, method, as_images(images), generator, resume_from, monitor)
    run.log, run.checkpoints = log, checkpoints
    state = run.state
    position, state.position = state.position, None  # set: the run stopped inside an epoch
    model.train()
    run.started = time.time()
    ddp = wrap_distributed(model, method)
    if run.knn is not None and state.epoch == 0 and not state.knn:
        # the curve's start: the encoder at its random initialisation, before any step. Under
        # torchrun every rank encodes its share of the bank and gets rank 0's result
        # (sdclr.eval.knn), so no rank waits alone for the whole pool's encoding
        run.measure_knn(0)
    bar = progress_bar(
        range(state.epoch, p.epochs),
        desc="pretrain",
        enabled=progress,
        initial=state.epoch,
        total=p.epochs,
    )
    # without a terminal, one line per epoch in place of the bar (and in the job's run.log)
    lines = EpochLines("pretrain", p.epochs, done=state.epoch, enabled=progress and run.rank == 0)
    for index in bar:
        epoch = start_epoch(run, index, position)
        position = None
        lr = train_epoch(run, epoch, ddp, stop)
        epoch_loss = end_epoch(run, epoch, lr, lines)
        bar.set_postfix(loss=f"{epoch_loss:.4f}", lr=f"{lr:.3g}")
        done = index + 1
        last = done == p.epochs
        interrupted = stop is not None and any_rank(stop.requested, run.device)
        if done % cfg.checkpoint.every == 0 or last or interrupted:
            run.save(done)
        if interrupted and not last:
            raise Interrupted(run.interrupt_message(stop.signum, done), stop.signum)
    return pretrain_result(run, resumed=resume_from is not None)


@dataclass(frozen=True)
class Checkpointing:
    """Where a run's checkpoints go (``path``), the keys every one carries beside the
    training state (``extra``: the model spec, the config, ...), and the loaded checkpoint the
    run continues (``resume_from``; None starts afresh)."""

    path: Path
    extra: dict[str, Any] = field(default_factory=dict)
    resume_from: dict[str, Any] | None = None


@dataclass
class Run:
    """One pretraining run: the live objects (their resumable records in ``state``), the
    epoch's global batches, BCL's preset and loss memory (None without ``boost``), the
    monitors, and where it reports (``log``) and checkpoints."""

    cfg: Any
    model: ContrastiveModel
    method: Method
    bank: Images
    generator: torch.Generator
    settings: StepSettings
    opt: torch.optim.Optimizer
    state: TrainState
    batches: list[tuple[int, int]]
    boost: BoostConfig | None = None
    memory: LossMemory | None = None
    knn: KnnMonitor | None = None
    diag: Diagnostics | None = None
    log: Callable[..., None] | None = None
    checkpoints: Checkpointing | None = None
    started: float = 0.0  # time.time() when this process began training

    @property
    def device(self) -> torch.device:
        return self.bank.device

    @property
    def rank(self) -> int:
        return get_rank()

    def seconds(self) -> float:
        """The run's training time so far, the processes before this one included."""
        return self.state.seconds + time.time() - self.started

    def emit(self, record: dict[str, Any], kind: str = "pretrain") -> None:
        if self.log is not None:
            if kind == "pretrain":
                self.log(record, self.state.step)
            else:
                self.log(record, self.state.step, kind)

    def save(self, epoch: int, position: EpochPosition | None = None) -> None:
        """Checkpoint (on rank 0) after ``epoch`` epochs, or inside epoch ``epoch`` (0-based)
        at ``position``."""
        self.state.epoch, self.state.position = epoch, position
        if self.rank != 0:
            return
        payload = self.state.to_payload(
            model=self.model,
            optimizer=self.opt,
            method=self.method,
            memory=self.memory,
            generator=self.generator,
            finished=epoch == self.cfg.pretrain.epochs and position is None,
            seconds=self.seconds(),
        )
        save_checkpoint(self.checkpoints.path, {**payload, **self.checkpoints.extra})

    def measure_knn(self, epochs_done: int) -> float:
        """The kNN monitor's entry after ``epochs_done`` epochs (on every rank, each encoding
        its share of the bank), recorded and logged; returns its accuracy."""
        entry = {"epoch": epochs_done, **self.knn(self.model.backbone)}
        self.state.knn.append(entry)
        self.emit(entry, "knn")
        return entry["acc"]

    def interrupt_message(self, signum: int | None, epoch: int) -> str:
        return _interrupt_message(signum, epoch, self.state.step, self.checkpoints.path)


def start_run(
    cfg,
    model: ContrastiveModel,
    method: Method,
    bank: Images,
    generator: torch.Generator,
    resume_from: dict[str, Any] | None,
    monitor: TrainingMonitor | None,
) -> Run:
    """Set a run up: the model in the run's numerics, the method's own networks, the
    optimiser, BCL's loss memory and the monitors; with ``resume_from``, everything that
    checkpoint restores (its mid-epoch position in ``state.position``)."""
    p = cfg.pretrain
    device, n = bank.device, len(bank)
    settings = step_settings(cfg, device)
    batches = batches_per_epoch(n, p.batch_size, p.drop_last, world_size())
    boost = boost_preset(cfg) if cfg.boost else None
    memory = LossMemory(n, float(cfg.bcl.momentum), device) if boost is not None else None
    knn = monitor.knn if monitor is not None else None
    diag = monitor.diagnostics if monitor is not None else None
    method.track_samples = memory is not None or diag is not None
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
    return Run(
        cfg=cfg,
        model=model,
        method=method,
        bank=bank,
        generator=generator,
        settings=settings,
        opt=opt,
        state=state,
        batches=batches,
        boost=boost,
        memory=memory,
        knn=knn,
        diag=diag,
    )


@dataclass
class Epoch:
    """The epoch in progress: its 0-based ``index``, its order of the dataset (``perm``), the
    first batch to run (0, or where an interrupted epoch stopped), the sum of its batch
    losses so far (on the device), BCL's per-sample strengths, and what its start recorded
    (``density`` None: no pruned branch, or a resumed epoch whose density is recorded)."""

    index: int
    perm: torch.Tensor
    first: int
    loss_sum: torch.Tensor
    strength: torch.Tensor | None
    density: float | None
    temperature: float | None
    started: float  # time.time() at its start

    def capture(self, batch: int, loss_sum: float, diag: Diagnostics | None) -> EpochPosition:
        """The position to resume from before ``batch``; ``loss_sum``: the epoch's loss sum
        so far, averaged over ranks."""
        return EpochPosition(
            batch,
            self.perm.cpu(),
            loss_sum,
            self.strength.cpu() if self.strength is not None else None,
            diag.epoch_state() if diag is not None else None,
        )

    @classmethod
    def restore(
        cls,
        run: Run,
        index: int,
        position: EpochPosition,
        temperature: float | None,
        started: float,
    ) -> Epoch:
        """Epoch ``index`` where it stopped at ``position`` (its mask was restored with the
        checkpoint; its density and temperature are recorded already)."""
        device = run.device
        strength = None
        if run.memory is not None:
            strength = torch.zeros(len(run.bank), device=device)
            if position.strength is not None:
                strength = position.strength.to(device)
        if run.diag is not None and position.class_loss is not None:
            run.diag.load_epoch_state(position.class_loss)
        loss_sum = torch.zeros((), device=device) + position.loss_sum
        perm = position.perm.to(device)
        return cls(index, perm, position.batch, loss_sum, strength, None, temperature, started)


def start_epoch(run: Run, index: int, position: EpochPosition | None = None) -> Epoch:
    """Set the epoch's temperature (constant or scheduled). A fresh epoch recomputes the
    mask, draws the dataset order, fixes BCL's strengths (0 in the first epoch) and clears
    the diagnostics' class losses; an interrupted one (``position``) is restored instead."""
    started = time.time()
    method, state, device, n = run.method, run.state, run.device, len(run.bank)
    temperature = epoch_temperature(run.cfg, index) if method.temperature is not None else None
    if temperature is not None:
        method.temperature = temperature
    if position is not None:
        return Epoch.restore(run, index, position, temperature, started)
    density = method.on_epoch_start(run.model)
    if density is not None:
        state.mask_density.append(density)
    if temperature is not None:
        state.temperatures.append(temperature)
    perm = torch.randperm(n, generator=run.generator, device=run.generator.device).to(device)
    strength = None
    if run.memory is not None:  # BCL: strengths fixed for the epoch, 0 in the first one
        strength = run.memory.strengths() if index > 0 else torch.zeros(n, device=device)
    if run.diag is not None:
        run.diag.reset_epoch()
    loss_sum = torch.zeros((), device=device)
    return Epoch(index, perm, 0, loss_sum, strength, density, temperature, started)


def train_epoch(
    run: Run, epoch: Epoch, ddp: torch.nn.Module | None, stop: StopSignal | None
) -> float:
    """The epoch's steps from ``epoch.first`` on; returns the last step's learning rate. A
    stop signal inside the epoch checkpoints its position and raises
    :class:`sdclr.utils.signals.Interrupted`."""
    cfg, model, method, state, opt = run.cfg, run.model, run.method, run.state, run.opt
    p, batches, device, settings = cfg.pretrain, run.batches, run.device, run.settings
    generator, world, rank = run.generator, world_size(), run.rank
    shard = Shard(rank, world) if world > 1 else None
    total_steps, warmup_steps = len(batches) * p.epochs, len(batches) * p.warmup_epochs
    aug, mean, std = augment_config(cfg.data), list(cfg.data.mean), list(cfg.data.std)
    window_sum, window, lr = torch.zeros((), device=device), 0, p.lr
    idx_batches = [epoch.perm[s:e] for s, e in batches[epoch.first :]]
    # under torchrun each rank decodes and augments only its chunk of the global batch
    local = [i.chunk(world)[rank] for i in idx_batches] if shard else idx_batches
    pending = run.bank.batches(local)
    for b, idx, x in zip(range(epoch.first, len(batches)), idx_batches, pending):
        lr = warmup_cosine(state.step, total_steps, warmup_steps, p.lr, p.min_lr)
        for group in opt.param_groups:
            group["lr"] = lr
        method.set_progress(state.step / total_steps)
        boost = (epoch.strength[idx], run.boost) if run.memory is not None else None
        v1, v2 = make_views(x, aug, generator, mean, std, settings, boost, shard)
        loss = train_step(model, method, opt, v1, v2, settings, ddp)
        if run.memory is not None or run.diag is not None:  # per-sample losses, on the device
            per_sample = gather_samples(method.sample_losses(), world)
            if run.memory is not None:
                run.memory.update(idx, per_sample)
            if run.diag is not None:
                run.diag.add_losses(idx, per_sample)
        epoch.loss_sum += loss
        window_sum += loss
        window += 1
        state.step += 1
        if state.step % p.log_every == 0:
            value = global_mean(window_sum) / window  # the only host sync in the loop
            _check_finite(value, epoch.index, state.step, lr)
            run.emit({"step": state.step, "epoch": epoch.index + 1, "loss": value, "lr": lr})
            window_sum.zero_()
            window = 0
        # ranks agree on stopping at the same step: checked at every step in one process,
        # at the logging steps (which synchronise anyway) under torchrun
        check = stop is not None and (world == 1 or state.step % p.log_every == 0)
        if check and any_rank(stop.requested, device) and b + 1 < len(batches):
            so_far = global_mean(epoch.loss_sum)
            _check_finite(so_far, epoch.index, state.step, lr)
            run.save(epoch.index, epoch.capture(b + 1, so_far, run.diag))
            raise Interrupted(run.interrupt_message(stop.signum, epoch.index), stop.signum)
    return lr


def end_epoch(run: Run, epoch: Epoch, lr: float, lines: EpochLines) -> float:
    """The epoch's record (loss, lr, mask density, temperature, momentum), then where due
    the kNN monitor (on every rank, each encoding its share) and the diagnostics (rank 0),
    and the epoch's line; returns the epoch loss."""
    state, method = run.state, run.method
    epoch_loss = global_mean(epoch.loss_sum) / len(run.batches)
    _check_finite(epoch_loss, epoch.index, state.step, lr)
    train_seconds = time.time() - epoch.started  # the epoch's steps, synchronised by the mean
    state.epoch_losses.append(epoch_loss)
    record = {"epoch": epoch.index + 1, "epoch_loss": epoch_loss, "lr": lr}
    if epoch.density is not None:
        record["mask_density"] = epoch.density
    if epoch.temperature is not None:
        record["temperature"] = epoch.temperature
    if method.momentum is not None:
        record["momentum"] = float(method.momentum)
    run.emit(record)
    done = epoch.index + 1
    knn_acc = None
    if run.knn is not None and run.knn.due(done):
        knn_acc = run.measure_knn(done)
    if run.diag is not None and run.diag.due(done):
        if run.rank == 0:
            entry = run.diag(run.model, method, done)
            state.diagnostics.append(entry)
            run.emit(entry, "diagnostics")
        barrier()
    mask = epoch.density
    if mask is None and state.mask_density:
        mask = state.mask_density[-1]
    images = sum(e - s for s, e in run.batches[epoch.first :])
    lines(done, images, train_seconds, loss=epoch_loss, lr=lr, mask=mask, knn=knn_acc)
    return epoch_loss


def pretrain_result(run: Run, resumed: bool) -> dict[str, Any]:
    """``metrics["pretrain"]``: the schedule, the curves and what ran (numerics, fused
    branches, BCL preset, the kNN monitor and the diagnostics where they ran)."""
    cfg, state, method, settings = run.cfg, run.state, run.method, run.settings
    p = cfg.pretrain
    result: dict[str, Any] = {
        "epochs": p.epochs,
        "steps": state.step,
        "final_loss": state.epoch_losses[-1],
        "epoch_loss": state.epoch_losses,
        "images": len(run.bank),
        "batch_size": p.batch_size,
        "seconds": run.seconds(),
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
    if run.boost is not None:
        result["boost"] = {
            "k": run.boost.k,
            "base": run.boost.base,
            "span": run.boost.span,
            "random_scale": run.boost.random_scale,
            "momentum": float(cfg.bcl.momentum),
        }
    if run.knn is not None:
        result["knn"] = state.knn
    if run.diag is not None:
        result["diagnostics"] = state.diagnostics
    return result


def _interrupt_message(signum: int | None, epoch: int, step: int, path: Path) -> str:
    return (
        f"{signal_name(signum)} received: stopped at epoch {epoch}, step {step}; checkpoint "
        f"written to {path}. Run the same command again (same job directory) to resume"
    )


def _check_finite(value: float, epoch: int, step: int, lr: float) -> None:
    if not math.isfinite(value):
        raise TrainingError(
            f"the loss became {value} at epoch {epoch + 1}, step {step} (lr {lr:.4g}); the "
            f"last good checkpoint is kept. Lower pretrain.lr or check the data"
        )
