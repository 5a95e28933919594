"""``logger.artifact=true`` (with ``logger=wandb``): when pretraining finishes, the final
checkpoint and its timm export become W&B artifacts of the run.

The export is written into the job directory (``<job>/export/``, what ``sdclr-export
checkpoints/pretrain.pt --out export`` writes: :func:`sdclr.models.export.export_timm`), then
logged as ``backbone-<run id>`` (type ``model``); the checkpoint as ``checkpoint-<run id>``
(type ``checkpoint``). Each is an output of the run (``run.log_artifact``), a new version each
time the run logs it again (a resumed, longer pretraining). Nothing here stops a run: a
failed export or artifact is a warning.
"""

from __future__ import annotations

from typing import Any

from sdclr.cli.job import Job
from sdclr.errors import SdclrError
from sdclr.models.checkpoint import model_spec
from sdclr.models.export import CONFIG, WEIGHTS, export_timm
from sdclr.utils.runlog import note, warn

EXPORT_DIR = "export"


def wanted(job: Job) -> bool:
    logger = job.cfg.logger
    return job.main_process and logger.name == "wandb" and bool(logger.get("artifact", False))


def log_pretrain_artifacts(job: Job) -> None:
    """The export into ``<job>/export/`` and both artifacts (rank 0, when asked for)."""
    if not wanted(job):
        return
    folder = job.dir / EXPORT_DIR
    try:
        config = export_timm(job.checkpoint, folder, force=True)  # this run's latest weights
    except SdclrError as e:
        warn(f"logger.artifact: no export, so no backbone artifact ({e})")
        config = None
    run_id = job.wandb_id or job.dir.name
    meta = metadata(job)
    logged = []
    if job.tracker.log_artifact(
        f"checkpoint-{run_id}",
        "checkpoint",
        {job.checkpoint.name: job.checkpoint},
        metadata=meta,
        description="sdclr pretrain checkpoint (model, optimiser, method state; resumable)",
    ):
        logged.append(f"checkpoint-{run_id}")
    if config is not None and job.tracker.log_artifact(
        f"backbone-{run_id}",
        "model",
        {WEIGHTS: folder / WEIGHTS, CONFIG: folder / CONFIG},
        metadata={
            **meta,
            "load": config["sdclr"]["load"],
            "cifar_stem": config["sdclr"]["cifar_stem"],
        },
        description="the dense encoder for timm (model.safetensors + config.json); see "
        "metadata.load, DIR being the downloaded folder",
    ):
        logged.append(f"backbone-{run_id}")
    if logged:
        note(f"W&B artifacts: {', '.join(logged)} (export in {folder})")


def metadata(job: Job) -> dict[str, Any]:
    pre = job.metrics.get("pretrain", {})
    return {
        "job": job.dir.name,
        "label": job.metrics.get("run", {}).get("label"),
        "epochs": pre.get("epochs"),
        "final_loss": pre.get("final_loss"),
        "spec": model_spec(job.cfg),
    }
