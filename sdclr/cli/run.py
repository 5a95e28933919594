"""The single Hydra entry point: ``sdclr [overrides]`` / ``python -m sdclr``.

A run reads top to bottom: plan the job (what is asked, what its directory already holds),
load the data, check the data against the stages, start the job (its files, run record and
tracker), run each stage from :data:`sdclr.cli.stages.STAGES`, finish (status, report,
summary). One job directory per run holds the resolved config, checkpoints, ``metrics.jsonl``
(every logged record), ``metrics.json`` (the results of each finished stage) and
``status.json`` (:mod:`sdclr.cli.job`). Stages: ``pretrain``, ``linear``, ``fewshot``, ``knn``,
``embed`` (a 2-D map of the test features), or ``all`` (pretrain, linear, fewshot in order;
with ``stage.knn`` the kNN classifier after pretraining).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from sdclr.cli.hydra_errors import config_errors_reported
from sdclr.cli.job import Job, Plan, check_writable, plan_job, read_status, write_status
from sdclr.cli.stages import STAGES, StageInputs, check_inputs
from sdclr.cli.summary import job_report, print_summary, run_record
from sdclr.cli.sweep import sweep_objective
from sdclr.config.schema import register_configs
from sdclr.config.validate import check_world_size, validate
from sdclr.data.run_data import RunData, load_run_data
from sdclr.errors import JobBusyError, SdclrError
from sdclr.utils.distributed import (
    env_rendezvous,
    init_from_env,
    is_main_process,
    resolve_device,
    world_size,
)
from sdclr.utils.io import CONF_DIR
from sdclr.utils.joblock import JobLock, busy_message, holder
from sdclr.utils.memory import keep_freed_memory
from sdclr.utils.rng import seed_everything
from sdclr.utils.runlog import append_to, job_log
from sdclr.utils.signals import Interrupted, StopSignal, signal_name
from sdclr.utils.tracking import Tracker
from sdclr.utils.tracking import sweep_group as sweep_group_of

# --- the run --------------------------------------------------------------------------------


@dataclass
class RunProgress:
    """How far a run got, for its caller to read when it raised: ``stage_started`` once the
    inputs are checked and the job's files are being (re)written."""

    stage_started: bool = False


def run(
    cfg: DictConfig,
    job_dir: Path,
    sweep_group: str | None = None,
    progress: RunProgress | None = None,
) -> dict[str, Any]:
    """Run the configured stages in ``job_dir``; returns the metrics dict. ``progress``, when
    given, says how far the run got (the Hydra wrapper reads it when the run raises)."""
    progress = RunProgress() if progress is None else progress
    validate(cfg)
    job_dir = Path(job_dir)
    check_writable(job_dir)
    device = init_from_env(str(cfg.device), float(cfg.distributed.timeout_min))
    device = device or resolve_device(str(cfg.device))
    if device.type == "cpu":
        keep_freed_memory()  # a CPU step reuses its large activations' pages (utils/memory.py)
    check_world_size(cfg, world_size())
    if world_size() > 1 and is_main_process():
        print(
            f"process group: {world_size()} ranks over {dist.get_backend()}, collectives time "
            f"out after {cfg.distributed.timeout_min:g} min (distributed.timeout_min)",
            flush=True,
        )
    # one writer per job directory: rank 0 holds it until the run ends, however it ends, and
    # (once it holds it) writes the job's run.log as the run goes (sdclr/utils/runlog.py)
    main_process = is_main_process()
    with JobLock(job_dir) if main_process else nullcontext(), job_log(job_dir, main_process):
        seed_everything(cfg.seed)
        plan = plan_job(cfg, job_dir)
        data = load_run_data(cfg, device)
        inputs = check_inputs(cfg, data, plan.stages)
        # inputs are checked: from here on this job's files are (re)written
        progress.stage_started = True
        job = start_job(cfg, job_dir, device, plan, data, inputs, sweep_group)
        exit_code = 1
        try:
            with StopSignal() as stop:
                run_stages(job, plan.todo, stop)
                exit_code = 0
        finally:
            if exit_code:
                job.tracker.finish(exit_code)
        finish_job(job)
    return job.metrics


def run_stages(job: Job, stages: list[str], stop: StopSignal) -> None:
    """Run ``stages`` in order, writing the metrics after each. A signal that arrived during
    a stage which finishes whatever it is told (the kNN classifier, the map, the last
    pretraining epoch) stops the run before the next stage starts, rather than at the end of
    that stage's first epoch; the finished stages are kept."""
    for stage in stages:
        if stop.requested:
            raise Interrupted(
                f"{signal_name(stop.signum)} received: stopped before the {stage} stage, the "
                f"stages before it are kept; run the same command again to go on",
                stop.signum,
            )
        job.write_status("running", stage, wandb_id=job.wandb_id)
        STAGES[stage](job, stage, stop)
        job.write_metrics()


def start_job(
    cfg: DictConfig,
    job_dir: Path,
    device: torch.device,
    plan: Plan,
    data: RunData,
    inputs: StageInputs,
    sweep_group: str | None,
) -> Job:
    """Write the resolved config and a running status, record what runs in the metrics and
    start the tracker (and W&B, re-attaching to the job's earlier run on resume)."""
    main_process = is_main_process()
    tracker = Tracker(job_dir, enabled=main_process)
    job = Job(
        cfg=cfg,
        dir=job_dir,
        device=device,
        main_process=main_process,
        plan=plan,
        data=data,
        counts=inputs.counts,
        groups=inputs.groups,
        pretrain_idx=inputs.pretrain_idx,
        tracker=tracker,
        wandb_id=None,
    )
    job.save_config()
    job.write_status("running", (plan.todo or plan.stages)[0])
    plan.metrics["run"] = run_record(cfg, device, data)
    if cfg.logger.name == "wandb":
        job.wandb_id = tracker.start_wandb(
            cfg.logger,
            plan.config,
            name=job_dir.name,
            group=cfg.logger.group or sweep_group,
            resume_id=read_status(job_dir).get("wandb_id") or (plan.previous or {}).get("wandb_id"),
        )
    return job


def finish_job(job: Job) -> None:
    """The completed status; on rank 0 the job's report, the tracker's end and the summary."""
    job.write_status("completed", job.plan.stages[-1], wandb_id=job.wandb_id)
    if job.main_process:
        job_report(job.dir, job.metrics, job.tracker)
        job.tracker.finish(0)
        print_summary(job.cfg, job.metrics, job.dir)


# --- Hydra entry ----------------------------------------------------------------------------


def _hydra_job(cfg: DictConfig, failed: list[str]) -> float | None:
    """One job of a Hydra (multi)run; a multirun's failed job is appended to ``failed``
    (``name: message``) and the next one runs."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    resume_path = cfg.get("resume", {}).get("path")
    job_dir = Path(resume_path).expanduser() if resume_path else Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    group = sweep_group_of(hc.sweep.dir) if multirun else None
    progress = RunProgress()
    try:
        metrics = run(cfg, job_dir, sweep_group=group, progress=progress)
        # the sweeper's objective (sweep.objective): hydra/sweeper=optuna searches on it
        searching = multirun and "BasicSweeper" not in str(hc.sweeper.get("_target_"))
        return sweep_objective(metrics, cfg.sweep.objective, searching)
    except Interrupted as e:
        write_status(
            job_dir,
            {
                "status": "interrupted",
                "error": str(e),
                "wandb_id": read_status(job_dir).get("wandb_id"),
            },
        )
        print(f"interrupted: {e}", file=sys.stderr, flush=True)
        if is_main_process():
            append_to(job_dir, f"interrupted: {e}")
        # USR2 under submitit (hydra/launcher=slurm): its handler requeues the job, which
        # resumes from the checkpoint just written, and exits
        e.pass_on()
        sys.exit(128 + e.signum)
    except Exception as e:
        handled = isinstance(e, SdclrError)
        message = str(e) if handled else f"{type(e).__name__}: {e}"
        # an error before any stage ran (config, data) leaves an earlier job's files alone,
        # and a busy job directory is another run's
        busy = isinstance(e, JobBusyError)
        if not busy and (progress.stage_started or not (job_dir / "status.json").exists()):
            try:
                write_status(
                    job_dir,
                    {"status": "failed", "error": message, "traceback": traceback.format_exc()},
                )
            except OSError:
                pass
            if is_main_process():  # the line below (or the traceback), in the job's run.log
                append_to(job_dir, f"error: {message}")
        if cfg.get("debug", False) or (not handled and not multirun):
            raise
        print(f"error: {message}", file=sys.stderr, flush=True)
        if not multirun:
            sys.exit(2)
        failed.append(f"{job_dir.name}: {message}")


def _precheck_output_dir(argv: list[str]) -> None:
    """Hydra writes its files into the job directory before any of our code runs: stop
    first when another run holds the requested one. (Whether the directory can be created
    at all is checked once the config is resolved: sdclr/cli/hydra_errors.py.)"""
    target = Path("outputs")
    for arg in argv:
        for key in ("hydra.run.dir=", "hydra.sweep.dir="):
            if arg.startswith(key):
                target = Path(arg[len(key) :])
    # rank 0: the one that holds it
    held = holder(target.expanduser()) if os.environ.get("RANK", "0") == "0" else None
    if held is not None:
        print(f"error: {busy_message(target, held)}", file=sys.stderr)
        sys.exit(2)


def _share_start_time() -> None:
    """Under torchrun, give every rank rank 0's start time before Hydra picks the job
    directory, so they all use the same directory. It goes through the rendezvous store;
    the process group is made later, on the same store, once the config (and its
    ``distributed.timeout_min``) is known."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "SDCLR_RUN_TIME" in os.environ:
        return
    from datetime import datetime

    store, rank, _ = env_rendezvous()
    key = "sdclr/run_time"
    if rank == 0:
        store.set(key, datetime.now().isoformat())
    os.environ["SDCLR_RUN_TIME"] = store.get(key).decode()  # waits for rank 0's


def main() -> None:
    import hydra

    _precheck_output_dir(sys.argv[1:])
    _share_start_time()
    register_configs()
    failed: list[str] = []  # a multirun's failed jobs, reported at its end

    def task(cfg: DictConfig) -> float | None:
        return _hydra_job(cfg, failed)

    entry = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(task)
    t0 = time.time()
    try:
        with config_errors_reported(sys.argv[1:]):  # one line for what Hydra cannot compose
            entry()
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if failed:
        print(
            f"{len(failed)} job(s) failed ({time.time() - t0:.0f} s):\n  " + "\n  ".join(failed),
            file=sys.stderr,
        )
        sys.exit(1)
