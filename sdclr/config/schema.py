"""Configuration schema: dataclasses registered in Hydra's ConfigStore.

The YAML files under ``conf/`` only choose values; every key must exist here, so a typo in
an override (``pretrain.epoch=5``) fails at composition instead of being silently ignored.
Range checks that OmegaConf's type system cannot express live in
:func:`sdclr.config.validate.validate`, which the runner calls before any work starts; values
derived from several keys (the BN mode, the head depth, a run's label) in
:mod:`sdclr.config.derived`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


@dataclass
class ListsConfig:
    """List files of ``relative/path label`` lines (relative to data.root, or absolute).
    All null: the lists are generated from the image folder and saved under split.dir."""

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
    # official: the reference's split files (the default of cifar10_lt, cifar100_lt and
    # imagenet100_lt, set in their conf/data files) | generated (<dir>/<data>/split<i>.npz,
    # or generated lists) | file
    source: str = "generated"
    file: str | None = None  # with source=file: an .npz written by `python -m sdclr.splits`
    # with source=official: the folder of the reference's .npy index files (or ImageNet-100-LT
    # lists); null: the shipped splits/official/<cifar10|cifar100|imagenet100>
    official_dir: str | None = None
    # where generated splits / lists are read and written (null: <data.cache_dir>/splits; the
    # committed CIFAR-10 ones are read from the package when missing there)
    dir: str | None = None


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
    # on_top (the reference's): q*N random drops on top of a (p - q) magnitude cut | within
    # (the milder older rule: the random picks count towards the p cut); see models/pruning.py
    random_rule: str = "on_top"


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
    # a learning-rate grid, one head per rate trained in the same pass, the best validation
    # top-1 over rates and epochs chosen (empty: the single rate ``lr``, the protocol's)
    lrs: list[float] = field(default_factory=list)
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: list[int] = field(default_factory=lambda: [10, 20])
    gamma: float = 0.1
    # where the MultiStepLR steps: epoch_start (the reference's CIFAR probe: lr 30 for epochs
    # 1-9, 3 for 10-19, 0.3 for 20-30) | epoch_end (its ImageNet probe: 1-10 / 11-20 / 21-30)
    lr_step: str = "epoch_start"
    # validate every N epochs and after the last; the best validated epoch is reported
    # (the reference's test_freq: CIFAR 1 full-shot / 5 few-shot, ImageNet 2 / 10)
    val_every: int = 1
    select_metric: str = "top1"  # top1 | top5 (validation accuracy choosing epoch and rate)
    # an affine-free BatchNorm on the features before the linear layer (MAE's linear probe):
    # for early checkpoints whose feature scale has run away; off in the published protocol
    normalize: bool = False
    augment: bool = True  # pad-4 random crop + flip on the probe's training images
    eval_batch_size: int = 512


@dataclass
class KnnConfig:
    """The kNN classifier stage (``stage=knn``, or ``stage=all`` with ``stage.knn=true``):
    the monitor's weighted kNN (probe pool as bank, test set as queries) on a checkpoint.
    null: the monitor's setting, so the stage on a run's final checkpoint repeats the kNN
    monitor's last point."""

    k: int | None = None  # null: monitor.knn_k
    temperature: float | None = None  # null: monitor.knn_t
    batch_size: int | None = None  # images per forward; null: monitor.batch_size


@dataclass
class EmbedConfig:
    """The 2-D map of the test features (``stage=embed``): coloured by class and by Many /
    Medium / Few, ``embed.png`` in the job directory (sdclr/eval/embed.py)."""

    method: str = "tsne"  # tsne | pca
    # a class-stratified, seeded (``seed``) subsample of the test set, drawn before encoding;
    # null: every test image (t-SNE's time grows with the points)
    max_points: int | None = 5000
    perplexity: float = 30.0  # t-SNE's; at most (points - 1) / 3
    batch_size: int | None = None  # images per forward; null: monitor.batch_size


@dataclass
class StageConfig:
    name: str = "all"  # pretrain | linear | fewshot | knn | embed | all
    # a pretrain checkpoint to evaluate (linear / fewshot / knn / embed)
    checkpoint: str | None = None
    # stage=all also runs the kNN classifier (after pretraining, before the probes)
    knn: bool = False
    # stage=all also draws the map of the test features (stage=embed; last, on rank 0)
    embed: bool = False
    # also run each probe (and the kNN classifier) on the same architecture at its random
    # initialisation (seeded by ``seed``), the baseline pretraining has to beat:
    # ``<stage>_random_init`` in metrics.json
    random_init: bool = False


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "sdclr"
    entity: str | None = None
    mode: str = "auto"  # auto (offline without an API key) | online | offline | disabled
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    dir: str | None = None  # default: the job directory
    # logger=wandb: when pretraining finishes, log the final checkpoint and its timm export
    # (written to <job>/export/, as sdclr-export writes it) as W&B artifacts of the run
    artifact: bool = False


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
class DistributedConfig:
    """torchrun / multi-task SLURM jobs (nothing here matters in one process)."""

    # minutes a collective may wait before the process group aborts the job: rank 0 alone
    # runs the probes and writes checkpoints while the others wait (NCCL's default is 10)
    timeout_min: float = 60.0


@dataclass
class SweepConfig:
    # What a job returns to Hydra's sweeper (hydra/sweeper=optuna maximises it): a dotted path
    # into metrics.json, e.g. linear.acc (default), linear.few, fewshot.acc, knn.acc; null: none
    objective: str | None = "linear.acc"


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
        default_factory=lambda: ProbeConfig(epochs=100, milestones=[40, 60], val_every=5)
    )
    knn: KnnConfig = field(default_factory=KnnConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Step numerics; null/auto = by device: bf16 autocast, channels_last and torch.compile on
    # CUDA (compile not under torchrun, where compile=true is refused), float32 without
    # compile on CPU.
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
    OmegaConf.register_new_resolver("method_slug", slug, replace=True)
    # cached: the job directory keeps the time it was first resolved at, also where the
    # config is composed again from its pickle (a submitit job on its node, and requeued)
    OmegaConf.register_new_resolver("sdclr_now", _run_time, replace=True, use_cache=True)
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


#: The methods, ``method.name`` -> title: the one list of them (``sdclr.methods.registry``
#: maps each to its class and refuses to import when the two disagree).
METHOD_NAMES = {"simclr": "SimCLR", "moco": "MoCo v2", "byol": "BYOL"}
METHODS = tuple(METHOD_NAMES)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def slug(ratio: float | None, method: str = "simclr") -> str:
    """``simclr``, ``sdclr-p90`` (the simclr method with a pruned branch), ``moco``,
    ``moco-p30``, ``byol``, ``byol-p90``."""
    if method == "simclr":
        return "simclr" if ratio is None else f"sdclr-p{round(100 * float(ratio)):02d}"
    return method if ratio is None else f"{method}-p{round(100 * float(ratio)):02d}"
