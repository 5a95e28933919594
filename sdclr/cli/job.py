"""A job directory and what it holds, and the plan of what a run still has to do in it.

Files (rank 0 alone writes them under torchrun, each replaced atomically):
``config_resolved.yaml``, ``status.json`` (running / completed / failed / interrupted, the
stage, the error, the W&B id), ``metrics.json`` (the results of each finished stage),
``metrics.jsonl`` (every logged record, :class:`sdclr.utils.tracking.Tracker`) and
``checkpoints/pretrain.pt``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sdclr.config.derived import to_container
from sdclr.config.drift import config_differences
from sdclr.data.run_data import RunData
from sdclr.errors import CheckpointError, ConfigError
from sdclr.models.checkpoint import check_checkpoint_file, load_latest
from sdclr.utils.distributed import is_main_process
from sdclr.utils.io import write_atomically
from sdclr.utils.runlog import note, warn
from sdclr.utils.tracking import Tracker

ALL_STAGES = ("pretrain", "linear", "fewshot")


def planned_stages(cfg: DictConfig) -> list[str]:
    """The stages ``cfg`` asks for, in order: ``stage=all`` is pretrain, linear, fewshot, with
    ``stage.knn`` the kNN classifier right after pretraining (under torchrun every rank takes
    part in it, so it must not wait behind the probes that rank 0 alone runs) and
    ``stage.embed`` the map of the test features last."""
    if cfg.stage.name != "all":
        return [str(cfg.stage.name)]
    stages = list(ALL_STAGES)
    if cfg.stage.knn:
        stages.insert(1, "knn")
    if cfg.stage.embed:
        stages.append("embed")
    return stages


def checkpoint_path(job_dir: Path) -> Path:
    return job_dir / "checkpoints" / "pretrain.pt"


def check_writable(job_dir: Path) -> None:
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


def write_json(path: Path, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as JSON (rank 0 only; a crash leaves the old file)."""
    if not is_main_process():
        return  # under torchrun, rank 0 alone writes the job's files
    text = json.dumps(obj, indent=2, default=str)
    write_atomically(path, lambda tmp: tmp.write_text(text))


def write_status(job_dir: Path, status: dict[str, Any]) -> None:
    write_json(job_dir / "status.json", status)


def read_status(job_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((job_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def read_metrics(job_dir: Path) -> dict[str, Any]:
    path = job_dir / "metrics.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
    return {}


def previous_checkpoint(path: Path, config: dict[str, Any], force: bool) -> dict | None:
    """The job's own pretrain checkpoint, if any (the previous one when the latest cannot be
    read, :func:`sdclr.models.checkpoint.load_latest`), after checking it belongs to this
    config."""
    found = load_latest(path)
    if found is None:
        return None
    payload, path = found
    diffs = config_differences(payload.get("config", {}), config)
    if diffs and not force:
        raise ConfigError(
            f"{path.parent.parent} holds a run with a different config, so resuming it would "
            f"mix two experiments. Differing keys:\n  "
            + "\n  ".join(diffs)
            + "\nUse another output directory, or add resume.force=true to continue anyway"
        )
    if diffs:
        warn("resume.force=true: continuing despite config differences:\n  " + "\n  ".join(diffs))
    return payload


@dataclass
class Plan:
    """What the run asks for and what the job directory already holds."""

    stages: list[str]  # the stages asked for, in order
    todo: list[str]  # those not finished yet
    config: dict[str, Any]  # the resolved config, as saved and checked against checkpoints
    previous: dict[str, Any] | None  # the job's pretrain checkpoint, when it has one
    metrics: dict[str, Any]  # metrics.json as found (minus stages a resume invalidates)


def plan_job(cfg: DictConfig, job_dir: Path) -> Plan:
    """The stages to run in ``job_dir``: finished ones (in metrics.json, and for pretrain with
    its checkpoint) are skipped; an unfinished pretrain checkpoint invalidates later stages.
    Raises when an evaluation stage has no encoder to evaluate."""
    stages = planned_stages(cfg)
    ckpt = checkpoint_path(job_dir)
    if "pretrain" not in stages and cfg.stage.checkpoint is None and not ckpt.is_file():
        raise CheckpointError(
            f"stage={cfg.stage.name} evaluates a pretrained encoder, but no checkpoint was "
            f"given and {job_dir}/checkpoints/pretrain.pt does not exist; pass "
            f"stage.checkpoint=/path/to/job/checkpoints/pretrain.pt"
        )
    if cfg.stage.checkpoint is not None:  # before any of the job's files are written
        check_checkpoint_file(cfg.stage.checkpoint)
    config = to_container(cfg)
    previous = previous_checkpoint(ckpt, config, bool(cfg.resume.force))
    metrics = read_metrics(job_dir)
    if previous is not None and not previous.get("finished"):
        metrics.pop("pretrain", None)  # an unfinished pretrain invalidates later stages
    done = [s for s in stages if s in metrics and (s != "pretrain" or previous is not None)]
    if is_main_process():
        for s in done:
            note(f"{s}: already finished in {job_dir} (resumed job); skipped")
    return Plan(stages, [s for s in stages if s not in done], config, previous, metrics)


@dataclass
class Job:
    """A started job: what every stage reads (config, device, data, the split's counts and
    groups) and writes (metrics, the tracker)."""

    cfg: DictConfig
    dir: Path
    device: torch.device
    main_process: bool
    plan: Plan
    data: RunData
    counts: dict[str, list[int]]  # images per class of D_i, D_b and S_b
    groups: dict[str, list[int]]  # Many / Medium / Few classes, from the D_i counts
    pretrain_idx: np.ndarray  # positions of the pretraining set in data.train
    tracker: Tracker
    wandb_id: str | None

    @property
    def metrics(self) -> dict[str, Any]:
        return self.plan.metrics

    @property
    def checkpoint(self) -> Path:
        return checkpoint_path(self.dir)

    def save_config(self) -> None:
        if self.main_process:
            OmegaConf.save(OmegaConf.create(self.plan.config), self.dir / "config_resolved.yaml")

    def write_status(self, status: str, stage: str | None, **extra: Any) -> None:
        write_status(self.dir, {"status": status, "stage": stage, "error": None, **extra})

    def write_metrics(self) -> None:
        write_json(self.dir / "metrics.json", self.metrics)
