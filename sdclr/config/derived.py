"""Settings derived from several config keys: whether a run is SDCLR, its BN mode and head
depth, its data route, its BCL preset, and the names a run is known by (title, label, slug)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from sdclr.augment.boost import BoostConfig
from sdclr.config.schema import METHOD_NAMES, Config, slug


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
        if cfg.prune.random_rule != "on_top":
            title += f"({cfg.prune.random_rule})"
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
    return slug(cfg.prune.ratio, method_name(cfg))


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
