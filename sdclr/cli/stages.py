"""The stages of a job: what each needs from the data, and how each runs.

:func:`check_inputs` refuses a run whose data cannot serve its stages (before any file of the
job is touched); :data:`STAGES` maps each stage name to the function that runs it on a
started :class:`sdclr.cli.job.Job` and stores its result in ``job.metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from sdclr.cli.artifacts import log_pretrain_artifacts
from sdclr.cli.job import Job
from sdclr.config.derived import diagnostics_on
from sdclr.config.drift import config_hash
from sdclr.data.banks import Images
from sdclr.data.run_data import RunData
from sdclr.errors import ConfigError
from sdclr.eval.collapse import collapse_reason
from sdclr.eval.embed import embed_2d, features_of, map_measures, stratified_subsample
from sdclr.eval.features import EvalSettings
from sdclr.eval.knn import knn_monitor
from sdclr.eval.metrics import class_groups
from sdclr.eval.monitor import (
    Diagnostics,
    KnnMonitor,
    TrainingMonitor,
    default_per_class,
    stratified_sample,
)
from sdclr.eval.probe import ProbeData, fit_probe
from sdclr.methods.registry import build_method
from sdclr.models.checkpoint import (
    build_from_spec,
    check_input_normalisation,
    load_encoder,
    model_spec,
)
from sdclr.report.jobs import RANDOM_INIT_SUFFIX
from sdclr.report.plots import plot_embedding
from sdclr.train.loop import Checkpointing, pretrain
from sdclr.utils.distributed import convert_sync_batchnorm, world_size
from sdclr.utils.precision import step_settings
from sdclr.utils.runlog import note, progress_line, warn
from sdclr.utils.signals import StopSignal


@dataclass
class StageInputs:
    counts: dict[str, list[int]]  # images per class of D_i, D_b and S_b
    groups: dict[str, list[int]]  # Many / Medium / Few classes, from the D_i counts
    pretrain_idx: np.ndarray  # positions of the pretraining set in data.train


def check_inputs(cfg: DictConfig, data: RunData, stages: list[str]) -> StageInputs:
    """The split's counts and groups and the pretraining set, after checking that the data
    has what ``stages`` need (labels and test images for probes, S_b for few-shot, enough
    pretraining images for a batch)."""
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
    max_points = cfg.embed.max_points
    if "embed" in stages and max_points is not None and len(data.test_labels):
        n_classes = int(torch.unique(data.test_labels).numel())
        if max_points < n_classes:
            raise ConfigError(
                f"config key 'embed.max_points': {max_points} points cannot show all "
                f"{n_classes} classes of the test set; raise it to at least {n_classes} "
                f"(or null for every test image)"
            )
    if "knn" in stages and len(split.pool) == 0:
        raise ConfigError(
            "config key 'stage.name': the kNN classifier's bank is the split's probe pool and "
            "it has none (with list files, give data.lists.pool)"
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
    return StageInputs(counts, groups, pretrain_idx)


# --- pretrain ---------------------------------------------------------------------------


def run_pretrain(job: Job, stage: str, stop: StopSignal) -> None:
    """Pretrain (resuming the job's checkpoint where it has one) into ``job.checkpoint``."""
    cfg, device = job.cfg, job.device
    spec = model_spec(cfg)
    model = build_from_spec(spec).to(device)
    if world_size() > 1:
        convert_sync_batchnorm(model, device)
    gen = torch.Generator(device=device).manual_seed(int(cfg.seed))
    method = build_method(cfg, gen)
    pretrain_bank = job.data.train.subset(job.pretrain_idx)
    result = pretrain(
        cfg,
        model,
        method,
        pretrain_bank,
        gen,
        Checkpointing(
            job.checkpoint,
            {
                "spec": spec,
                "config": job.plan.config,
                "config_hash": config_hash(job.plan.config),
                "wandb_id": job.wandb_id,
            },
            resume_from=job.plan.previous,
        ),
        log=lambda r, step, kind="pretrain": job.tracker.log(r, kind, step),
        stop=stop,
        monitor=training_monitor(job, pretrain_bank),
    )
    job.plan.previous = None  # consumed: nothing else resumes from it
    result["split_counts"] = job.counts
    result["pretrain_set"] = cfg.split.pretrain_set
    result["checkpoint"] = str(job.checkpoint)
    job.metrics["pretrain"] = result
    log_pretrain_artifacts(job)  # logger.artifact: the checkpoint and its export, to W&B


def eval_settings(job: Job, batch_size: int) -> EvalSettings:
    """How the probes and monitors of ``job`` see images (:mod:`sdclr.eval.features`)."""
    cfg = job.cfg
    return EvalSettings(
        num_classes=job.data.num_classes,
        groups=job.groups,
        mean=list(cfg.data.mean),
        std=list(cfg.data.std),
        size=int(cfg.data.image_size),
        resize=cfg.data.eval_resize,
        batch_size=int(batch_size),
        amp_dtype=step_settings(cfg, job.device).amp_dtype,
    )


def training_monitor(job: Job, pretrain_bank: Images) -> TrainingMonitor | None:
    """The kNN monitor and the diagnostics of this run (:mod:`sdclr.eval.monitor`), or None.
    Both need labels (and the kNN monitor test images); without them they are left off."""
    cfg, data, device = job.cfg, job.data, job.device
    mon = cfg.monitor
    settings = eval_settings(job, mon.batch_size)
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
        elif job.main_process:
            note("kNN monitor off: the data has no labels or no test images")
    if diagnostics_on(cfg):
        if labelled:
            labels = data.train_labels[torch.as_tensor(job.pretrain_idx, device=device)]
            per_class = mon.diagnostics_per_class or default_per_class(data.num_classes)
            sample = stratified_sample(labels.cpu().numpy(), data.num_classes, int(per_class))
            diag = Diagnostics(
                int(mon.diagnostics_every),
                pretrain_bank,
                torch.as_tensor(sample, device=device),
                labels,
                settings,
            )
        elif job.main_process:
            note("diagnostics off: the data has no labels")
    if knn is None and diag is None:
        return None
    return TrainingMonitor(knn, diag)


# --- probes -----------------------------------------------------------------------------


def run_probe(job: Job, stage: str, stop: StopSignal) -> None:
    """The linear (over the pool) or few-shot (over S_b) probe of the job's encoder, or of
    ``stage.checkpoint``; with ``stage.random_init`` the same probe again on the same
    architecture at a seeded random initialisation. Rank 0 alone runs it."""
    if not job.main_process:
        return
    evaluate(
        job,
        stage,
        lambda model, name: probe_encoder(job, stage, model, stop, name),
        ("acc", "many", "medium", "few", "std", "collapsed"),
    )


def evaluate(
    job: Job,
    stage: str,
    measure: Callable[[torch.nn.Module, str], dict[str, Any]],
    summary_keys: tuple[str, ...],
) -> None:
    """One evaluation stage: ``measure(model, name)`` of the evaluated encoder
    (:func:`evaluated_encoder`) into ``job.metrics[stage]`` with the checkpoint it came from;
    with ``stage.random_init`` again on the same architecture at a seeded random
    initialisation, into ``<stage>_random_init``."""
    cfg = job.cfg
    model, payload, source = evaluated_encoder(job, stage)
    result = measure(model, stage)
    result["checkpoint"] = str(source)
    if payload.get("source"):
        result["checkpoint_source"] = payload["source"]
    job.metrics[stage] = result
    job.tracker.summary({f"{stage}/{k}": result[k] for k in summary_keys})
    if cfg.stage.random_init:
        with torch.random.fork_rng(devices=[]):  # the run's own draws go on untouched
            torch.manual_seed(int(cfg.seed))
            fresh = build_from_spec(payload["spec"])
        key = f"{stage}{RANDOM_INIT_SUFFIX}"
        baseline = measure(fresh, key)
        baseline["checkpoint"] = None
        job.metrics[key] = baseline
        shown = [k for k in ("acc", "many", "medium", "few") if k in baseline]  # not a map's
        job.tracker.summary({f"{key}/{k}": baseline[k] for k in shown})


def evaluated_encoder(job: Job, stage: str) -> tuple[torch.nn.Module, dict[str, Any], Any]:
    """The model an evaluation stage evaluates (``stage.checkpoint``, default the job's own),
    its checkpoint payload and path, after checking backbone and input normalisation."""
    cfg = job.cfg
    source = cfg.stage.checkpoint or job.checkpoint
    model, payload = load_encoder(source, cfg.backbone.name)
    check_input_normalisation(payload["spec"], list(cfg.data.mean), list(cfg.data.std), source)
    if payload.get("source") and job.main_process:  # another code's: say what is evaluated
        note(f"{stage}: {source} is a {payload['source']}")
    return model, payload, source


def evaluated_backbone(job: Job, model: torch.nn.Module) -> torch.nn.Module:
    """``model``'s backbone on the job's device, in the memory format pretraining used
    (channels_last where the run's numerics say so): how the probes, the kNN classifier and
    the map see an encoder, as the kNN monitor saw it during pretraining."""
    backbone = model.to(job.device).backbone
    if step_settings(job.cfg, job.device).channels_last:
        backbone.to(memory_format=torch.channels_last)
    return backbone


def probe_encoder(
    job: Job, stage: str, model: torch.nn.Module, stop: StopSignal, name: str
) -> dict[str, Any]:
    """The ``stage`` probe (its config section, training set and generator seed) of
    ``model``'s backbone, checked for collapse; ``name`` titles its progress, log and
    warning."""
    cfg, device, data, split = job.cfg, job.device, job.data, job.data.split
    backbone = evaluated_backbone(job, model)
    probe_cfg = cfg[stage]
    train_idx = split.pool if stage == "linear" else split.S_b
    gen = torch.Generator(device=device).manual_seed(
        int(cfg.seed) + (1 if stage == "linear" else 2)
    )
    result = fit_probe(
        backbone,
        ProbeData(data.train, data.train_labels, train_idx, split.val, data.test, data.test_labels),
        probe_cfg,
        eval_settings(job, probe_cfg.eval_batch_size),
        gen,
        crop=cfg.data.probe_crop,
        desc=name,
        log=lambda r, s=name: job.tracker.log(r, s),
        stop=stop,
    )
    result["class_counts"] = job.counts["D_i"]
    reason = collapse_reason(result, data.train_y[split.val], stage)
    result["collapsed"], result["collapse_reason"] = reason is not None, reason
    if reason is not None:
        warn(f"{name} probe collapsed: {reason}")
    return result


# --- the kNN classifier -----------------------------------------------------------------


def knn_settings(cfg: DictConfig) -> tuple[int, float, int]:
    """k, temperature and images per forward of the kNN stage: ``knn.*``, where null the
    monitor's (``monitor.knn_k``, ``monitor.knn_t``, ``monitor.batch_size``)."""
    knn, mon = cfg.knn, cfg.monitor
    return (
        int(mon.knn_k if knn.k is None else knn.k),
        float(mon.knn_t if knn.temperature is None else knn.temperature),
        int(mon.batch_size if knn.batch_size is None else knn.batch_size),
    )


def run_knn(job: Job, stage: str, stop: StopSignal) -> None:
    """The kNN classifier of the job's encoder, or of ``stage.checkpoint``: the kNN monitor's
    (:func:`sdclr.eval.knn.knn_monitor`) with ``knn.k`` and ``knn.temperature``; with
    ``stage.random_init`` again on the same architecture at a seeded random initialisation.
    Every rank takes part (under torchrun they share the encoding); rank 0 writes."""
    evaluate(
        job,
        stage,
        lambda model, _name: knn_encoder(job, model),
        ("acc", "many", "medium", "few", "std"),
    )


def knn_encoder(job: Job, model: torch.nn.Module) -> dict[str, Any]:
    """kNN accuracy of ``model``'s backbone as the kNN monitor measures it: the probe pool
    (evaluation views) as the bank, the test set as the queries, Many / Medium / Few from
    the split; in the probes' format plus k, temperature and the image counts."""
    cfg, device, data = job.cfg, job.device, job.data
    k, temperature, batch_size = knn_settings(cfg)
    backbone = evaluated_backbone(job, model)
    pool = torch.as_tensor(data.split.pool, device=device)
    t0 = time.time()
    result = knn_monitor(
        backbone,
        data.train,
        data.train_labels[pool],
        data.test,
        data.test_labels,
        eval_settings(job, batch_size),
        k,
        temperature,
        bank_idx=pool,
    )
    result.update(
        bank_images=len(pool),
        test_images=len(data.test_labels),
        class_counts=job.counts["D_i"],
        seconds=time.time() - t0,
    )
    return result


# --- the 2-D map of the test features ----------------------------------------------------

#: The numbers of a map that go to the tracker's summary (``embed/<key>``)
EMBED_SUMMARY = ("points", "trustworthiness", "silhouette_features", "silhouette_map")


def run_embed(job: Job, stage: str, stop: StopSignal) -> None:
    """A 2-D map of the test features of the job's encoder, or of ``stage.checkpoint``
    (:mod:`sdclr.eval.embed`): ``embed.png`` in the job directory (and W&B), its numbers in
    ``job.metrics["embed"]``; with ``stage.random_init`` the map of the same architecture at
    a seeded random initialisation too (``embed_random_init.png``). Rank 0 alone runs it."""
    if not job.main_process:
        return
    evaluate(job, stage, lambda model, name: embed_encoder(job, model, name), EMBED_SUMMARY)


def embed_encoder(job: Job, model: torch.nn.Module, name: str) -> dict[str, Any]:
    """The map of ``model``'s backbone: the test images (a class-stratified subsample of at
    most ``embed.max_points``, seeded by ``seed``) encoded as the kNN classifier sees them,
    laid out by ``embed.method``, drawn by class and by Many / Medium / Few into
    ``<name>.png``, the coordinates into ``<name>.npz``; returns what was drawn and measured."""
    cfg, device, data = job.cfg, job.device, job.data
    emb, seed = cfg.embed, int(cfg.seed)
    batch_size = int(cfg.monitor.batch_size if emb.batch_size is None else emb.batch_size)
    backbone = evaluated_backbone(job, model)
    labels = data.test_labels.cpu().numpy().astype(np.int64)
    idx = stratified_subsample(labels, emb.max_points, seed)
    how = {"tsne": "t-SNE", "pca": "PCA"}[str(emb.method)]
    progress_line(f"{name}: encoding {len(idx)} of {len(labels)} test images")
    t0 = time.time()
    feats = features_of(
        backbone, data.test, torch.as_tensor(idx, device=device), eval_settings(job, batch_size)
    )
    t_feats = time.time() - t0
    progress_line(f"{name}: {how} of {len(idx)} features ({feats.shape[1]}-d)")
    coords, info = embed_2d(feats, str(emb.method), seed, float(emb.perplexity))
    t_map = time.time() - t0 - t_feats
    measures = map_measures(feats, coords, labels[idx])
    png, npz = job.dir / f"{name}.png", job.dir / f"{name}.npz"
    random_init = name.endswith(RANDOM_INIT_SUFFIX)
    source = "random init" if random_init else (cfg.stage.checkpoint or job.checkpoint)
    title = f"{how} of {len(idx)} of {len(labels)} {cfg.data.name} test images: {source}"
    plot_embedding(coords, labels[idx], job.groups, png, list(data.classes), title)
    np.savez_compressed(npz, coords=coords, test_index=idx, labels=labels[idx])
    job.tracker.log_files(images={name: png})
    result: dict[str, Any] = {
        "path": str(png),
        "coords": str(npz),
        "method": str(emb.method),
        "points": int(len(idx)),
        "test_images": int(len(labels)),
        "seed": seed,
        "feature_dim": int(feats.shape[1]),
        **info,
        **measures,
        "groups": job.groups,
        "class_counts": job.counts["D_i"],
        "features_seconds": t_feats,
        "map_seconds": t_map,
        "seconds": time.time() - t0,
    }
    trust = measures["trustworthiness"]
    note(
        f"{name}: {how} map of {len(idx)} test images in {result['seconds']:.1f} s "
        f"(features {t_feats:.1f} s, map {t_map:.1f} s)"
        + ("" if trust is None else f", trustworthiness {trust:.3f}")
        + f" -> {png}"
    )
    return result


#: Each stage's runner: ``STAGES[name](job, name, stop)``.
STAGES: dict[str, Callable[[Job, str, StopSignal], None]] = {
    "pretrain": run_pretrain,
    "linear": run_probe,
    "fewshot": run_probe,
    "knn": run_knn,
    "embed": run_embed,
}
