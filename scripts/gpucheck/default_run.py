"""Step 2, ``default_run``: the runner as users get it on CUDA, every numeric default left
alone, at a small size; what ran, its epoch times and the compile of its training graphs,
timed apart."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from gpucheck.check import Check, CommandArgs, StepFailed
from gpucheck.jobs import job_metrics, read_jsonl, run_command
from gpucheck.settings import CUDA_DEFAULTS, DEFAULT_RUN, DEFAULT_RUN_WORK_S, NUMERICS


def default_run_commands(args: CommandArgs) -> list[list[str]]:
    # no precision / compile / channels_last / compile_mode / fuse_branches: the defaults
    return [run_command(args, "default", *DEFAULT_RUN[args.scale])]


def epoch_timing(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Each pretraining epoch's training time from metrics.jsonl: its record's time less the
    record before it (the kNN pass at epoch 0, the previous epoch's diagnostics, or the
    previous epoch; the step records left out), so the monitors' passes are not counted.
    The steady epoch is the mean of all but the first; the compile of the training graphs
    (and the short last batch's recompile) is the first epoch's time beyond it."""
    spans: list[float | None] = []
    prev: float | None = None
    for r in records:
        if r.get("kind") == "pretrain" and "epoch_loss" not in r:
            continue  # a step record, inside an epoch
        if r.get("kind") == "pretrain":
            spans.append(None if prev is None else r["time"] - prev)
        prev = r.get("time", prev)
    out: dict[str, Any] = {"epoch_train_seconds": spans}
    steady = [s for s in spans[1:] if s is not None]
    if steady:
        out["steady_epoch_seconds"] = sum(steady) / len(steady)
        if spans[0] is not None:
            out["first_epoch_seconds"] = spans[0]
            out["compile_train_seconds"] = max(0.0, spans[0] - out["steady_epoch_seconds"])
    return out


def default_run_results(job: Path, wall: float | None) -> dict[str, Any]:
    """What the default run measured: its job's metrics (job_metrics), what ran (the
    numerics metrics.json records), the epoch times with the compile apart, and the run's
    own cost beyond pretraining and the probes (its start, data, job files, report)."""
    out = job_metrics(job)
    out.update(epoch_timing(read_jsonl(job / "metrics.jsonl")))
    pre = out.get("pretrain") or {}
    if pre:
        out["ran"] = {k: pre.get(k) for k in NUMERICS}
        if "steady_epoch_seconds" in out and pre.get("seconds") is not None:
            # everything pretraining paid once: the compile, the kNN pass at epoch 0, the
            # monitors' evaluation graphs
            out["first_epoch_extra_seconds"] = max(
                0.0, pre["seconds"] - pre["epochs"] * out["steady_epoch_seconds"]
            )
    out["wall_seconds"] = wall
    parts = [pre.get("seconds")] + [
        (out.get(p) or {}).get("seconds") for p in ("linear", "fewshot")
    ]
    if wall is not None and all(isinstance(p, (int, float)) for p in parts):
        out["run_start_seconds"] = max(0.0, wall - sum(parts))
    return out


def step_default_run(check: Check) -> dict[str, Any]:
    job = check.work / "jobs" / "default"
    shutil.rmtree(job, ignore_errors=True)  # a fresh job: never resume an earlier check's
    cmd = default_run_commands(check.command_args())[0]
    t0 = time.monotonic()
    error = None
    try:
        check.run(
            "default-run",
            cmd,
            on_poll=lambda: check.publish("default_run", default_run_results(job, None)),
        )
    except StepFailed as e:
        error = e
    results = default_run_results(job, round(time.monotonic() - t0, 1))
    # the first compiled command of the check: later steps plan from its compile
    check.costs.measure("compile_s", results.get("compile_train_seconds"), "default_run")
    check.costs.measure("run_start_s", results.get("run_start_seconds"), "default_run")
    if error is not None:
        raise StepFailed(str(error), results)
    if not check.dry:  # the point of the step: the configuration users get on CUDA ran
        ran = results.get("ran") or {}
        off = {k: ran.get(k) for k, v in CUDA_DEFAULTS.items() if ran.get(k) != v}
        if off:
            results["expected"] = CUDA_DEFAULTS
            raise StepFailed(
                f"the default run on CUDA did not run the CUDA defaults: {off}", results
            )
    return results


def default_run_estimate(check: Check) -> float:
    c = check.costs
    return c.get("run_start_s") + c.get("compile_s") + DEFAULT_RUN_WORK_S
