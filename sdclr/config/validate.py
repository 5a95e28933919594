"""Reject impossible settings before any work, with one line naming the key: a short driver
over one check per section of the config, and one table for the keys that take a word."""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from sdclr.config.derived import bn_mode, boost_preset, uses_files
from sdclr.config.schema import COMPILE_MODES, METHODS, Config
from sdclr.errors import ConfigError
from sdclr.utils.io import OFFICIAL_SPLITS_DIR

# The keys that take one of a few words: key -> (the words, how the message lists them, when
# not "a, b or c").
CHOICES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "data.format": (("auto", "torchvision", "folder", "lists"), None),
    "data.decode": (("memory", "stream"), None),
    "data.profile": (("exp", "pareto", "none"), None),
    "data.probe_crop": (("pad", "resized"), None),
    "data.group_scheme": (("thirds", "thresholds"), None),
    "split.pretrain_set": (("D_i", "D_b"), "D_i (long-tailed) or D_b (balanced control)"),
    "split.source": (("generated", "official", "file"), None),
    "bn.mode": (("auto", "dual", "shared"), None),
    "prune.random_rule": (("on_top", "within"), None),
    "method.name": (METHODS, None),
    "loss.name": (("ntxent", "debiased", "hard"), None),
    "temperature.schedule": (("constant", "cosine"), None),
    "stage.name": (("pretrain", "linear", "fewshot", "knn", "embed", "all"), None),
    "embed.method": (("tsne", "pca"), None),
    "linear.lr_step": (("epoch_start", "epoch_end"), None),
    "linear.select_metric": (("top1", "top5"), None),
    "fewshot.lr_step": (("epoch_start", "epoch_end"), None),
    "fewshot.select_metric": (("top1", "top5"), None),
    "logger.name": (("none", "wandb"), None),
    "logger.mode": (("auto", "online", "offline", "disabled"), None),
    "precision": (("auto", "fp32", "bf16"), None),
    "compile_mode": (COMPILE_MODES, f"one of {', '.join(COMPILE_MODES)}"),
}


def validate(cfg: DictConfig) -> None:
    """Reject impossible settings before any work, naming the offending key."""
    _check_known_keys(cfg)
    for check in (
        _check_data,
        _check_split,
        _check_model,
        _check_pretrain,
        _check_method,
        _check_objective,
        _check_monitor,
        _check_knn,
        _check_embed,
        _check_probes,
        _check_runtime,
    ):
        check(cfg)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def _words(words: tuple[str, ...]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _check_choices(cfg: DictConfig, section: str) -> None:
    """The CHOICES keys of one section (``data``, or ``""`` for the top-level keys)."""
    for key, (words, wording) in CHOICES.items():
        if key.rpartition(".")[0] == section:
            value = OmegaConf.select(cfg, key)
            _check(value in words, key, f"must be {wording or _words(words)}, got '{value}'")


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


def _check_data(cfg: DictConfig) -> None:
    d = cfg.data
    _check(0.0 < d.fraction <= 1.0, "data.fraction", f"must be in (0, 1], got {d.fraction}")
    _check_choices(cfg, "data")
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
        d.cache_size is None or d.cache_size >= d.image_size,
        "data.cache_size",
        f"must be >= data.image_size={d.image_size} (or null), got {d.cache_size}",
    )
    _check(d.workers is None or d.workers >= 0, "data.workers", f"must be >= 0, got {d.workers}")
    _check(d.test_per_class >= 0, "data.test_per_class", f"must be >= 0, got {d.test_per_class}")
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
        len(d.mean) == 3 and len(d.std) == 3 and all(s > 0 for s in d.std),
        "data.std",
        "data.mean and data.std need three values, std positive",
    )


def _check_split(cfg: DictConfig) -> None:
    s = cfg.split
    _check(1 <= s.index <= 5, "split.index", f"must be 1..5, got {s.index}")
    _check_choices(cfg, "split")
    _check(
        s.source != "file" or bool(s.file),
        "split.file",
        "split.source=file needs split.file=/path/to/split.npz",
    )
    shipped = OFFICIAL_SPLITS_DIR / str(cfg.data.name).removesuffix("_lt")
    _check(
        s.source != "official" or bool(s.official_dir) or shipped.is_dir(),
        "split.official_dir",
        f"split.source=official reads the reference's split files, and sdclr ships "
        f"them only for cifar10_lt, cifar100_lt and imagenet100_lt (splits/official/), not "
        f"for data.name={cfg.data.name}; give split.official_dir=/dir/with/split1_D_i.npy or "
        f"use split.source=generated",
    )
    lists_given = any(v for v in cfg.data.lists.values())
    _check(
        s.source != "official" or not uses_files(cfg) or lists_given or s.index == 1,
        "split.index",
        f"the reference has one {cfg.data.name} split (its lists), so split.source=official "
        f"takes split.index=1, got {s.index}; split.source=generated draws five splits",
    )


def _check_model(cfg: DictConfig) -> None:
    """The pruned branch, BN, head, backbone and the fused pass."""
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
    _check_choices(cfg, "prune")
    _check_choices(cfg, "bn")
    if cfg.head.depth is not None:
        _check(cfg.head.depth >= 1, "head.depth", f"must be >= 1, got {cfg.head.depth}")
    _check(cfg.head.out_dim >= 1, "head.out_dim", f"must be >= 1, got {cfg.head.out_dim}")
    if cfg.backbone.channels is not None:
        _check(
            len(cfg.backbone.channels) == 4 and all(c > 0 for c in cfg.backbone.channels),
            "backbone.channels",
            "needs four positive stage widths, e.g. [64,128,256,512]",
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


def _check_pretrain(cfg: DictConfig) -> None:
    p = cfg.pretrain
    _check(p.epochs >= 1, "pretrain.epochs", f"must be >= 1, got {p.epochs}")
    _check(p.batch_size >= 2, "pretrain.batch_size", f"must be >= 2, got {p.batch_size}")
    _check(p.lr > 0 and math.isfinite(p.lr), "pretrain.lr", f"must be > 0, got {p.lr}")
    _check(p.temperature > 0, "pretrain.temperature", f"must be > 0, got {p.temperature}")
    _check(p.warmup_epochs >= 0, "pretrain.warmup_epochs", f"must be >= 0, got {p.warmup_epochs}")
    # a warm-up longer than the run never reaches pretrain.lr and never decays (equal: the
    # ramp takes the whole run)
    _check(
        p.warmup_epochs <= p.epochs,
        "pretrain.warmup_epochs",
        f"{p.warmup_epochs} is more than pretrain.epochs={p.epochs}: the learning rate would "
        f"never reach pretrain.lr; set it to at most {p.epochs} (e.g. "
        f"pretrain.warmup_epochs={1 if p.epochs > 1 else 0}) or raise pretrain.epochs",
    )
    _check(0 <= p.min_lr <= p.lr, "pretrain.min_lr", f"must be in [0, lr], got {p.min_lr}")
    _check(p.log_every >= 1, "pretrain.log_every", f"must be >= 1, got {p.log_every}")


def _check_method(cfg: DictConfig) -> None:
    """The two-branch method and its own keys."""
    m, name = cfg.method, cfg.method.name
    _check_choices(cfg, "method")
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


def _check_objective(cfg: DictConfig) -> None:
    """The loss, the temperature schedule and BCL's boost."""
    name, loss = cfg.method.name, cfg.loss
    _check_choices(cfg, "loss")
    _check(0.0 <= loss.tau_plus < 1.0, "loss.tau_plus", f"must be in [0, 1), got {loss.tau_plus}")
    _check(math.isfinite(loss.beta), "loss.beta", f"must be finite, got {loss.beta}")
    if loss.name != "ntxent":
        _check(
            name != "byol",
            "loss.name",
            f"loss={loss.name} needs negatives (method=simclr or moco); BYOL has none",
        )
    t = cfg.temperature
    _check_choices(cfg, "temperature")
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


def _check_monitor(cfg: DictConfig) -> None:
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


def _check_knn(cfg: DictConfig) -> None:
    knn = cfg.knn
    _check(knn.k is None or knn.k >= 1, "knn.k", f"must be >= 1 (or null), got {knn.k}")
    _check(
        knn.temperature is None or knn.temperature > 0,
        "knn.temperature",
        f"must be > 0 (or null), got {knn.temperature}",
    )
    _check(
        knn.batch_size is None or knn.batch_size >= 1,
        "knn.batch_size",
        f"must be >= 1 (or null), got {knn.batch_size}",
    )


def _check_embed(cfg: DictConfig) -> None:
    _check_choices(cfg, "embed")
    emb = cfg.embed
    _check(
        emb.max_points is None or emb.max_points >= 2,
        "embed.max_points",
        f"must be >= 2 (or null for every test image), got {emb.max_points}",
    )
    _check(
        emb.perplexity > 0 and math.isfinite(emb.perplexity),
        "embed.perplexity",
        f"must be > 0, got {emb.perplexity}",
    )
    _check(
        emb.batch_size is None or emb.batch_size >= 1,
        "embed.batch_size",
        f"must be >= 1 (or null), got {emb.batch_size}",
    )


def _check_probes(cfg: DictConfig) -> None:
    for name in ("linear", "fewshot"):
        _check_choices(cfg, name)
        pc = cfg[name]
        _check(pc.epochs >= 1, f"{name}.epochs", f"must be >= 1, got {pc.epochs}")
        _check(pc.val_every >= 1, f"{name}.val_every", f"must be >= 1, got {pc.val_every}")
        _check(pc.batch_size >= 1, f"{name}.batch_size", f"must be >= 1, got {pc.batch_size}")
        _check(pc.lr > 0, f"{name}.lr", f"must be > 0, got {pc.lr}")
        rates = list(pc.lrs)
        _check(
            all(r > 0 for r in rates) and len(set(rates)) == len(rates),
            f"{name}.lrs",
            f"must be distinct rates > 0 (or [] for {name}.lr alone), got {rates}",
        )
        _check(
            pc.eval_batch_size >= 1,
            f"{name}.eval_batch_size",
            f"must be >= 1, got {pc.eval_batch_size}",
        )
        _check(
            list(pc.milestones) == sorted(pc.milestones), f"{name}.milestones", "must be increasing"
        )


def _check_runtime(cfg: DictConfig) -> None:
    """Stage, tracking, checkpoints, numerics and the device."""
    for section in ("stage", "logger", ""):
        _check_choices(cfg, section)
    _check(
        not (cfg.stage.random_init and cfg.stage.name == "pretrain"),
        "stage.random_init",
        "probes the random-init encoder beside the pretrained one, and stage=pretrain runs no "
        "probe; use stage=all, linear, fewshot, knn or embed, or drop stage.random_init",
    )
    _check(
        not cfg.stage.knn or cfg.stage.name in ("all", "knn"),
        "stage.knn",
        f"adds the kNN classifier to stage=all, and stage={cfg.stage.name} is one stage; use "
        f"stage=knn for the kNN classifier alone, or drop stage.knn",
    )
    _check(
        not cfg.stage.embed or cfg.stage.name in ("all", "embed"),
        "stage.embed",
        f"adds the map of the test features to stage=all, and stage={cfg.stage.name} is one "
        f"stage; use stage=embed for the map alone, or drop stage.embed",
    )
    _check(
        not cfg.logger.get("artifact", False) or cfg.logger.name == "wandb",
        "logger.artifact",
        "logs the checkpoint and its export as W&B artifacts, and needs logger=wandb (without "
        "W&B, sdclr-export writes the export from checkpoints/pretrain.pt)",
    )
    _check(
        cfg.checkpoint.every >= 1, "checkpoint.every", f"must be >= 1, got {cfg.checkpoint.every}"
    )
    dev = str(cfg.device)
    _check(
        dev in ("auto", "cpu") or dev.startswith("cuda"),
        "device",
        f"must be auto, cpu, cuda or cuda:N, got '{dev}'",
    )
    t = cfg.distributed.timeout_min
    _check(
        t > 0 and math.isfinite(t),
        "distributed.timeout_min",
        f"must be a positive number of minutes, got {t}",
    )


def check_world_size(cfg: DictConfig | Config, world: int) -> None:
    """MoCo and BYOL run in one process: their momentum network, queue and predictor are not
    synchronised across torchrun ranks (SimCLR / SDCLR are). The global batch is split into
    equal chunks, one per rank. torch.compile is refused under torchrun (SyncBatchNorm
    breaks its graph), as is the fused pass."""
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
        world == 1 or not cfg.compile,
        "compile",
        f"torch.compile does not run under torchrun (torchrun started {world}): synchronised "
        f"batch norm breaks the compiled graph (pytorch#161302); set compile=false, or leave "
        f"it unset (compile=null turns it off under torchrun)",
    )
    _check(
        world == 1 or cfg.method.name == "simclr",
        "method.name",
        f"method={cfg.method.name} runs in one process only (torchrun started {world}): its "
        f"momentum network, queue and predictor are not synchronised across ranks; run it "
        f"without torchrun, or use method=simclr",
    )
