"""Speed benchmark: ``python -m sdclr.bench`` (``make bench``) / ``--quick`` (``make bench-quick``).

Measured in one run on whatever device is found (CUDA events on a GPU, perf_counter on CPU),
on CIFAR-10-LT split 1 (D_i, 11,165 images), ResNet-18 with the CIFAR stem, batch 512, with
the suite's own training step (GPU-resident data, batched augmentation, the configured
precision / channels_last / compile):

* pretraining epoch time and views/s for SimCLR and for SDCLR (p90, dual BN), after warm-up;
  SDCLR twice: its two branches as two passes (the default) and as one fused pass of grouped
  convolutions (``fuse_branches=true``);
* the model-only ceiling: forward+backward+SGD of the same backbone and a 2-layer head on a
  random device-resident batch of 2 x batch views in one pass, same numerics; and each method's
  ratio to it;
* ``sdclr_step_over_two_plain``: the SDCLR step (both branches, mask, dual BN, head, loss) on
  ready-made views, over two plain forward+backward passes of the same backbone on the same
  views: the overhead of SDCLR's machinery; ``sdclr_fused_step_over_two_plain`` the same for
  the fused step;
* the augmentation alone: both views of a resident batch, eager and (when the run compiles)
  compiled, in views/s;
* linear-probe time (30 epochs over the 45,000-image pool) and peak memory;
* the 224-px row: images/s of the image-file path (JPEG decoding on the device in batches,
  then both pretraining views with the batched ops at 224 px, protocol.md's ImageNet recipe)
  against a DataLoader + PIL + torchvision.transforms baseline doing the same work in the
  same run with the same number of workers. The JPEGs are real CIFAR-10 images re-encoded at
  varied ImageNet-like sizes (320-500 px), written to a temporary folder.

``--quick`` runs a few steps of each at a small batch on the CPU so it can run anywhere (CI);
epoch and probe times are then extrapolated from the measured steps and marked so.

The warm-up (compilation, cuDNN autotuning, the short last batch's recompile) is timed apart
from the steady state: each method row and the ceiling record ``warmup_seconds`` (wall time
of the warm-up steps), ``first_step_seconds`` and ``compile_seconds`` (the warm-up less as
many steady steps). ``--rows`` picks row groups and ``--methods`` the method rows (SimCLR,
SDCLR p90, fused, the ceiling), each run in the order given; ``--warmup`` / ``--steps`` /
``--probe-epochs`` set repetitions, ``--channels`` narrows the backbone (toy runs), ``--table``
writes the table as Markdown; ``--no-compile`` times the eager step where the default compiles
(CUDA). ``scripts/gpu_check.py`` runs it that way.

Every number is written the moment it is measured: after each row the JSON (and ``--table``)
is rewritten whole (atomically), with ``finished`` false, ``rows_done`` (the rows so far) and
``row_seconds`` (each row's wall time, compile included); a run stopped part-way (a time
limit, SIGTERM, a crash in a later row) leaves the rows it finished. ``setup.load_seconds``
is the start before the first row (config, data, the copy to the device).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from sdclr.augment.ops import ContrastiveAugmentConfig
from sdclr.config.compose import compose_config
from sdclr.config.schema import COMPILE_MODES
from sdclr.config.validate import validate
from sdclr.data.arrays import ImageData, load_arrays
from sdclr.data.banks import FileImages
from sdclr.data.splits import Split, resolve_split
from sdclr.errors import SdclrError
from sdclr.eval.features import EvalSettings
from sdclr.eval.probe import ProbeData, fit_probe
from sdclr.methods.simclr import SimCLR
from sdclr.models.backbone import create_backbone
from sdclr.models.contrastive import build_model
from sdclr.train.step import (
    augment_config,
    batches_per_epoch,
    make_optimizer,
    make_views,
    prepare_model,
    train_step,
)
from sdclr.utils.distributed import resolve_device
from sdclr.utils.io import REPO, write_atomically
from sdclr.utils.memory import keep_freed_memory
from sdclr.utils.precision import StepSettings, autocast, step_settings

# Row groups of ``--rows``: the methods with the model-only ceiling, the step ratio, the
# augmentation alone, the CPU gradient-error check, the linear probe, the 224-px file path.
ROWS = ("methods", "step_ratio", "augmentation", "gradient_error", "probe", "loading_224")

METHOD_ROWS = {
    "simclr": "SimCLR",
    "sdclr_p90": "SDCLR p90 dual-BN",
    "sdclr_p90_fused": "SDCLR p90 dual-BN, fused branches",
}
# the rows of the ``methods`` group (``--methods``): the three methods and the model-only ceiling
METHODS = (*METHOD_ROWS, "ceiling")
EXTRAPOLATED = " (extrapolated)"


class Timer:
    """Wall time of a block; CUDA events when on a GPU (no host sync inside the block)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def measure(self, fn: Callable[[], Any], repeats: int) -> float:
        """Seconds per call of ``fn``, averaged over ``repeats`` calls."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(repeats):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000.0 / repeats
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) / repeats

    def wall(self, fn: Callable[[], Any], repeats: int) -> float:
        """Total wall seconds of ``repeats`` calls, host work included (compilation, which
        happens on the host before any kernel is queued); synchronised on a GPU."""
        sync = torch.cuda.synchronize if self.cuda else (lambda: None)
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        return time.perf_counter() - t0


@dataclass(frozen=True)
class BenchOptions:
    """What the command line asks for; None: the mode's default (``quick`` or full)."""

    quick: bool = False
    device: str = "auto"
    batch_size: int | None = None
    steps: int | None = None  # timed steps per row
    compile: bool | None = None
    compile_mode: str | None = None
    rows: tuple[str, ...] = ROWS
    methods: tuple[str, ...] = METHODS
    warmup: int | None = None
    probe_epochs: int | None = None
    channels: list[int] | None = None


@dataclass
class Bench:
    """What every row reads: the run's config and numerics, the data on the device, the
    sizes and repetitions, the augmentation, the generator and the timer."""

    cfg: DictConfig
    device: torch.device
    settings: StepSettings
    batch: int
    data: ImageData
    split: Split
    images: torch.Tensor  # the training images, on the device
    d_i: torch.Tensor  # split 1's D_i, on the device
    batches: list[tuple[int, int]]  # (start, end) of each batch of an epoch of D_i
    timed_steps: int
    warmup: int
    channels: list[int] | None
    aug: ContrastiveAugmentConfig
    mean: list[float]
    std: list[float]
    gen: torch.Generator
    timer: Timer
    quick: bool
    probe_epochs: int | None
    kept_freed: bool  # the CPU's host allocator keeps freed memory (utils/memory.py)


def load_bench(options: BenchOptions) -> Bench:
    """The config (the defaults at the benchmark's batch and numerics), validated, and the
    data on the device: the context every row reads."""
    quick = options.quick
    device = resolve_device("cpu" if quick and options.device == "auto" else options.device)
    # as the runner does on the CPU (utils/memory.py); SDCLR_DEFAULT_MALLOC=1 times without it
    kept_freed = device.type == "cpu" and keep_freed_memory()
    batch = options.batch_size or (16 if quick else 512)
    overrides = [f"device={device}", f"pretrain.batch_size={batch}"]
    if options.compile is not None:
        overrides.append(f"compile={str(options.compile).lower()}")
    if options.compile_mode is not None:
        overrides.append(f"compile_mode={options.compile_mode}")
    cfg = compose_config(overrides)
    validate(cfg)
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    data = load_arrays(cfg)
    split = resolve_split(cfg.split, cfg.data, data.train_y)
    images = torch.from_numpy(data.train_x).to(device)
    d_i = images[torch.as_tensor(split.D_i, device=device)]
    batches = batches_per_epoch(len(d_i), batch, False)
    return Bench(
        cfg=cfg,
        device=device,
        settings=step_settings(cfg, device),
        batch=batch,
        data=data,
        split=split,
        images=images,
        d_i=d_i,
        batches=batches,
        timed_steps=options.steps or (2 if quick else len(batches)),
        warmup=max(1, options.warmup or (1 if quick else 15)),
        channels=list(options.channels) if options.channels else None,
        aug=augment_config(cfg.data),
        mean=list(cfg.data.mean),
        std=list(cfg.data.std),
        gen=torch.Generator(device=device).manual_seed(0),
        timer=Timer(device),
        quick=quick,
        probe_epochs=options.probe_epochs,
        kept_freed=kept_freed,
    )


def _git(*args: str) -> str | None:
    if REPO is None:  # an installed wheel: no checkout to name a commit of
        return None
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _commit() -> str:
    """The commit benchmarked, marked -dirty when tracked files differ from it."""
    head = _git("rev-parse", "--short", "HEAD")
    if head is None:
        return "unknown"
    return head + ("-dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# --- the rows ---------------------------------------------------------------------------------


def _training_setup(bench: Bench, ratio: float | None, fuse: bool = False) -> tuple:
    """(model, method, optimiser) of SimCLR (``ratio`` None) or SDCLR with dual BN, ResNet-18
    with the CIFAR stem, prepared with the run's numerics, in training mode with its mask."""
    dual = ratio is not None
    model = build_model("resnet18", True, bench.channels, 3 if dual else 2, 128, dual)
    model = model.to(bench.device)
    model = prepare_model(model, bench.settings)
    method = SimCLR(0.2, ratio, 0.0, dual, bench.gen, fuse_branches=fuse)
    with warnings.catch_warnings():  # the fused pass's CPU warning: the table's note says it
        warnings.simplefilter("ignore")
        method.setup(model)
    opt = make_optimizer(model, bench.cfg.pretrain)
    model.train()
    method.on_epoch_start(model)
    return model, method, opt


def _time_method(bench: Bench, ratio: float | None, fuse: bool = False) -> dict[str, Any]:
    """Augmentation + training step, as pretrain() runs them, after warm-up."""
    d_i, batches = bench.d_i, bench.batches
    model, method, opt = _training_setup(bench, ratio, fuse)
    perm = torch.randperm(len(d_i), generator=bench.gen, device=bench.device)
    cursor = [0]

    def step() -> None:
        start, end = batches[cursor[0] % len(batches)]
        cursor[0] += 1
        v1, v2 = make_views(
            d_i[perm[start:end]], bench.aug, bench.gen, bench.mean, bench.std, bench.settings
        )
        train_step(model, method, opt, v1, v2, bench.settings)

    timer = bench.timer
    # warm-up (compilation, cuDNN autotuning) on full batches, then on the epoch's last batch,
    # which may be shorter: its recompile must not land in the timed steps
    first = timer.wall(step, 1)
    rest = timer.wall(step, bench.warmup - 1)
    cursor[0] = len(batches) - 1
    last = timer.wall(step, 1)
    cursor[0] = 0
    per_step = timer.measure(step, bench.timed_steps)
    mask_seconds = timer.measure(lambda: method.on_epoch_start(model), 1) if method.pruned else 0.0
    epoch = per_step * len(batches) + mask_seconds
    return {
        **_warmup_record(first, first + rest + last, bench.warmup + 1, per_step),
        "step_seconds": per_step,
        "epoch_seconds": epoch,
        "views_per_second": 2 * len(d_i) / epoch,
        "mask_seconds": mask_seconds,
        "timed_steps": bench.timed_steps,
        "extrapolated": bench.timed_steps != len(batches),
    }


def _warmup_record(first: float, total: float, steps: int, per_step: float) -> dict[str, Any]:
    """The warm-up apart from the steady state: its wall time, its first step (where
    torch.compile compiles), and what it took beyond as many steady steps."""
    return {
        "warmup_steps": steps,
        "warmup_seconds": total,
        "first_step_seconds": first,
        "compile_seconds": max(0.0, total - steps * per_step),
    }


def _time_ceiling(bench: Bench) -> dict[str, Any]:
    """Forward+backward+SGD of backbone + 2-layer head on random resident views, one pass."""
    device, settings, batch = bench.device, bench.settings, bench.batch
    model = build_model("resnet18", True, bench.channels, 2, 128, False).to(device)
    model = prepare_model(model, settings)
    opt = make_optimizer(model, bench.cfg.pretrain)
    x = torch.randn(2 * batch, 3, 32, 32, device=device).contiguous(
        memory_format=settings.memory_format
    )

    def step() -> None:
        with autocast(device.type, settings.amp_dtype):
            z = nn.functional.normalize(model(x).float(), dim=1)
            loss = (z @ z.t()).logsumexp(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    first = bench.timer.wall(step, 1)
    rest = bench.timer.wall(step, bench.warmup - 1)
    per_step = bench.timer.measure(step, bench.timed_steps)
    return {
        **_warmup_record(first, first + rest, bench.warmup, per_step),
        "step_seconds": per_step,
        "views_per_second": 2 * batch / per_step,
    }


def _plain_backbone(bench: Bench) -> nn.Module:
    """The step ratio's baseline: the bare backbone (no BN pair, mask or head), with the
    run's memory format and compile."""
    settings = bench.settings
    plain = create_backbone("resnet18", True, bench.channels).to(bench.device)
    if settings.channels_last:
        plain.to(memory_format=torch.channels_last)
    if settings.compile:
        plain.compile(mode=settings.compile_mode)
    return plain


def _time_step_ratio(bench: Bench) -> dict[str, float]:
    """SDCLR step on ready-made views over two plain fwd+bwd passes of the same backbone, with
    the branches as two passes and fused."""
    device, settings = bench.device, bench.settings
    steps = {fuse: _training_setup(bench, 0.9, fuse) for fuse in (False, True)}
    v1, v2 = make_views(
        bench.d_i[: bench.batch], bench.aug, bench.gen, bench.mean, bench.std, settings
    )
    plain = _plain_backbone(bench)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)

    def sdclr_step(fuse: bool) -> Callable[[], None]:
        model, method, opt = steps[fuse]
        return lambda: train_step(model, method, opt, v1, v2, settings)

    def two_plain() -> None:
        with autocast(device.type, settings.amp_dtype):
            loss = plain(v1).float().square().mean() + plain(v2).float().square().mean()
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_opt.step()

    timer = bench.timer
    separate, fused = sdclr_step(False), sdclr_step(True)
    for fn in (separate, fused, two_plain):
        timer.measure(fn, bench.warmup)
    sd, fu, tp = [], [], []
    for _ in range(max(2, bench.timed_steps)):  # interleaved: noise hits all alike
        sd.append(timer.measure(separate, 1))
        fu.append(timer.measure(fused, 1))
        tp.append(timer.measure(two_plain, 1))
    two = float(np.median(tp))
    return {
        "sdclr_step_seconds": float(np.median(sd)),
        "sdclr_fused_step_seconds": float(np.median(fu)),
        "two_plain_seconds": two,
        "sdclr_step_over_two_plain": float(np.median(sd)) / two,
        "sdclr_fused_step_over_two_plain": float(np.median(fu)) / two,
    }


def _gradient_error(bench: Bench) -> dict[str, Any]:
    """How far the float32 SDCLR gradients land from float64 ones on this CPU, with the
    branches as two passes and fused: each conv weight's relative gradient error (in norm),
    its median over the convs for either pass, and the largest ratio of the fused pass's
    error to the two passes' in one conv (about 1 where both only round; far above 1 where
    a kernel is inexact). The fused pass's grouped convolutions go through oneDNN, whose
    float32 backward is inexact on some CPUs (model.FUSED_ON_CPU); float64 never uses it."""
    batch = min(bench.batch, 32)  # float64 is slow; the kernels are the same at any batch
    torch.manual_seed(0)
    base = build_model("resnet18", True, bench.channels, 3, 128, True)
    v1, v2 = make_views(
        bench.d_i[:batch].cpu(),
        bench.aug,
        torch.Generator().manual_seed(0),
        bench.mean,
        bench.std,
        bench.settings,
    )

    def conv_grads(dtype: torch.dtype, fuse: bool) -> dict[str, torch.Tensor]:
        model = copy.deepcopy(base).to(dtype).train()
        method = SimCLR(0.2, 0.9, 0.0, True, fuse_branches=fuse)
        with warnings.catch_warnings():  # the fused pass's CPU warning: measured here
            warnings.simplefilter("ignore")
            method.setup(model)
        method.on_epoch_start(model)  # float64 copies of the float32 weights: same mask
        method.loss(model, v1.to(dtype), v2.to(dtype)).backward()
        return {n: p.grad.double() for n, p in model.backbone.named_parameters() if p.dim() == 4}

    exact = conv_grads(torch.float64, False)

    def errors(fuse: bool) -> np.ndarray:
        grads = conv_grads(torch.float32, fuse)
        return np.array([float((grads[n] - g).norm() / g.norm()) for n, g in exact.items()])

    separate, fused = errors(False), errors(True)
    return {
        "images": batch,
        "separate_median": float(np.median(separate)),
        "fused_median": float(np.median(fused)),
        "fused_over_separate_max": float((fused / np.maximum(separate, 1e-30)).max()),
    }


def _time_views(bench: Bench) -> dict[str, Any]:
    """The augmentation alone: both views of a resident batch (draws, crop, jitter, grayscale,
    normalisation), eager and, when the run compiles, compiled; the share of a step it costs
    shows up as the gap between the methods and the model-only ceiling."""
    settings = bench.settings
    x = bench.d_i[: bench.batch]
    out = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        if compiled and not settings.compile:
            continue
        mode = replace(settings, compile=compiled)

        def views(mode=mode) -> None:
            make_views(x, bench.aug, bench.gen, bench.mean, bench.std, mode)

        bench.timer.measure(views, max(2, bench.warmup))
        seconds = bench.timer.measure(views, max(3, bench.timed_steps))
        out[f"{name}_views_per_second"] = 2 * len(x) / seconds
    return out


def _time_probe(bench: Bench) -> dict[str, Any]:
    """The linear probe (30 epochs over the pool); quick: a slice, one epoch, extrapolated;
    ``probe_epochs`` fewer than 30: that many, extrapolated."""
    device, settings, split, data = bench.device, bench.settings, bench.split, bench.data
    model = build_model("resnet18", True, bench.channels, 3, 128, True).to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    cfg = bench.cfg.linear.copy()
    pool, val_idx, test_idx = split.pool, split.val, np.arange(len(data.test_y))
    if bench.quick:
        pool, val_idx, test_idx = pool[: 4 * bench.batch], val_idx[:64], test_idx[:64]
        cfg.epochs = 1
    if bench.probe_epochs is not None:
        cfg.epochs = max(1, min(int(bench.probe_epochs), int(cfg.epochs)))
    cfg.milestones = [m for m in cfg.milestones if m < cfg.epochs]
    images, labels = bench.images, torch.from_numpy(data.train_y).to(device)
    test_images = images.new_tensor(data.test_x[test_idx])
    test_labels = labels.new_tensor(data.test_y[test_idx])
    r = fit_probe(
        model.backbone,
        ProbeData.of(images, labels, pool, val_idx, test_images, test_labels),
        cfg,
        EvalSettings(
            num_classes=10,
            groups={"many": [0], "medium": [1], "few": [2]},
            mean=bench.mean,
            std=bench.std,
            batch_size=int(cfg.eval_batch_size),
            amp_dtype=settings.amp_dtype,
        ),
        torch.Generator(device=device).manual_seed(1),
        progress=False,
    )
    full_epochs = int(bench.cfg.linear.epochs)
    # training epochs scale with pool size x epochs, the one-off val/test features with
    # the number of evaluation images
    train_scale = (len(split.pool) * full_epochs) / (len(pool) * cfg.epochs)
    eval_scale = (len(split.val) + len(data.test_y)) / (len(val_idx) + len(test_idx))
    return {
        "seconds": r["train_seconds"] * train_scale + r["setup_seconds"] * eval_scale,
        "measured_seconds": r["seconds"],
        "images": len(split.pool),
        "epochs": full_epochs,
        "extrapolated": train_scale != 1.0 or eval_scale != 1.0,
    }


class _PilTwoViews(torch.utils.data.Dataset):
    """The baseline: what a reference-style loader does per image, in loader workers."""

    def __init__(self, files: list[Path]):
        from torchvision import transforms as T

        self.files = files
        self.transform = T.Compose(
            [
                T.RandomResizedCrop(
                    224, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC
                ),
                T.RandomHorizontalFlip(),
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
                T.RandomApply([T.GaussianBlur(23, (0.1, 2.0))], p=0.5),
                T.ToTensor(),
                T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            ]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            im = im.convert("RGB")
            return self.transform(im), self.transform(im)


def _write_jpegs(images: np.ndarray, folder: Path, seed: int = 0) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    files = []
    for i, img in enumerate(images):
        w, h = (int(v) for v in rng.integers(320, 501, size=2))
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(img.transpose(1, 2, 0)).resize((w, h), Image.BICUBIC).save(path, quality=90)
        files.append(path)
    return files


def _time_loading_224(bench: Bench) -> dict[str, Any]:
    """Images/s of the 224-px loading + two-view augmentation: suite vs DataLoader + PIL."""
    device = bench.device
    n, batch = (32, 16) if bench.quick else (2048, 256)
    workers = min(8, os.cpu_count() or 1)
    aug = ContrastiveAugmentConfig(size=224, scale=(0.08, 1.0), blur_p=0.5)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory(prefix="sdclr-bench-224-") as tmp:
        files = _write_jpegs(bench.data.train_x[:n], Path(tmp))
        bank = FileImages(Path(tmp), [f.name for f in files], device, workers)
        idx = [torch.arange(s, min(s + batch, n)) for s in range(0, n, batch)]

        def suite_pass() -> None:
            for x in bank.batches(idx):
                make_views(x, aug, bench.gen, bench.mean, bench.std, bench.settings)

        def baseline_pass() -> None:
            loader = torch.utils.data.DataLoader(
                _PilTwoViews(files),
                batch_size=batch,
                shuffle=True,
                num_workers=workers,
                pin_memory=device.type == "cuda",
            )
            for v1, v2 in loader:
                v1.to(device, non_blocking=True), v2.to(device, non_blocking=True)

        out = {}
        for name, fn in (("suite", suite_pass), ("dataloader_pil", baseline_pass)):
            fn()  # warm-up: worker start, decoder initialisation, file cache
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            out[name] = n / (time.perf_counter() - t0)
    return {
        "images": n,
        "batch_size": batch,
        "workers": workers,
        "decoder": "nvJPEG on the GPU" if device.type == "cuda" else "CPU loader workers",
        "suite_images_per_second": out["suite"],
        "dataloader_pil_images_per_second": out["dataloader_pil"],
        "speedup": out["suite"] / out["dataloader_pil"],
    }


@dataclass(frozen=True)
class Row:
    """One row of the run: what measures it, and where its numbers go in the JSON."""

    measure: Callable[[Bench], dict[str, Any]]
    key: str | None  # its entry in the results; None: its numbers go to the top level
    compiles: bool = True  # dynamo's graph cache cleared first, its recompile limit watched
    cpu_only: bool = False  # skipped on a GPU (whose kernels are other ones)


#: Every row, by its name in ``--methods`` (the method rows) or ``--rows`` (the other groups).
ROW_TABLE: dict[str, Row] = {
    "simclr": Row(lambda b: _time_method(b, None), "simclr"),
    "sdclr_p90": Row(lambda b: _time_method(b, 0.9), "sdclr_p90"),
    "sdclr_p90_fused": Row(lambda b: _time_method(b, 0.9, fuse=True), "sdclr_p90_fused"),
    "ceiling": Row(_time_ceiling, "ceiling"),
    "step_ratio": Row(_time_step_ratio, None),
    "augmentation": Row(_time_views, "augmentation"),
    "gradient_error": Row(_gradient_error, "gradient_error", compiles=False, cpu_only=True),
    "probe": Row(_time_probe, "linear_probe", compiles=False),
    "loading_224": Row(_time_loading_224, "loading_224"),
}
assert set(ROW_TABLE) == set(METHODS) | (set(ROWS) - {"methods"})


def row_plan(rows: tuple[str, ...], methods: tuple[str, ...], device: torch.device) -> list[str]:
    """The rows to run, in order: each group of ``rows``, the ``methods`` group as its method
    rows; the CPU-only rows left out on a GPU."""
    names = [n for group in rows for n in (methods if group == "methods" else (group,))]
    return [n for n in names if not (ROW_TABLE[n].cpu_only and device.type != "cpu")]


def _recompile_limit_hit() -> bool:
    """Whether dynamo gave up compiling some frame since the last reset (it then runs eager
    with only a warning), as far as its counters tell."""
    from torch._dynamo.utils import counters

    return any("recompile" in str(reason).lower() for reason in counters["unimplemented"])


def _measure(bench: Bench, name: str, results: dict[str, Any]) -> None:
    """Run one row and store its numbers. Every row compiles its own models; dynamo's graph
    cache is per code object (timm's ResNet.forward for all of them), so it is cleared
    between rows: otherwise the later rows could reach the recompile limit and silently run
    eager."""
    row = ROW_TABLE[name]
    fresh = row.compiles and bench.settings.compile
    if fresh:
        from torch._dynamo.utils import counters

        torch._dynamo.reset()  # the graphs; the counters it leaves, so clear what is read
        counters["unimplemented"].clear()
    out = row.measure(bench)
    if fresh and _recompile_limit_hit():
        results["recompile_limit_hit"].append(name)
    if row.key is None:
        results.update(out)
    else:
        results[row.key] = out
    if name in METHODS:
        _ceiling_fractions(results)


def _ceiling_fractions(results: dict[str, Any]) -> None:
    """Each method row's views/s over the model-only ceiling's, once both are in."""
    if "ceiling" in results:
        for name in METHOD_ROWS:
            if name in results:
                results[name]["fraction_of_ceiling"] = (
                    results[name]["views_per_second"] / results["ceiling"]["views_per_second"]
                )


def _setup_record(bench: Bench, options: BenchOptions, load_seconds: float) -> dict[str, Any]:
    """The results before the first row: a JSON written after it already says what ran."""
    settings, rows = bench.settings, options.rows
    return {
        "setup": {
            "device": _device_name(bench.device),
            "device_type": bench.device.type,
            "torch": torch.__version__,
            "commit": _commit(),
            "batch_size": bench.batch,
            "images": len(bench.d_i),
            "steps_per_epoch": len(bench.batches),
            "precision": "bf16" if settings.amp_dtype else "fp32",
            "channels_last": settings.channels_last,
            "host_malloc": "keeps freed memory" if bench.kept_freed else "default",
            "compile": settings.compile,
            "compile_mode": settings.compile_mode,
            "quick": options.quick,
            "rows": list(rows),
            "methods": list(options.methods) if "methods" in rows else [],
            "warmup_steps": bench.warmup,
            "timed_steps": bench.timed_steps,
            "channels": bench.channels,
            # config, data decoding (or its cache) and the copy to the device
            "load_seconds": load_seconds,
            "command": "python -m sdclr.bench " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        "finished": False,
        "rows_done": [],  # the rows measured so far, in the order they finished
        "row_seconds": {},  # each row's wall time: building, compiling, warm-up, timing
        "recompile_limit_hit": [],  # rows in which dynamo fell back to eager anyway
    }


def _check_choices(rows: tuple[str, ...], methods: tuple[str, ...]) -> None:
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise ValueError(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    if set(methods) - set(METHODS):
        raise ValueError(
            f"unknown methods {sorted(set(methods) - set(METHODS))}; choose from {METHODS}"
        )


def run_benchmark(
    options: BenchOptions, on_row: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """The benchmark's results (the JSON); ``options.rows``: which row groups of
    :data:`ROWS`, run in the order given; ``options.methods``: which rows of the ``methods``
    group (:data:`METHODS`), in the order given. ``on_row`` receives the results so far after
    every finished row (with ``finished`` false until the last), so a run stopped part-way
    still leaves its numbers."""
    _check_choices(options.rows, options.methods)
    t_start = time.perf_counter()
    bench = load_bench(options)
    if options.compile_mode is not None and not bench.settings.compile:
        print(
            f"note: --compile-mode {options.compile_mode} has no effect: torch.compile is off "
            f"here (add --compile)",
            file=sys.stderr,
        )
    results = _setup_record(bench, options, time.perf_counter() - t_start)
    for name in row_plan(options.rows, options.methods, bench.device):
        t0 = time.perf_counter()
        _measure(bench, name, results)
        results["rows_done"].append(name)
        results["row_seconds"][name] = time.perf_counter() - t0
        results["peak_memory_mb"] = _peak_memory_mb(bench.device)
        if on_row is not None:
            on_row(results)
    results["peak_memory_mb"] = _peak_memory_mb(bench.device)
    results["finished"] = True
    return results


# --- the table ------------------------------------------------------------------------------


def _method_lines(r: dict[str, Any]) -> list[str]:
    """Whichever method rows ran (all of them, or those finished so far in a partial file),
    the ceiling, and each one's warm-up."""
    lines = []
    present = [(n, label) for n, label in METHOD_ROWS.items() if n in r]
    for name, label in present:
        m = r[name]
        lines += [
            f"| {label}: epoch seconds{EXTRAPOLATED if m['extrapolated'] else ''} | "
            f"{m['epoch_seconds']:.3f} |",
            f"| {label}: views/s | {m['views_per_second']:,.0f} |",
        ]
        if "fraction_of_ceiling" in m:
            lines.append(
                f"| {label}: fraction of model-only ceiling | {m['fraction_of_ceiling']:.2f} |"
            )
    if "ceiling" in r:
        present.append(("ceiling", "model-only ceiling"))
        lines.append(f"| model-only ceiling: views/s | {r['ceiling']['views_per_second']:,.0f} |")
    for name, label in present:
        m = r[name]
        lines.append(
            f"| {label}: warm-up, {m['warmup_steps']} steps (first step; beyond "
            f"steady state): seconds | {m['warmup_seconds']:.1f} "
            f"({m['first_step_seconds']:.1f}; {m['compile_seconds']:.1f}) |"
        )
    return lines


def _step_ratio_lines(r: dict[str, Any]) -> list[str]:
    if "sdclr_step_over_two_plain" not in r:
        return []
    return [
        f"| SDCLR step over two plain fwd+bwd passes | {r['sdclr_step_over_two_plain']:.3f} |",
        f"| SDCLR fused step over two plain fwd+bwd passes | "
        f"{r['sdclr_fused_step_over_two_plain']:.3f} |",
    ]


def _gradient_error_lines(r: dict[str, Any]) -> list[str]:
    if not (ge := r.get("gradient_error")):
        return []
    return [
        f"| SDCLR conv-weight gradients vs float64 ({ge['images']} images, CPU): "
        f"median relative error, two passes / fused | "
        f"{ge['separate_median']:.1e} / {ge['fused_median']:.1e} |",
        f"| the same: largest ratio of the fused to the two-pass error in one conv | "
        f"{ge['fused_over_separate_max']:.1f} |",
    ]


def _augmentation_lines(r: dict[str, Any]) -> list[str]:
    return [
        f"| augmentation alone, two views ({mode}): views/s | {v:,.0f} |"
        for mode in ("eager", "compiled")
        if (v := r.get("augmentation", {}).get(f"{mode}_views_per_second")) is not None
    ]


def _probe_lines(r: dict[str, Any]) -> list[str]:
    if not (lp := r.get("linear_probe")):
        return []
    return [
        f"| linear probe, {lp['epochs']} epochs x {lp['images']} images: seconds"
        f"{EXTRAPOLATED if lp['extrapolated'] else ''} | {lp['seconds']:.1f} |"
    ]


def _memory_lines(r: dict[str, Any]) -> list[str]:
    where = "device" if r["setup"]["device_type"] == "cuda" else "host RSS"
    return [f"| peak {where} memory (MiB) | {r['peak_memory_mb']:,.0f} |"]


def _loading_224_lines(r: dict[str, Any]) -> list[str]:
    if not (ld := r.get("loading_224")):
        return []
    return [
        f"| 224 px loading + 2 views, suite ({ld['decoder']}): images/s | "
        f"{ld['suite_images_per_second']:,.0f} |",
        f"| 224 px loading + 2 views, DataLoader + PIL ({ld['workers']} workers): images/s | "
        f"{ld['dataloader_pil_images_per_second']:,.0f} |",
        f"| 224 px loading: suite over baseline | {ld['speedup']:.2f} |",
    ]


#: The table's lines, in the printed order: each row group's formatter (the peak memory
#: between the probe and the 224-px rows).
FORMATTERS: tuple[Callable[[dict[str, Any]], list[str]], ...] = (
    _method_lines,
    _step_ratio_lines,
    _gradient_error_lines,
    _augmentation_lines,
    _probe_lines,
    _memory_lines,
    _loading_224_lines,
)


def _header(s: dict[str, Any]) -> list[str]:
    """What ran: the device, versions and numerics; the data, model and batch."""
    widths = f" (stage widths {s['channels']})" if s.get("channels") else ""
    return [
        f"sdclr benchmark: {s['device']}, torch {s['torch']}, commit {s['commit']}, "
        f"{s['precision']}, channels_last={s['channels_last']}, compile={s['compile']}"
        + (f" ({s['compile_mode']})" if s["compile"] else "")
        + (
            f", host malloc {s['host_malloc']}"
            if "host_malloc" in s and s["device_type"] == "cpu"
            else ""
        ),
        f"CIFAR-10-LT split 1 D_i ({s['images']} images), ResNet-18 CIFAR stem{widths}, batch "
        f"{s['batch_size']} ({s['steps_per_epoch']} steps/epoch)"
        + (", QUICK: a few steps, epoch times extrapolated" if s["quick"] else ""),
    ]


def _notes(r: dict[str, Any]) -> list[str]:
    """Below the table: the fused branches on a CPU, a partial file, a recompile limit."""
    s, lines = r["setup"], []
    if s["device_type"] == "cpu" and "sdclr_p90_fused" in r:
        lines += [
            "",
            "note: the fused branches are a CUDA speed option. On a CPU their grouped "
            "convolutions go through oneDNN, whose float32 backward is inexact on some CPUs "
            "(see the gradient-error row); their time here says nothing about a GPU.",
        ]
    if not r.get("finished", True):
        planned = [*s.get("methods", []), *(g for g in s["rows"] if g != "methods")]
        lines += [
            "",
            f"PARTIAL: {len(r.get('rows_done', []))} of {len(planned)} rows measured so far "
            f"({', '.join(r.get('rows_done', [])) or 'none'}); the run stopped or is running",
        ]
    if r.get("recompile_limit_hit"):
        lines += [
            "",
            "WARNING: dynamo reached its recompile limit in "
            + ", ".join(r["recompile_limit_hit"])
            + ": parts of those rows ran uncompiled",
        ]
    return lines


def format_table(r: dict[str, Any], json_path: Path) -> str:
    """The printed table (Markdown), with the rows that were run."""
    lines = [*_header(r["setup"]), "", "| measurement | value |", "|---|---:|"]
    for formatter in FORMATTERS:
        lines += formatter(r)
    lines += [*_notes(r), "", f"JSON: {json_path}"]
    return "\n".join(lines)


# --- the command ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sdclr.bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few steps at batch 32 on the CPU (runs anywhere)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps per method (default: one epoch; quick: 3)",
    )
    compile_ = parser.add_mutually_exclusive_group()
    compile_.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    compile_.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile even where the default is off (the CPU, quick mode included)",
    )
    parser.add_argument(
        "--compile-mode",
        default=None,
        choices=COMPILE_MODES,
        help="torch.compile mode of the model: default | reduce-overhead (CUDA graphs) | "
        "max-autotune | max-autotune-no-cudagraphs",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up steps per row before timing (default 15; quick: 1)",
    )
    parser.add_argument(
        "--rows",
        default="all",
        help=f"comma-separated row groups to run: all, or some of {', '.join(ROWS)}",
    )
    parser.add_argument(
        "--methods",
        default="all",
        help=f"with the methods rows: comma-separated, run in this order: all, or some of "
        f"{', '.join(METHODS)}",
    )
    parser.add_argument(
        "--probe-epochs",
        type=int,
        default=None,
        help="linear-probe epochs actually run (fewer than 30: the 30-epoch time is extrapolated)",
    )
    parser.add_argument(
        "--channels",
        default=None,
        help="comma-separated ResNet-18 stage widths for every row (toy runs, e.g. 8,16,32,64)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument(
        "--table", type=Path, default=None, help="also write the printed table to this file"
    )
    return parser


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` whole: a reader (or a kill) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: tmp.write_text(text))


def parse_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> BenchOptions:
    """The parsed command line as :class:`BenchOptions` (a bad ``--rows`` / ``--methods`` /
    ``--channels`` stops with the parser's usage error)."""
    rows = ROWS if args.rows == "all" else tuple(r.strip() for r in args.rows.split(",") if r)
    if set(rows) - set(ROWS):
        parser.error(f"--rows: unknown {sorted(set(rows) - set(ROWS))}; choose from {ROWS}")
    methods = (
        METHODS
        if args.methods == "all"
        else tuple(m.strip() for m in args.methods.split(",") if m.strip())
    )
    if set(methods) - set(METHODS) or not methods:
        parser.error(f"--methods: some of {', '.join(METHODS)}, not {args.methods!r}")
    try:
        channels = [int(c) for c in args.channels.split(",")] if args.channels else None
    except ValueError:
        parser.error(f"--channels: comma-separated integers, not {args.channels!r}")
    return BenchOptions(
        quick=args.quick,
        device=args.device,
        batch_size=args.batch_size,
        steps=args.steps,
        compile=False if args.no_compile else (True if args.compile else None),
        compile_mode=args.compile_mode,
        rows=rows,
        methods=methods,
        warmup=args.warmup,
        probe_epochs=args.probe_epochs,
        channels=channels,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    options = parse_options(parser, args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    paths: dict[str, Path] = {}

    def write(r: dict[str, Any]) -> None:
        """The JSON (and the table) rewritten whole after every row: a run stopped part-way
        (a time limit, SIGTERM, a crash in a later row) leaves the rows it finished."""
        if "out" not in paths:  # the default name needs the device, known once it started
            paths["out"] = args.out or (REPO or Path()) / "outputs" / "bench" / (
                f"bench-{r['setup']['device_type']}{'-quick' if args.quick else ''}-{stamp}.json"
            )
        _write_atomic(paths["out"], json.dumps(r, indent=2))
        if args.table:
            _write_atomic(args.table, format_table(r, paths["out"]) + "\n")

    try:
        r = run_benchmark(options, on_row=write)
    except SdclrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write(r)
    print(format_table(r, paths["out"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
