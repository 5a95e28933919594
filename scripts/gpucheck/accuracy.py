"""Step 6, ``accuracy``: SimCLR and SDCLR p90 on CIFAR-10-LT split 1, full data, for as many
epochs as the budget left allows (from the epoch times measured so far), then the probes."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpucheck.check import Check, CommandArgs, StepFailed
from gpucheck.jobs import job_metrics, run_command
from gpucheck.settings import (
    ACC_FRACTION,
    ACC_PROBE_EPOCHS,
    COMPILE_WORST_S,
    EPOCH_WORST_S,
    MAX_EPOCHS,
    METHODS,
    MIN_EPOCHS,
    PROBES_WORST_S,
    RUN_FRACTION,
    RUN_PROBE_EPOCHS,
    SAFETY,
    TOY_RUN,
    WANT_EPOCHS,
)


def accuracy_commands(args: CommandArgs) -> list[list[str]]:
    """One run per method of :data:`METHODS`, in its order, for ``args.epochs`` epochs."""
    size = (
        TOY_RUN
        if args.dry
        else [
            f"pretrain.epochs={args.epochs}",
            f"pretrain.warmup_epochs={min(10, args.epochs // 10)}",
        ]
    )
    return [run_command(args, f"acc-{name}", prune, *size) for name, prune in METHODS.items()]


def run_costs(check: Check) -> dict[str, Any]:
    """For the accuracy runs (full data on the GPU; toy sizes in the dry run): each method's
    seconds per epoch and one run's fixed seconds (its start, what its first epoch pays once,
    the two probes), from what this device measured (x SAFETY), each with its source; the
    named worst cases where nothing was measured."""
    scale = check.scale
    frac = ACC_FRACTION[scale] / RUN_FRACTION[scale]  # the default run's data to the runs'
    run = check.results("default_run")
    compiled = check.results("speed_compiled").get("bench") or {}
    eager = check.results("speed_eager").get("bench") or {}
    out: dict[str, Any] = {"sources": {}}
    for name, row in (("simclr", "simclr"), ("sdclr", "sdclr_p90")):
        if row in compiled and compiled["setup"]["compile"] == bool(check.cuda):
            # the bench times D_i whole; the runs' data is ACC_FRACTION of it
            seconds, source = compiled[row]["epoch_seconds"] * ACC_FRACTION[scale], "speed_compiled"
        elif run.get("steady_epoch_seconds"):
            # SDCLR p90's epoch for both: SimCLR's is shorter
            seconds, source = run["steady_epoch_seconds"] * frac, "default_run"
        elif row in eager:  # uncompiled: no faster than compiled, an upper bound
            seconds, source = eager[row]["epoch_seconds"] * ACC_FRACTION[scale], "speed_eager"
        else:
            seconds, source = EPOCH_WORST_S[name] * ACC_FRACTION[scale], None
        out[name] = round(seconds * SAFETY if source else seconds, 4)
        out["sources"][name] = source or "assumed (worst case)"
    start = check.costs.get("run_start_s")
    first = run.get("first_epoch_extra_seconds")
    first = COMPILE_WORST_S if first is None else SAFETY * first
    probes, source = None, None
    linear, fewshot = run.get("linear") or {}, run.get("fewshot") or {}
    if "train_seconds" in linear and "train_seconds" in fewshot:
        # probe training scales with its epochs and images, its features with the images
        probes = sum(
            p["train_seconds"] * (acc / ran) * frac + p.get("setup_seconds", 0.0) * frac
            for p, acc, ran in zip(
                (linear, fewshot), ACC_PROBE_EPOCHS[scale], RUN_PROBE_EPOCHS[scale]
            )
        )
        source = "default_run"
    elif "linear_probe" in eager:  # the bench's 30-epoch linear probe over the whole pool;
        # the few-shot probe: about a tenth of it plus its features (15 s)
        probes = (1.1 * eager["linear_probe"]["seconds"] + 15.0) * ACC_FRACTION[scale]
        source = "speed_eager"
    out["sources"]["probes"] = source or "assumed (worst case)"
    probes = PROBES_WORST_S if probes is None else SAFETY * probes
    out["fixed"] = round(start + first + probes, 1)
    out["sources"]["start"] = check.costs.measured_by.get("run_start_s", "assumed (worst case)")
    out["sources"]["first_epoch"] = (
        "default_run"
        if run.get("first_epoch_extra_seconds") is not None
        else "assumed (worst case)"
    )
    out["measured"] = all(not s.startswith("assumed") for s in out["sources"].values())
    return out


def plan_epochs(
    left: float, simclr: float, sdclr: float, fixed: float, reserve: float
) -> tuple[int, str]:
    """Pretraining epochs for both methods: up to MAX_EPOCHS with ``reserve`` seconds kept for
    the steps after; WANT_EPOCHS if that fits only without the reserve; 0 below MIN_EPOCHS."""

    def fit(seconds: float) -> int:
        return max(0, int((seconds - 2 * fixed) // (simclr + sdclr)))

    n = min(MAX_EPOCHS, fit(left - reserve))
    note = f"{n} epochs fit in {left:.0f} s, {reserve:.0f} s kept for the steps after"
    if n < WANT_EPOCHS and fit(left) > n:
        n = min(WANT_EPOCHS, fit(left))
        note = f"{n} epochs fit in {left:.0f} s only without the later steps' {reserve:.0f} s"
    if n < MIN_EPOCHS:
        return 0, f"fewer than {MIN_EPOCHS} epochs of both methods fit in {left:.0f} s"
    return n, note


def accuracy_minimum(check: Check) -> float:
    """The accuracy step's lower bound: both runs at MIN_EPOCHS (the dry run: its toy runs,
    one epoch each, side by side)."""
    s = run_costs(check)
    if check.dry:
        return s["fixed"] + s["simclr"] + s["sdclr"]
    return 2 * s["fixed"] + MIN_EPOCHS * (s["simclr"] + s["sdclr"])


def later_reserve(check: Check) -> float:
    """What the steps after the accuracy step need at least (those selected)."""
    names = [s.name for s in check.plan]
    later = [s for s in check.plan[names.index("accuracy") + 1 :] if check.chosen(s.name)]
    return sum(s.estimate(check) for s in later if not (s.cuda_only and check.dry))


@dataclass
class _Runs:
    """The accuracy step's runs: their commands, and their results published as they go."""

    check: Check
    results: dict[str, Any]

    def job(self, name: str) -> Path:
        return self.check.work / "jobs" / f"acc-{name}"

    def command(self, name: str, n: int) -> list[str]:
        shutil.rmtree(self.job(name), ignore_errors=True)  # never resume an earlier check's
        return accuracy_commands(self.check.command_args(epochs=n))[list(METHODS).index(name)]

    def record(self, name: str, n: int, outcome: str | StepFailed, t0: float) -> None:
        if isinstance(outcome, StepFailed):
            self.results[name] = {
                "status": "failed",
                "error": str(outcome),
                **job_metrics(self.job(name)),
            }
        else:
            self.results[name] = {
                "status": "ok",
                "planned_epochs": n,
                **job_metrics(self.job(name)),
            }
        self.results[name]["wall_seconds"] = round(time.monotonic() - t0, 1)
        self.check.publish("accuracy", self.results)

    def progress(self, name: str) -> Callable[[], None]:
        def poll() -> None:  # the epochs reached so far, from the run's metrics.jsonl
            self.results[name] = {"status": "running", **job_metrics(self.job(name))}
            self.check.publish("accuracy", self.results)

        return poll


def _run_side_by_side(runs: _Runs, epochs: int) -> None:
    """The dry run's toy runs of one epoch: nothing to decide between them, so at once."""
    t0 = time.monotonic()
    labelled = [(f"accuracy-{name}", runs.command(name, epochs)) for name in METHODS]
    for name, outcome in zip(METHODS, runs.check.run_side_by_side(labelled)):
        runs.record(name, epochs, outcome, t0)


def _run_in_turn(runs: _Runs, epochs: int, speed: dict[str, Any]) -> None:
    """One run after the other, the second one's epochs cut to the time left (the first may
    have taken longer than estimated)."""
    check = runs.check
    for name in METHODS:
        n = min(epochs, max(0, int((check.left() - speed["fixed"]) // speed[name])))
        if n < min(MIN_EPOCHS, epochs):
            runs.results[name] = {
                "status": "skipped",
                "reason": f"budget: {check.left():.0f} s left, under {MIN_EPOCHS} epochs",
            }
            continue
        cmd, t0 = runs.command(name, n), time.monotonic()
        try:
            runs.record(
                name, n, check.run(f"accuracy-{name}", cmd, on_poll=runs.progress(name)), t0
            )
        except StepFailed as e:
            runs.record(name, n, e, t0)


def step_accuracy(check: Check) -> dict[str, Any]:
    speed = run_costs(check)
    if check.dry:
        epochs, note = 1, "dry run: 1 epoch"
    else:
        epochs, note = plan_epochs(
            check.left(), speed["simclr"], speed["sdclr"], speed["fixed"], later_reserve(check)
        )
    results: dict[str, Any] = {"planned_epochs": epochs, "plan": note, "estimates": speed}
    if epochs == 0:
        raise StepFailed(f"budget: {note}", results)
    if check.dry:
        _run_side_by_side(_Runs(check, results), epochs)
    else:
        _run_in_turn(_Runs(check, results), epochs, speed)
    bad = [n for n in METHODS if results[n]["status"] != "ok"]
    if bad:
        first = results[bad[0]]
        raise StepFailed(f"{bad[0]}: {first.get('error') or first.get('reason')}", results)
    return results
