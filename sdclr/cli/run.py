"""The single Hydra entry point: ``sdclr [overrides]`` / ``python -m sdclr``.

One job directory per run holds the resolved config, checkpoints, ``metrics.jsonl`` (every
logged record), ``metrics.json`` (the results of each finished stage) and ``status.json``.
Stages: ``pretrain``, ``linear``, ``fewshot``, or ``all`` (the three in order).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sdclr.config.derived import (
    bn_mode,
    diagnostics_on,
    head_depth,
    method_label,
    method_title,
    to_container,
)
from sdclr.config.schema import register_configs
from sdclr.config.validate import check_world_size, validate
from sdclr.errors import CheckpointError, ConfigError, SdclrError
from sdclr.utils.distributed import is_main_process, resolve_device
from sdclr.utils.io import CONF_DIR
from sdclr.utils.rng import seed_everything

_FAILED_JOBS: list[str] = []
_STATE: dict[str, bool] = {"stage_started": False}


# --- setup --------------------------------------------------------------------------------


def _check_writable(job_dir: Path) -> None:
    try:
        job_dir.mkdir(parents=True, exist_ok=True)
        probe = job_dir / f".write_test_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"the output directory {job_dir} is not writable ({e.strerror}); "
            f"choose another with hydra.run.dir=PATH"
        ) from e


def _write_json(path: Path, obj: Any) -> None:
    if not is_main_process():
        return  # under torchrun, rank 0 alone writes the job's files
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def _read_status(job_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((job_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _previous_checkpoint(path: Path, config: dict[str, Any], force: bool) -> dict | None:
    """The job's own pretrain checkpoint, if any, after checking it belongs to this config."""
    from sdclr.config.drift import config_differences
    from sdclr.models.checkpoint import load_checkpoint

    if not path.is_file():
        return None
    payload = load_checkpoint(path)
    diffs = config_differences(payload.get("config", {}), config)
    if diffs and not force:
        raise ConfigError(
            f"{path.parent.parent} holds a run with a different config, so resuming it would "
            f"mix two experiments. Differing keys:\n  "
            + "\n  ".join(diffs)
            + "\nUse another output directory, or add resume.force=true to continue anyway"
        )
    if diffs:
        print(
            "resume.force=true: continuing despite config differences:\n  " + "\n  ".join(diffs),
            file=sys.stderr,
        )
    return payload


def _read_metrics(job_dir: Path) -> dict[str, Any]:
    path = job_dir / "metrics.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
    return {}


# --- the run --------------------------------------------------------------------------------


def run(cfg: DictConfig, job_dir: Path, sweep_group: str | None = None) -> dict[str, Any]:
    """Run the configured stages in ``job_dir``; returns the metrics dict."""
    from sdclr.config.drift import config_hash
    from sdclr.data.run_data import load_run_data
    from sdclr.eval.metrics import class_groups
    from sdclr.eval.probe import train_probe
    from sdclr.methods.registry import build_method
    from sdclr.models.checkpoint import build_from_spec, load_encoder, model_spec
    from sdclr.train.loop import pretrain, step_settings
    from sdclr.utils.distributed import convert_sync_batchnorm, init_from_env, world_size
    from sdclr.utils.signals import StopSignal
    from sdclr.utils.tracking import Tracker

    _STATE["stage_started"] = False
    validate(cfg)
    job_dir = Path(job_dir)
    _check_writable(job_dir)
    device = init_from_env(str(cfg.device)) or resolve_device(str(cfg.device))
    check_world_size(cfg, world_size())
    main_process = is_main_process()
    seed_everything(cfg.seed)
    stages = ["pretrain", "linear", "fewshot"] if cfg.stage.name == "all" else [cfg.stage.name]
    if (
        "pretrain" not in stages
        and cfg.stage.checkpoint is None
        and not (job_dir / "checkpoints" / "pretrain.pt").is_file()
    ):
        raise CheckpointError(
            f"stage={cfg.stage.name} evaluates a pretrained encoder, but no checkpoint was "
            f"given and {job_dir}/checkpoints/pretrain.pt does not exist; pass "
            f"stage.checkpoint=/path/to/job/checkpoints/pretrain.pt"
        )

    config = to_container(cfg)
    ckpt_path = job_dir / "checkpoints" / "pretrain.pt"
    previous = _previous_checkpoint(ckpt_path, config, bool(cfg.resume.force))
    metrics = _read_metrics(job_dir)
    if previous is not None and not previous.get("finished"):
        metrics.pop("pretrain", None)  # an unfinished pretrain invalidates later stages
    done = [s for s in stages if s in metrics and (s != "pretrain" or previous is not None)]
    todo = [s for s in stages if s not in done]
    for s in done:
        if main_process:
            print(f"{s}: already finished in {job_dir} (resumed job); skipped", flush=True)
    data = load_run_data(cfg, device)
    split = data.split
    counts = {s: split.counts(s, data.train_y).tolist() for s in ("D_i", "D_b", "S_b")}
    groups = class_groups(counts["D_i"], cfg.data.group_scheme)
    probes = [s for s in stages if s != "pretrain"]
    if probes and not data.labelled:
        raise ConfigError(
            f"config key 'stage.name': {data.source} has no class folders, so there are no "
            f"labels for the {probes[0]} probe; run stage=pretrain, or sort the images into "
            f"<root>/<class>/ folders"
        )
    if probes and len(data.test_labels) == 0:
        raise ConfigError(
            f"config key 'stage.name': the {probes[0]} probe needs test images and the data "
            f"has none; add a test folder or set data.test_per_class"
        )
    pretrain_idx = split.subset(cfg.split.pretrain_set)
    if "fewshot" in stages and len(split.S_b) == 0:
        raise ConfigError(
            "config key 'stage.name': the few-shot probe needs the split's S_b images and it has "
            "none (with list files, give data.lists.S_b, or run stage=pretrain / linear)"
        )
    if "pretrain" in stages and len(pretrain_idx) == 0:
        raise ConfigError(
            f"config key 'split.pretrain_set': the split has no {cfg.split.pretrain_set} images "
            f"(with list files, give data.lists.{cfg.split.pretrain_set})"
        )
    if "pretrain" in stages and cfg.pretrain.batch_size > len(pretrain_idx):
        raise ConfigError(
            f"config key 'pretrain.batch_size': {cfg.pretrain.batch_size} is larger than the "
            f"pretraining set ({len(pretrain_idx)} images of {cfg.split.pretrain_set}); lower "
            f"the batch size or raise data.fraction"
        )

    # inputs are checked: from here on this job's files are (re)written
    _STATE["stage_started"] = True
    if main_process:
        OmegaConf.save(OmegaConf.create(config), job_dir / "config_resolved.yaml")
    _write_json(
        job_dir / "status.json", {"status": "running", "stage": (todo or stages)[0], "error": None}
    )
    metrics["run"] = {
        "method": method_title(cfg),
        "method_name": str(cfg.method.name),
        "label": method_label(cfg),
        "dataset": cfg.data.name,
        "split": int(cfg.split.index),
        "pretrain_set": cfg.split.pretrain_set,
        "backbone": cfg.backbone.name,
        "prune_ratio": cfg.prune.ratio,
        "random_ratio": cfg.prune.random_ratio,
        "bn": bn_mode(cfg),
        "head_depth": head_depth(cfg),
        "loss": str(cfg.loss.name) if cfg.method.name == "simclr" else None,
        "temperature_schedule": str(cfg.temperature.schedule),
        "boost": bool(cfg.boost),
        "seed": int(cfg.seed),
        "fraction": float(cfg.data.fraction),
        "smoke": bool(cfg.smoke),
        "device": str(device),
        "split_source": split.source,
        "data_source": data.source,
        "data_fingerprint": data.fingerprint,
    }
    tracker = Tracker(job_dir, enabled=main_process)
    wandb_id = None
    if cfg.logger.name == "wandb":
        wandb_id = tracker.start_wandb(
            cfg.logger,
            config,
            name=job_dir.name,
            group=cfg.logger.group or sweep_group,
            resume_id=_read_status(job_dir).get("wandb_id") or (previous or {}).get("wandb_id"),
        )

    exit_code = 1
    try:
        with StopSignal() as stop:
            for stage in todo:
                _write_json(
                    job_dir / "status.json",
                    {"status": "running", "stage": stage, "error": None, "wandb_id": wandb_id},
                )
                if stage == "pretrain":
                    spec = model_spec(cfg)
                    model = build_from_spec(spec).to(device)
                    if world_size() > 1:
                        convert_sync_batchnorm(model, device)
                    gen = torch.Generator(device=device).manual_seed(int(cfg.seed))
                    method = build_method(cfg, gen)
                    pretrain_bank = _subset(data.train, pretrain_idx)
                    monitor = _training_monitor(
                        cfg, data, pretrain_bank, pretrain_idx, groups, device, main_process
                    )
                    result = pretrain(
                        cfg,
                        model,
                        method,
                        pretrain_bank,
                        gen,
                        ckpt_path,
                        {
                            "spec": spec,
                            "config": config,
                            "config_hash": config_hash(config),
                            "wandb_id": wandb_id,
                        },
                        log=lambda r, step, kind="pretrain": tracker.log(r, kind, step),
                        resume_from=previous,
                        stop=stop,
                        monitor=monitor,
                    )
                    previous = None
                    result["split_counts"] = counts
                    result["pretrain_set"] = cfg.split.pretrain_set
                    result["checkpoint"] = str(ckpt_path)
                    metrics["pretrain"] = result
                elif not main_process:
                    continue  # probes run on rank 0 alone
                else:
                    source = cfg.stage.checkpoint or ckpt_path
                    model, _ = load_encoder(source, cfg.backbone.name)
                    backbone = model.to(device).backbone
                    numerics = step_settings(cfg, device)
                    if numerics.channels_last:  # as in pretraining (and in the bench's probe)
                        backbone.to(memory_format=torch.channels_last)
                    probe_cfg = cfg[stage]
                    train_idx = split.pool if stage == "linear" else split.S_b
                    gen = torch.Generator(device=device).manual_seed(
                        int(cfg.seed) + (1 if stage == "linear" else 2)
                    )
                    result = train_probe(
                        backbone,
                        data.train,
                        data.train_labels,
                        train_idx,
                        split.val,
                        data.test,
                        data.test_labels,
                        probe_cfg,
                        data.num_classes,
                        groups,
                        list(cfg.data.mean),
                        list(cfg.data.std),
                        gen,
                        desc=stage,
                        log=lambda r, s=stage: tracker.log(r, s),
                        amp_dtype=numerics.amp_dtype,
                        stop=stop,
                        crop=cfg.data.probe_crop,
                        size=int(cfg.data.image_size),
                        eval_resize=cfg.data.eval_resize,
                    )
                    result["class_counts"] = counts["D_i"]
                    result["checkpoint"] = str(source)
                    metrics[stage] = result
                    tracker.summary(
                        {f"{stage}/{k}": result[k] for k in ("acc", "many", "medium", "few", "std")}
                    )
                _write_json(job_dir / "metrics.json", metrics)
            exit_code = 0
    finally:
        if exit_code:
            tracker.finish(exit_code)
    _write_json(
        job_dir / "status.json",
        {"status": "completed", "stage": stages[-1], "error": None, "wandb_id": wandb_id},
    )
    if main_process:
        _job_report(job_dir, metrics, tracker)
        tracker.finish(0)
        _print_summary(cfg, metrics, job_dir)
    return metrics


def _training_monitor(
    cfg: DictConfig,
    data,
    pretrain_bank,
    pretrain_idx: np.ndarray,
    groups: dict[str, list[int]],
    device: torch.device,
    main_process: bool,
):
    """The kNN monitor and the diagnostics of this run (:mod:`sdclr.eval.monitor`), or None.
    Both need labels (and the kNN monitor test images); without them they are left off."""
    from sdclr.eval.monitor import (
        Diagnostics,
        EvalSettings,
        KnnMonitor,
        TrainingMonitor,
        default_per_class,
        stratified_sample,
    )
    from sdclr.train.loop import step_settings

    mon = cfg.monitor
    amp = step_settings(cfg, device).amp_dtype
    settings = EvalSettings(
        num_classes=data.num_classes,
        groups=groups,
        mean=list(cfg.data.mean),
        std=list(cfg.data.std),
        size=int(cfg.data.image_size),
        resize=cfg.data.eval_resize,
        batch_size=int(mon.batch_size),
        amp_dtype=amp,
    )
    knn = diag = None
    labelled = data.labelled
    if mon.knn_every > 0:
        if labelled and len(data.test_labels) and len(data.split.pool):
            pool = torch.as_tensor(data.split.pool, device=device)
            knn = KnnMonitor(
                int(mon.knn_every),
                data.train,
                pool,
                data.train_labels[pool],
                data.test,
                data.test_labels,
                settings,
                k=int(mon.knn_k),
                temperature=float(mon.knn_t),
            )
        elif main_process:
            print("kNN monitor off: the data has no labels or no test images", flush=True)
    if diagnostics_on(cfg):
        if labelled:
            labels = data.train_labels[torch.as_tensor(pretrain_idx, device=device)]
            per_class = mon.diagnostics_per_class or default_per_class(data.num_classes)
            sample = stratified_sample(labels.cpu().numpy(), data.num_classes, int(per_class))
            diag = Diagnostics(
                int(mon.diagnostics_every),
                pretrain_bank,
                torch.as_tensor(sample, device=device),
                labels,
                settings,
            )
        elif main_process:
            print("diagnostics off: the data has no labels", flush=True)
    if knn is None and diag is None:
        return None
    return TrainingMonitor(knn, diag)


def _subset(images, idx: np.ndarray):
    """The pretraining set: a gathered copy of resident images, or a view of the files."""
    from sdclr.data.banks import FileImages, TensorImages

    if isinstance(images, TensorImages):
        return TensorImages(images.take(torch.as_tensor(idx, device=images.device)))
    return FileImages(images.root, [images.paths[i] for i in idx], images.device, images.workers)


def _job_report(job_dir: Path, metrics: dict[str, Any], tracker) -> None:
    """This job's table and plots in ``job_dir/report`` (and W&B)."""
    from sdclr.report.build import (
        DIAGNOSTICS_PLOT,
        KNN_PLOT,
        build_report,
        format_job_metrics,
        write_pretrain_plots,
    )

    out = job_dir / "report"
    if "linear" not in metrics and "fewshot" not in metrics:
        # a pretrain-only job: its learning curve and diagnostics, if it has them
        plots = write_pretrain_plots(metrics, out)
        tracker.log_files(images=plots)
        return
    build_report(job_dir, out)
    tracker.log_files(
        tables={"results": format_job_metrics(metrics)},
        images={
            "group_accuracy": out / "group_accuracy.png",
            "per_class_accuracy": out / "per_class_accuracy.png",
            "knn_curves": out / KNN_PLOT,
            "diagnostics": out / DIAGNOSTICS_PLOT,
        },
    )


def _print_summary(cfg: DictConfig, metrics: dict[str, Any], job_dir: Path) -> None:
    from sdclr.report.build import format_job_metrics

    lines = [
        f"\n{metrics['run']['label']} on {cfg.data.name} split {cfg.split.index} "
        f"({cfg.split.pretrain_set})"
    ]
    if cfg.smoke or cfg.data.fraction < 1:
        lines.append(
            f"NOTE: smoke-scale run (data.fraction={cfg.data.fraction:g}, "
            f"pretrain.epochs={cfg.pretrain.epochs}); the numbers show the pipeline "
            f"works, not the method's accuracy."
        )
    if "pretrain" in metrics:
        pre = metrics["pretrain"]
        dens = pre.get("mask_density")
        lines.append(
            f"pretrain: {pre['epochs']} epochs, final loss {pre['final_loss']:.4f}, "
            f"{pre['seconds']:.1f} s" + (f", mask density {dens[-1]:.3f}" if dens else "")
        )
        if pre.get("knn"):
            k = pre["knn"][-1]
            lines.append(
                f"kNN monitor (epoch {k['epoch']}): acc {k['acc']:.2f}, many {k['many']:.2f}, "
                f"medium {k['medium']:.2f}, few {k['few']:.2f}"
            )
    if "linear" in metrics or "fewshot" in metrics:
        lines.append(format_job_metrics(metrics))
    lines.append(f"job directory: {job_dir}")
    print("\n".join(lines), flush=True)


# --- Hydra entry ----------------------------------------------------------------------------


def _hydra_job(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from sdclr.utils.signals import Interrupted

    hc = HydraConfig.get()
    resume_path = cfg.get("resume", {}).get("path")
    job_dir = Path(resume_path).expanduser() if resume_path else Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    from sdclr.utils.tracking import sweep_group

    group = sweep_group(hc.sweep.dir) if multirun else None
    try:
        run(cfg, job_dir, sweep_group=group)
    except Interrupted as e:
        _write_json(
            job_dir / "status.json",
            {
                "status": "interrupted",
                "error": str(e),
                "wandb_id": _read_status(job_dir).get("wandb_id"),
            },
        )
        print(f"interrupted: {e}", file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    except (SdclrError, Exception) as e:
        handled = isinstance(e, SdclrError)
        message = str(e) if handled else f"{type(e).__name__}: {e}"
        # an error before any stage ran (config, data) leaves an earlier job's files alone
        if _STATE["stage_started"] or not (job_dir / "status.json").exists():
            try:
                _write_json(
                    job_dir / "status.json",
                    {"status": "failed", "error": message, "traceback": traceback.format_exc()},
                )
            except OSError:
                pass
        if cfg.get("debug", False) or (not handled and not multirun):
            raise
        print(f"error: {message}", file=sys.stderr, flush=True)
        if not multirun:
            sys.exit(2)
        _FAILED_JOBS.append(f"{job_dir.name}: {message}")


def _precheck_output_dir(argv: list[str]) -> None:
    """Hydra creates the job directory before any of our code runs and fails with a
    traceback when it cannot; check the requested (or default) location first."""
    target = Path("outputs")
    for arg in argv:
        for key in ("hydra.run.dir=", "hydra.sweep.dir="):
            if arg.startswith(key):
                target = Path(arg[len(key) :])
    probe = target.expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        what = "is not a directory" if not probe.is_dir() else "is not writable"
        print(
            f"error: cannot create the output directory {target}: {probe} {what}; choose "
            f"another with hydra.run.dir=PATH (hydra.sweep.dir=PATH for -m)",
            file=sys.stderr,
        )
        sys.exit(2)


def _share_start_time(argv: list[str]) -> None:
    """Under torchrun, join the process group before Hydra picks the job directory and give
    every rank rank 0's start time, so they all use the same directory."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "SDCLR_RUN_TIME" in os.environ:
        return
    from datetime import datetime

    import torch.distributed as dist

    from sdclr.utils.distributed import init_from_env

    device = next((a.split("=", 1)[1] for a in argv if a.startswith("device=")), "auto")
    init_from_env(device)
    stamp = [datetime.now().isoformat()]
    dist.broadcast_object_list(stamp, src=0)
    os.environ["SDCLR_RUN_TIME"] = stamp[0]


def main() -> None:
    import hydra

    _precheck_output_dir(sys.argv[1:])
    _share_start_time(sys.argv[1:])
    register_configs()
    entry = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(
        _hydra_job
    )
    t0 = time.time()
    try:
        entry()
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if _FAILED_JOBS:
        print(
            f"{len(_FAILED_JOBS)} job(s) failed ({time.time() - t0:.0f} s):\n  "
            + "\n  ".join(_FAILED_JOBS),
            file=sys.stderr,
        )
        sys.exit(1)
