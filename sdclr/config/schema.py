"""Configuration schema: dataclasses registered in Hydra's ConfigStore.

The YAML files under ``conf/`` only choose values; every key must exist here, so a typo in
an override (``pretrain.epoch=5``) fails at composition instead of being silently ignored.
Range checks that OmegaConf's type system cannot express live in :func:`validate`, which the
runner calls before any work starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from sdclr.errors import ConfigError


@dataclass
class ListsConfig:
    """List files of ``relative/path label`` lines (relative to data.root, or absolute).
    All null: the lists are generated from the image folder and saved under splits/."""

    pool: str | None = None  # the linear probe's training images (balanced)
    val: str | None = None  # null with other lists given: carved from pool (val_per_class)
    test: str | None = None
    D_i: str | None = None  # long-tailed pretraining set
    D_b: str | None = None  # balanced control of the same size
    S_b: str | None = None  # few-shot probe set


@dataclass
class DataConfig:
    name: str = MISSING
    # Where the dataset lives: a directory (torchvision CIFAR batches, an image-folder tree
    # with train/ and test/, or a directory holding <archive>), or an image-folder .tar.gz.
    root: str = "${oc.env:SDCLR_DATA,./data}"
    format: str = "auto"  # auto | torchvision | folder | lists
    archive: str | None = None  # file name of an image-folder .tar.gz looked for inside root
    # A .npy of the training labels in the dataset's original order. With it, an image-folder
    # copy is put in that order, so index files made for the original dataset apply.
    order_labels: str | None = None
    download: bool = False
    num_classes: int | None = MISSING  # null: from the data (image folders, list files)
    image_size: int = 32
    train_per_class: int | None = None  # images per class in the full training set (CIFAR)
    # Deterministic class-stratified subsample of every subset and of the test set.
    fraction: float = 1.0
    cache_dir: str = "${oc.env:SDCLR_CACHE,.cache/sdclr}"
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    # Split profile (protocol.md section 3).
    val_per_class: int = MISSING
    imbalance_factor: float = 100.0
    fewshot_per_class: int = MISSING
    # Pretraining augmentation: RandomResizedCrop scale range and Gaussian-blur probability.
    crop_scale: list[float] = field(default_factory=lambda: [0.1, 1.0])
    blur_p: float = 0.0
    # Many/Medium/Few: "thirds" of the classes ranked by D_i count (CIFAR), or "thresholds"
    # (Many > 100 images, Few < 20; ImageNet-style data).
    group_scheme: str = "thirds"
    # --- image files (ImageNet-style data, your own folders) -----------------------------
    # memory: decode every image once into one uint8 array (CIFAR; images of one size, or
    # resized to cache_size); stream: decode per batch (GPU JPEG decoder on CUDA, loader
    # workers on CPU). stream, cache_size or format=lists selects the image-file path.
    decode: str = "memory"
    cache_size: int | None = None  # memory decode of varied sizes: shorter side, centre square
    workers: int | None = None  # CPU decode workers (null: min(8, cores))
    train_dir: str = "train"  # <root>/<train_dir>/<class>/* (or <root>/<class>/* without it)
    test_dir: str = "test"  # a test folder next to it (ImageNet: val); without it, carve one
    test_per_class: int = 0  # test images carved per class when there is no test folder
    class_list: str | None = None  # file of class folder names to use (e.g. ImageNet-100)
    lists: ListsConfig = field(default_factory=ListsConfig)
    # D_i profile of generated lists: exp (imbalance head/tail), pareto, or none (keep the
    # folder's own counts); head_count null = the smallest class pool (CIFAR rule).
    profile: str = "exp"
    head_count: int | None = None
    tail_count: int | None = None
    pareto_exponent: float = 3.0
    # probes: pad (pad-4 crop + flip, CIFAR) or resized (RandomResizedCrop + flip, ImageNet);
    # evaluation images: Resize(eval_resize) + CenterCrop(image_size), null = as they are
    probe_crop: str = "pad"
    eval_resize: int | None = None


@dataclass
class SplitConfig:
    index: int = 1
    pretrain_set: str = "D_i"  # D_i (long-tailed) | D_b (balanced control)
    source: str = "generated"  # generated (splits/<data>/split<i>.npz) | official | file
    file: str | None = None  # with source=file: an .npz written by `python -m sdclr.splits`
    official_dir: str | None = None  # with source=official: dir of the reference .npy files
    dir: str | None = None  # where generated splits / lists live (null: the repo's splits/)


@dataclass
class BackboneConfig:
    name: str = "resnet18"  # any timm ResNet
    cifar_stem: bool | None = None  # None: on for images <= 64 px
    channels: list[int] | None = None  # timm ResNet stage widths; None keeps the model's own


@dataclass
class HeadConfig:
    depth: int | None = None  # None: 2 for SimCLR, 3 for SDCLR (as published)
    out_dim: int = 128


@dataclass
class PruneConfig:
    ratio: float | None = None  # None: no pruned branch (SimCLR)
    random_ratio: float = 0.0  # part of the pruned fraction removed at random, not by magnitude


@dataclass
class BNConfig:
    mode: str = "auto"  # auto (dual for SDCLR, shared for SimCLR) | dual | shared


@dataclass
class MethodConfig:
    """The two-branch method (``conf/method/*.yaml``); a prune ratio adds SDCLR's pruned
    self-competitor to any of them."""

    name: str = "simclr"  # simclr (SimCLR / SDCLR) | moco (MoCo v2) | byol
    # moco, byol: EMA of the key / target network, key = m * key + (1 - m) * online
    momentum: float = 0.99
    cosine_momentum: bool = False  # raise the momentum to 1 along a half cosine (BYOL)
    # moco: negatives queue, symmetric loss (both views as queries; needed with a pruned
    # branch), MoCHi hard-negative mixing (Kalantidis et al. 2020)
    queue_size: int = 4096
    symmetric: bool = True
    mochi: bool = False
    mochi_n: int = 1024  # hardest queue negatives to mix from
    mochi_s: int = 1024  # synthetic negatives mixed from two of them
    mochi_s_prime: int = 256  # synthetic negatives mixed with the query
    # byol: hidden width of the predictor MLP
    predictor_hidden: int = 512


@dataclass
class LossConfig:
    """Contrastive loss of the simclr method (``conf/loss/*.yaml``)."""

    name: str = "ntxent"  # ntxent | debiased (Chuang et al. 2020) | hard (Robinson et al. 2021)
    tau_plus: float = 0.1  # class prior of a negative sharing the anchor's class (debiased, hard)
    beta: float = 1.0  # hard-negative concentration (hard; 0 = debiased)


@dataclass
class TemperatureConfig:
    # constant: pretrain.temperature; cosine: t_min + (t_max - t_min)(1 + cos(2 pi e / period))/2
    # at 0-based epoch e (Kukleva et al. 2023)
    schedule: str = "constant"
    t_min: float = 0.1
    t_max: float = 1.0
    period: float = 400.0


@dataclass
class BCLConfig:
    """Boosted contrastive learning (``boost=true``; Zhou et al. 2022). null: the preset of
    the method (pruned branch: k=2, magnitude 5 + 25 s U(0,1); otherwise k=1, 10 + 20 s)."""

    momentum: float = 0.97  # EMA of each sample's contrastive loss
    k: int | None = None  # RandAugment ops per sample
    base: float | None = None  # magnitude at strength 0 (0..30 scale)
    span: float | None = None  # magnitude added at strength 1
    random_scale: bool | None = None  # scale the span by U(0, 1) per sample


@dataclass
class MonitorConfig:
    """What is measured during pretraining without changing it."""

    # weighted kNN (probe pool as bank, test set as queries) every N epochs; 0 = off
    knn_every: int = 50
    knn_k: int = 200
    knn_t: float = 0.1
    batch_size: int = 512  # images per forward of the kNN monitor and the diagnostics
    # per-class dense/pruned disagreement, per-class loss share, per-layer mask density;
    # null = on for runs with a pruned branch (and labels)
    diagnostics: bool | None = None
    diagnostics_every: int = 1
    diagnostics_per_class: int | None = None  # null: max(8, 640 // classes) images per class


@dataclass
class PretrainConfig:
    epochs: int = 2000
    batch_size: int = 512
    lr: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 10
    min_lr: float = 1e-6
    temperature: float = 0.2
    # The reference keeps the last partial batch; a remainder of one image is always dropped
    # because batch norm cannot normalise a single sample.
    drop_last: bool = False
    log_every: int = 20  # steps between reading the device-side loss accumulator


@dataclass
class ProbeConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 30.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: list[int] = field(default_factory=lambda: [10, 20])
    gamma: float = 0.1
    augment: bool = True  # pad-4 random crop + flip on the probe's training images
    eval_batch_size: int = 512


@dataclass
class StageConfig:
    name: str = "all"  # pretrain | linear | fewshot | all
    checkpoint: str | None = None  # a pretrain checkpoint to evaluate (linear / fewshot)


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "sdclr"
    entity: str | None = None
    mode: str = "auto"  # auto (offline without an API key) | online | offline | disabled
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    dir: str | None = None  # default: the job directory


@dataclass
class CheckpointConfig:
    every: int = 100  # epochs between pretraining checkpoints (and always at the end)


@dataclass
class ResumeConfig:
    # A job directory to continue (default: this job's own directory, which resumes
    # automatically when it already holds a checkpoint).
    path: str | None = None
    force: bool = False  # continue even if result-affecting config keys differ


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    bn: BNConfig = field(default_factory=BNConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)
    boost: bool = False  # BCL boosted augmentation (settings under bcl)
    bcl: BCLConfig = field(default_factory=BCLConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    linear: ProbeConfig = field(default_factory=ProbeConfig)
    fewshot: ProbeConfig = field(
        default_factory=lambda: ProbeConfig(epochs=100, milestones=[40, 60])
    )
    stage: StageConfig = field(default_factory=StageConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Step numerics; null/auto = by device: bf16 autocast, channels_last and torch.compile on
    # CUDA (compile not under torchrun), float32 without compile on CPU.
    precision: str = "auto"  # auto | fp32 | bf16
    channels_last: bool | None = None
    compile: bool | None = None
    # torch.compile's mode for the model: default | reduce-overhead (CUDA graphs) |
    # max-autotune | max-autotune-no-cudagraphs
    compile_mode: str = "default"
    # SDCLR's dense and pruned branches as one pass of grouped convolutions (same outputs and
    # gradients, one launch of each backbone kernel instead of two); needs dual BN and a
    # single process
    fuse_branches: bool = False
    seed: int = 0
    debug: bool = False  # show tracebacks for handled errors
    smoke: bool = False  # marks a deliberately tiny run (printed with the results)


def register_configs() -> None:
    """Register the schema so ``conf/config.yaml`` can extend it, and the ``method_slug``
    resolver used in output directory names (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="sdclr_schema", node=Config)
    OmegaConf.register_new_resolver("method_slug", _slug, replace=True)
    OmegaConf.register_new_resolver("sdclr_now", _run_time, replace=True)
    OmegaConf.register_new_resolver("sdclr_if_pruned", _if_pruned, replace=True)


def _if_pruned(ratio: float | None, pruned: Any, dense: Any) -> Any:
    """``${sdclr_if_pruned:${prune.ratio},a,b}``: a for SDCLR, b for SimCLR (e.g. the
    ImageNet-100 temperature, 0.3 for SDCLR and 0.2 for SimCLR)."""
    return dense if ratio is None else pruned


def _run_time(fmt: str) -> str:
    """Like Hydra's ``now``, but every torchrun rank gets rank 0's start time (the runner
    shares it in SDCLR_RUN_TIME), so all ranks agree on the job directory."""
    import os
    from datetime import datetime

    shared = os.environ.get("SDCLR_RUN_TIME")
    return (datetime.fromisoformat(shared) if shared else datetime.now()).strftime(fmt)


METHODS = ("simclr", "moco", "byol")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
METHOD_NAMES = {"simclr": "SimCLR", "moco": "MoCo v2", "byol": "BYOL"}


def _slug(ratio: float | None, method: str = "simclr") -> str:
    """``simclr``, ``sdclr-p90`` (the simclr method with a pruned branch), ``moco``,
    ``moco-p30``, ``byol``, ``byol-p90``."""
    if method == "simclr":
        return "simclr" if ratio is None else f"sdclr-p{round(100 * float(ratio)):02d}"
    return method if ratio is None else f"{method}-p{round(100 * float(ratio)):02d}"


_slug_from_ratio = _slug  # the resolver's name before methods were a config group


# --- derived settings -------------------------------------------------------------------


def is_sdclr(cfg: DictConfig | Config) -> bool:
    return cfg.prune.ratio is not None


def bn_mode(cfg: DictConfig | Config) -> str:
    if cfg.bn.mode == "auto":
        return "dual" if is_sdclr(cfg) else "shared"
    return cfg.bn.mode


def head_depth(cfg: DictConfig | Config) -> int:
    if cfg.head.depth is not None:
        return int(cfg.head.depth)
    return 3 if is_sdclr(cfg) else 2


def uses_files(cfg: DictConfig | Config) -> bool:
    """Image-file datasets (catalogue of files + lists) rather than one decoded array."""
    d = cfg.data
    return d.format == "lists" or d.decode == "stream" or d.cache_size is not None


def cifar_stem(cfg: DictConfig | Config) -> bool:
    if cfg.backbone.cifar_stem is not None:
        return bool(cfg.backbone.cifar_stem)
    return int(cfg.data.image_size) <= 64


def method_name(cfg: DictConfig | Config) -> str:
    return str(cfg.method.name)


def method_title(cfg: DictConfig | Config) -> str:
    """``SimCLR``, ``SDCLR``, ``MoCo v2``, ``MoCo v2 + SDCLR``, ``BYOL``, ``BYOL + SDCLR``."""
    name = method_name(cfg)
    if name == "simclr":
        return "SDCLR" if is_sdclr(cfg) else "SimCLR"
    base = METHOD_NAMES.get(name, name)
    return f"{base} + SDCLR" if is_sdclr(cfg) else base


def boost_preset(cfg: DictConfig | Config):
    """The BCL :class:`sdclr.augment.boost.BoostConfig`: the method's preset (SDCLR's with a pruned
    branch, SimCLR's without), with any ``bcl.*`` value that is set replacing its field."""
    from sdclr.augment.boost import BoostConfig

    preset = BoostConfig.for_sdclr() if is_sdclr(cfg) else BoostConfig.for_simclr()
    b = cfg.bcl
    return BoostConfig(
        k=int(b.k) if b.k is not None else preset.k,
        base=float(b.base) if b.base is not None else preset.base,
        span=float(b.span) if b.span is not None else preset.span,
        random_scale=bool(b.random_scale) if b.random_scale is not None else preset.random_scale,
    )


def diagnostics_on(cfg: DictConfig | Config) -> bool:
    """``monitor.diagnostics``, where null means: on for runs with a pruned branch."""
    if cfg.monitor.diagnostics is None:
        return is_sdclr(cfg)
    return bool(cfg.monitor.diagnostics)


def method_label(cfg: DictConfig | Config) -> str:
    """Human-readable recipe name used to group runs in reports: the method, its prune
    ratio, BN and head, then every option that changes the result and is not the default."""
    name = method_name(cfg)
    if name == "simclr" and is_sdclr(cfg):
        title = f"SDCLR p={cfg.prune.ratio:g}"
    elif name == "simclr":
        title = "SimCLR"
    else:
        title = METHOD_NAMES.get(name, name)
        if is_sdclr(cfg):
            title += f" + SDCLR p={cfg.prune.ratio:g}"
    if is_sdclr(cfg) and cfg.prune.random_ratio:
        title += f" rand={cfg.prune.random_ratio:g}"
    parts = [title, f"{bn_mode(cfg)}-BN", f"head{head_depth(cfg)}"]
    if name != "byol" and cfg.loss.name == "debiased":
        parts.append(f"debiased(tau+={cfg.loss.tau_plus:g})")
    elif name != "byol" and cfg.loss.name == "hard":
        parts.append(f"hard(tau+={cfg.loss.tau_plus:g},beta={cfg.loss.beta:g})")
    if name == "moco" and cfg.method.mochi:
        parts.append("MoCHi")
    if cfg.temperature.schedule == "cosine":
        t = cfg.temperature
        parts.append(f"T=cos({t.t_min:g}-{t.t_max:g}/{t.period:g})")
    if cfg.boost:
        parts.append("BCL")
    if cfg.split.pretrain_set != "D_i":
        parts.append(f"on {cfg.split.pretrain_set}")
    return " ".join(parts)


def method_slug(cfg: DictConfig | Config) -> str:
    """Short name for directories: ``simclr``, ``sdclr-p90``, ``moco``, ``moco-p30``,
    ``byol``, ..."""
    return _slug(cfg.prune.ratio, method_name(cfg))


# --- validation -------------------------------------------------------------------------


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def _check_known_keys(cfg: DictConfig) -> None:
    # Hydra's `+key=value` appends past the schema's struct flag; merging into the schema
    # again catches such keys.
    try:
        OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(cfg, resolve=False))
    except (ConfigKeyError, ValidationError) as e:
        key = getattr(e, "full_key", "") or "?"
        raise ConfigError(
            f"config key '{key}': {e.msg if hasattr(e, 'msg') else e}; see "
            f"`sdclr --cfg job` for the valid keys"
        ) from e


def validate(cfg: DictConfig) -> None:
    """Reject impossible settings before any work, naming the offending key."""
    _check_known_keys(cfg)
    d = cfg.data
    _check(0.0 < d.fraction <= 1.0, "data.fraction", f"must be in (0, 1], got {d.fraction}")
    _check(
        d.format in ("auto", "torchvision", "folder", "lists"),
        "data.format",
        f"must be auto, torchvision, folder or lists, got '{d.format}'",
    )
    files = uses_files(cfg)
    if d.num_classes is not None:
        _check(d.num_classes >= 2, "data.num_classes", f"must be >= 2, got {d.num_classes}")
    else:
        _check(files, "data.num_classes", "may be null only for image files (data.decode=stream)")
    _check(d.image_size >= 8, "data.image_size", f"must be >= 8, got {d.image_size}")
    if d.train_per_class is not None:
        _check(
            0 < d.val_per_class < d.train_per_class,
            "data.val_per_class",
            f"must be in (0, data.train_per_class={d.train_per_class}), got {d.val_per_class}",
        )
    else:
        _check(files, "data.train_per_class", "is needed for CIFAR-style data")
        _check(d.val_per_class >= 0, "data.val_per_class", f"must be >= 0, got {d.val_per_class}")
    _check(
        d.decode in ("memory", "stream"),
        "data.decode",
        f"must be memory or stream, got '{d.decode}'",
    )
    _check(
        d.cache_size is None or d.cache_size >= d.image_size,
        "data.cache_size",
        f"must be >= data.image_size={d.image_size} (or null), got {d.cache_size}",
    )
    _check(d.workers is None or d.workers >= 0, "data.workers", f"must be >= 0, got {d.workers}")
    _check(d.test_per_class >= 0, "data.test_per_class", f"must be >= 0, got {d.test_per_class}")
    _check(
        d.profile in ("exp", "pareto", "none"),
        "data.profile",
        f"must be exp, pareto or none, got '{d.profile}'",
    )
    _check(
        d.head_count is None or d.head_count >= 1,
        "data.head_count",
        f"must be >= 1, got {d.head_count}",
    )
    _check(
        d.tail_count is None or (d.tail_count >= 1 and d.tail_count <= (d.head_count or 10**9)),
        "data.tail_count",
        f"must be in [1, data.head_count], got {d.tail_count}",
    )
    _check(d.pareto_exponent > 0, "data.pareto_exponent", "must be > 0")
    _check(
        d.probe_crop in ("pad", "resized"),
        "data.probe_crop",
        f"must be pad or resized, got '{d.probe_crop}'",
    )
    _check(
        d.probe_crop == "resized" or not (files and d.decode == "stream"),
        "data.probe_crop",
        "the pad-4 crop needs images of one size; use resized with data.decode=stream",
    )
    _check(
        d.eval_resize is None or d.eval_resize >= d.image_size,
        "data.eval_resize",
        f"must be >= data.image_size={d.image_size} (or null), got {d.eval_resize}",
    )
    _check(
        d.format != "lists" or any(v for v in dict(d.lists).values()),
        "data.lists",
        "data.format=lists needs list files: data.lists.D_i and data.lists.test at least",
    )
    _check(
        d.imbalance_factor >= 1, "data.imbalance_factor", f"must be >= 1, got {d.imbalance_factor}"
    )
    _check(
        len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1,
        "data.crop_scale",
        f"must be [min, max] with 0 < min <= max <= 1, got {d.crop_scale}",
    )
    _check(0.0 <= d.blur_p <= 1.0, "data.blur_p", f"must be in [0, 1], got {d.blur_p}")
    _check(
        d.group_scheme in ("thirds", "thresholds"),
        "data.group_scheme",
        f"must be thirds or thresholds, got '{d.group_scheme}'",
    )
    _check(
        len(d.mean) == 3 and len(d.std) == 3 and all(s > 0 for s in d.std),
        "data.std",
        "data.mean and data.std need three values, std positive",
    )

    s = cfg.split
    _check(1 <= s.index <= 5, "split.index", f"must be 1..5, got {s.index}")
    _check(
        s.pretrain_set in ("D_i", "D_b"),
        "split.pretrain_set",
        f"must be D_i (long-tailed) or D_b (balanced control), got '{s.pretrain_set}'",
    )
    _check(
        s.source in ("generated", "official", "file"),
        "split.source",
        f"must be generated, official or file, got '{s.source}'",
    )
    _check(
        s.source != "file" or bool(s.file),
        "split.file",
        "split.source=file needs split.file=/path/to/split.npz",
    )
    _check(
        s.source != "official" or bool(s.official_dir),
        "split.official_dir",
        "split.source=official needs split.official_dir=/dir/with/split1_D_i.npy",
    )

    r = cfg.prune.ratio
    if r is not None:
        _check(0.0 <= r < 1.0, "prune.ratio", f"must be in [0, 1) (or null for SimCLR), got {r}")
    q = cfg.prune.random_ratio
    _check(0.0 <= q < 1.0, "prune.random_ratio", f"must be in [0, 1), got {q}")
    if r is not None:
        _check(
            q <= r,
            "prune.random_ratio",
            f"is a part of the pruned fraction, so must be <= prune.ratio={r}, got {q}",
        )
    else:
        _check(q == 0.0, "prune.random_ratio", "needs a pruned branch (prune.ratio set)")
    _check(
        cfg.bn.mode in ("auto", "dual", "shared"),
        "bn.mode",
        f"must be auto, dual or shared, got '{cfg.bn.mode}'",
    )
    if cfg.head.depth is not None:
        _check(cfg.head.depth >= 1, "head.depth", f"must be >= 1, got {cfg.head.depth}")
    _check(cfg.head.out_dim >= 1, "head.out_dim", f"must be >= 1, got {cfg.head.out_dim}")
    if cfg.backbone.channels is not None:
        _check(
            len(cfg.backbone.channels) == 4 and all(c > 0 for c in cfg.backbone.channels),
            "backbone.channels",
            "needs four positive stage widths, e.g. [64,128,256,512]",
        )

    p = cfg.pretrain
    _check(p.epochs >= 1, "pretrain.epochs", f"must be >= 1, got {p.epochs}")
    _check(p.batch_size >= 2, "pretrain.batch_size", f"must be >= 2, got {p.batch_size}")
    _check(p.lr > 0 and math.isfinite(p.lr), "pretrain.lr", f"must be > 0, got {p.lr}")
    _check(p.temperature > 0, "pretrain.temperature", f"must be > 0, got {p.temperature}")
    _check(p.warmup_epochs >= 0, "pretrain.warmup_epochs", f"must be >= 0, got {p.warmup_epochs}")
    _check(0 <= p.min_lr <= p.lr, "pretrain.min_lr", f"must be in [0, lr], got {p.min_lr}")
    _check(p.log_every >= 1, "pretrain.log_every", f"must be >= 1, got {p.log_every}")
    _validate_methods(cfg)
    for name in ("linear", "fewshot"):
        pc = cfg[name]
        _check(pc.epochs >= 1, f"{name}.epochs", f"must be >= 1, got {pc.epochs}")
        _check(pc.batch_size >= 1, f"{name}.batch_size", f"must be >= 1, got {pc.batch_size}")
        _check(pc.lr > 0, f"{name}.lr", f"must be > 0, got {pc.lr}")
        _check(
            pc.eval_batch_size >= 1,
            f"{name}.eval_batch_size",
            f"must be >= 1, got {pc.eval_batch_size}",
        )
        _check(
            list(pc.milestones) == sorted(pc.milestones), f"{name}.milestones", "must be increasing"
        )

    _check(
        cfg.stage.name in ("pretrain", "linear", "fewshot", "all"),
        "stage.name",
        f"must be pretrain, linear, fewshot or all, got '{cfg.stage.name}'",
    )
    _check(
        cfg.logger.name in ("none", "wandb"),
        "logger.name",
        f"must be none or wandb, got '{cfg.logger.name}'",
    )
    _check(
        cfg.logger.mode in ("auto", "online", "offline", "disabled"),
        "logger.mode",
        f"must be auto, online, offline or disabled, got '{cfg.logger.mode}'",
    )
    _check(
        cfg.checkpoint.every >= 1, "checkpoint.every", f"must be >= 1, got {cfg.checkpoint.every}"
    )
    _check(
        cfg.precision in ("auto", "fp32", "bf16"),
        "precision",
        f"must be auto, fp32 or bf16, got '{cfg.precision}'",
    )
    _check(
        cfg.compile_mode in COMPILE_MODES,
        "compile_mode",
        f"must be one of {', '.join(COMPILE_MODES)}, got '{cfg.compile_mode}'",
    )
    if cfg.fuse_branches:
        _check(
            cfg.method.name == "simclr",
            "fuse_branches",
            f"fuses the two branches of method=simclr (SimCLR / SDCLR); method="
            f"{cfg.method.name} runs its branches on different networks, so set "
            f"fuse_branches=false",
        )
        _check(
            bn_mode(cfg) == "dual" or cfg.prune.ratio is None,
            "fuse_branches",
            "the fused pass keeps the branches' batch statistics apart with dual BN; use "
            "bn=dual (or bn=auto) or fuse_branches=false",
        )
    dev = str(cfg.device)
    _check(
        dev in ("auto", "cpu") or dev.startswith("cuda"),
        "device",
        f"must be auto, cpu, cuda or cuda:N, got '{dev}'",
    )


def _validate_methods(cfg: DictConfig) -> None:
    """The method, loss, temperature schedule, BCL and monitor keys."""
    m, name = cfg.method, cfg.method.name
    _check(name in METHODS, "method.name", f"must be simclr, moco or byol, got '{name}'")
    _check(0.0 <= m.momentum <= 1.0, "method.momentum", f"must be in [0, 1], got {m.momentum}")
    _check(m.queue_size >= 1, "method.queue_size", f"must be >= 1, got {m.queue_size}")
    _check(
        m.predictor_hidden >= 1,
        "method.predictor_hidden",
        f"must be >= 1, got {m.predictor_hidden}",
    )
    _check(
        m.mochi_n >= 1 and m.mochi_s >= 0 and m.mochi_s_prime >= 0,
        "method.mochi_n",
        "MoCHi needs mochi_n >= 1, mochi_s >= 0 and mochi_s_prime >= 0",
    )
    _check(
        not m.mochi or name == "moco",
        "method.mochi",
        f"MoCHi mixes negatives from MoCo's queue; it needs method=moco, not {name}",
    )
    _check(
        name != "moco" or m.symmetric or cfg.prune.ratio is None,
        "method.symmetric",
        "MoCo with a pruned branch needs the symmetric loss: view 1 is the dense query and "
        "view 2 the pruned one",
    )
    loss = cfg.loss
    _check(
        loss.name in ("ntxent", "debiased", "hard"),
        "loss.name",
        f"must be ntxent, debiased or hard, got '{loss.name}'",
    )
    _check(0.0 <= loss.tau_plus < 1.0, "loss.tau_plus", f"must be in [0, 1), got {loss.tau_plus}")
    _check(math.isfinite(loss.beta), "loss.beta", f"must be finite, got {loss.beta}")
    if loss.name != "ntxent":
        _check(
            name != "byol",
            "loss.name",
            f"loss={loss.name} needs negatives (method=simclr or moco); BYOL has none",
        )
    t = cfg.temperature
    _check(
        t.schedule in ("constant", "cosine"),
        "temperature.schedule",
        f"must be constant or cosine, got '{t.schedule}'",
    )
    if t.schedule == "cosine":
        _check(t.t_min > 0, "temperature.t_min", f"must be > 0, got {t.t_min}")
        _check(
            t.t_max >= t.t_min,
            "temperature.t_max",
            f"must be >= temperature.t_min={t.t_min}, got {t.t_max}",
        )
        _check(t.period > 0, "temperature.period", f"must be > 0, got {t.period}")
        _check(
            name != "byol",
            "temperature.schedule",
            "BYOL has no temperature; use temperature.schedule=constant",
        )
    b = cfg.bcl
    _check(0.0 <= b.momentum < 1.0, "bcl.momentum", f"must be in [0, 1), got {b.momentum}")
    _check(b.k is None or b.k >= 1, "bcl.k", f"must be >= 1 (or null), got {b.k}")
    try:
        boost_preset(cfg)
    except ValueError as e:
        raise ConfigError(f"config key 'bcl.span': {e} (bcl.base + bcl.span <= 30)") from e
    mon = cfg.monitor
    _check(mon.knn_every >= 0, "monitor.knn_every", f"must be >= 0 (0 = off), got {mon.knn_every}")
    _check(mon.knn_k >= 1, "monitor.knn_k", f"must be >= 1, got {mon.knn_k}")
    _check(mon.knn_t > 0, "monitor.knn_t", f"must be > 0, got {mon.knn_t}")
    _check(mon.batch_size >= 1, "monitor.batch_size", f"must be >= 1, got {mon.batch_size}")
    _check(
        mon.diagnostics_every >= 1,
        "monitor.diagnostics_every",
        f"must be >= 1, got {mon.diagnostics_every}",
    )
    _check(
        mon.diagnostics_per_class is None or mon.diagnostics_per_class >= 1,
        "monitor.diagnostics_per_class",
        f"must be >= 1 (or null), got {mon.diagnostics_per_class}",
    )


def check_world_size(cfg: DictConfig | Config, world: int) -> None:
    """MoCo and BYOL run in one process: their momentum network, queue and predictor are not
    synchronised across torchrun ranks (SimCLR / SDCLR are). The global batch is split into
    equal chunks, one per rank."""
    bs = cfg.pretrain.batch_size
    _check(
        bs % world == 0,
        "pretrain.batch_size",
        f"the global batch ({bs}) must split evenly over the {world} torchrun ranks; use a "
        f"multiple of {world}",
    )
    _check(
        world == 1 or not cfg.fuse_branches,
        "fuse_branches",
        f"the fused pass runs in one process only (torchrun started {world}): its batch norm "
        f"is not synchronised across ranks; set fuse_branches=false under torchrun",
    )
    _check(
        world == 1 or cfg.method.name == "simclr",
        "method.name",
        f"method={cfg.method.name} runs in one process only (torchrun started {world}): its "
        f"momentum network, queue and predictor are not synchronised across ranks; run it "
        f"without torchrun, or use method=simclr",
    )


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
