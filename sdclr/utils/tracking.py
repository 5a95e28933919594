"""Experiment tracking: a JSON-lines file in the job directory, plus W&B when asked for.

The JSON-lines file always gets every record, so nothing depends on W&B. W&B problems never
stop a run: without an API key it logs offline; if it cannot start at all, the run goes on
with a warning.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def sweep_group(sweep_dir: str | Path) -> str:
    """W&B group of a sweep's runs (and of its report): the sweep directory's last two parts,
    e.g. ``2026-11-22_10-00-00`` for ``outputs/multirun/2026-11-22/10-00-00``."""
    return "_".join(Path(sweep_dir).resolve().parts[-2:])


def wandb_scalars(record: dict[str, Any], kind: str) -> dict[str, float | int]:
    """The numbers of a record as W&B keys ``kind/key``; a dict of numbers (e.g. the mask's
    per-layer density) becomes ``kind/key/name``. Lists and None stay in metrics.jsonl only."""
    out: dict[str, float | int] = {}
    for k, v in record.items():
        if isinstance(v, int | float):
            out[f"{kind}/{k}"] = v
        elif isinstance(v, dict):
            for name, x in v.items():
                if isinstance(x, int | float):
                    out[f"{kind}/{k}/{name}"] = x
    return out


class Tracker:
    """``log`` appends to ``metrics.jsonl`` (and W&B); ``summary`` sets final values."""

    def __init__(self, job_dir: Path, enabled: bool = True):
        self.job_dir = Path(job_dir)
        self.enabled = enabled  # False on non-zero ranks
        self.jsonl = self.job_dir / "metrics.jsonl"
        self.wandb_run = None

    def start_wandb(
        self, logger_cfg, config: dict, name: str, group: str | None, resume_id: str | None = None
    ) -> str | None:
        """Start (or re-attach to) a W&B run; returns its id, or None when unavailable."""
        if not self.enabled:
            return None
        mode = logger_cfg.mode
        if mode == "auto":
            mode = "online" if has_wandb_credentials() else "offline"
        try:
            import wandb
        except ImportError:
            warnings.warn(
                "logger=wandb but the wandb package is not installed; logging to "
                "metrics.jsonl only (pip install wandb)",
                stacklevel=2,
            )
            return None
        kwargs = dict(
            project=logger_cfg.project,
            entity=logger_cfg.entity,
            config=config,
            name=name,
            group=group,
            tags=list(logger_cfg.tags),
            dir=str(logger_cfg.dir or self.job_dir),
            id=resume_id,
            resume="allow" if resume_id else None,
            reinit="finish_previous",
        )
        for attempt_mode in dict.fromkeys([mode, "offline"]):
            try:
                self.wandb_run = wandb.init(mode=attempt_mode, **kwargs)
                if attempt_mode != mode:
                    warnings.warn(
                        f"W&B could not start in {mode} mode; logging offline "
                        f"(sync later with `wandb sync`)",
                        stacklevel=2,
                    )
                return self.wandb_run.id
            except Exception as e:  # W&B must never crash a run
                last_error = e
        warnings.warn(
            f"W&B could not start ({last_error}); logging to metrics.jsonl only", stacklevel=2
        )
        return None

    def log(self, record: dict[str, Any], kind: str, step: int | None = None) -> None:
        if not self.enabled:
            return
        rec = {"kind": kind, "time": time.time(), **{k: _jsonable(v) for k, v in record.items()}}
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.wandb_run is not None:
            try:
                self.wandb_run.log(wandb_scalars(record, kind), step=step)
            except Exception as e:
                warnings.warn(f"W&B log failed ({e}); continuing", stacklevel=2)

    def summary(self, values: dict[str, Any]) -> None:
        if self.wandb_run is None:
            return
        try:
            for k, v in values.items():
                self.wandb_run.summary[k] = v
        except Exception as e:
            warnings.warn(f"W&B summary failed ({e}); continuing", stacklevel=2)

    def log_files(
        self,
        tables: dict[str, dict[str, list]] | None = None,
        images: dict[str, Path] | None = None,
    ) -> None:
        """Tables (``{"columns": [...], "data": [[...], ...]}``, as ``wandb.Table``) and PNG
        plots."""
        if self.wandb_run is None:
            return
        try:
            import wandb

            payload: dict[str, Any] = {}
            for key, table in (tables or {}).items():
                payload[key] = wandb.Table(columns=table["columns"], data=table["data"])
            for key, path in (images or {}).items():
                if Path(path).is_file():
                    payload[key] = wandb.Image(str(path))
            if payload:
                self.wandb_run.log(payload)
        except Exception as e:
            warnings.warn(f"W&B file logging failed ({e}); continuing", stacklevel=2)

    def log_artifact(
        self,
        name: str,
        kind: str,
        files: dict[str, Path],
        metadata: dict[str, Any] | None = None,
        description: str | None = None,
    ) -> bool:
        """Log ``files`` (``{name in the artifact: path}``) as a W&B artifact of type ``kind``,
        an output of this run (``run.log_artifact``; a new version each time the same name is
        logged). W&B copies the files to its staging folder (under ``WANDB_DATA_DIR``) until
        they are uploaded, so the job's own files may change afterwards. Returns whether it
        was logged; never raises."""
        if self.wandb_run is None:
            return False
        try:
            import wandb

            artifact = wandb.Artifact(
                name, type=kind, description=description, metadata=metadata or {}
            )
            for inside, path in files.items():
                artifact.add_file(str(path), name=inside)
            self.wandb_run.log_artifact(artifact, aliases=["latest"])
            return True
        except Exception as e:
            warnings.warn(f"W&B artifact {name} failed ({e}); continuing", stacklevel=2)
            return False

    def finish(self, exit_code: int = 0) -> None:
        if self.wandb_run is not None:
            try:
                self.wandb_run.finish(exit_code=exit_code)
            except Exception as e:
                warnings.warn(f"W&B finish failed ({e})", stacklevel=2)
            self.wandb_run = None
