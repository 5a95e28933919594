"""The plan: every step in its order, with its title, what it runs (and its commands), its
estimate, what it needs, in one table."""

from __future__ import annotations

from pathlib import Path

from gpucheck.accuracy import accuracy_commands, accuracy_minimum, step_accuracy
from gpucheck.check import CommandArgs, Step
from gpucheck.cuda_tests import cuda_tests_commands, cuda_tests_estimate, step_cuda_tests
from gpucheck.default_run import default_run_commands, default_run_estimate, step_default_run
from gpucheck.env import env_commands, step_env
from gpucheck.files import files_commands, files_estimate, step_files
from gpucheck.settings import CIFAR, DEFAULT_RUN_CAP_S, TINY_IMAGENET, WANT_EPOCHS
from gpucheck.speed import speed_commands, speed_estimate, step_speed


def speed_step(name: str, title: str) -> Step:
    """A speed step: the bench rows of :data:`gpucheck.speed.SPEED` that fit."""
    return Step(
        name,
        title,
        lambda c: step_speed(c, name),
        speed_estimate(name),
        needs=CIFAR,
        commands=speed_commands(name),
    )


PLAN = [
    Step(
        "env",
        "environment: GPU, driver, versions, imports, device=auto",
        step_env,
        lambda c: 2.0 if c.dry else 10.0,
        commands=env_commands,
    ),
    Step(
        "default_run",
        "the default runner on CUDA, every default on: SDCLR p90, 2 epochs at 20%, probes",
        step_default_run,
        default_run_estimate,
        needs=CIFAR,
        cap=DEFAULT_RUN_CAP_S,
        commands=default_run_commands,
    ),
    speed_step(
        "speed_eager",
        "speed, eager (sdclr.bench --no-compile): SimCLR, SDCLR p90, ceiling, probe",
    ),
    Step(
        "cuda_tests",
        "the tests that skip themselves without CUDA",
        step_cuda_tests,
        cuda_tests_estimate,
        cuda_only=True,
        needs=(*CIFAR, TINY_IMAGENET),
        commands=cuda_tests_commands,
    ),
    speed_step(
        "speed_compiled",
        "speed, compiled (sdclr.bench): the rows that fit, each compile timed apart",
    ),
    Step(
        "accuracy",
        "SimCLR and SDCLR p90, CIFAR-10-LT split 1, full data, then probes",
        step_accuracy,
        accuracy_minimum,
        needs=CIFAR,
        commands=accuracy_commands,
    ),
    speed_step(
        "speed_reduce_overhead",
        "speed, compile mode reduce-overhead (CUDA graphs): the method rows that fit",
    ),
    Step(
        "files",
        "224-px file path: decode + views vs DataLoader + PIL; data=folder run",
        step_files,
        files_estimate,
        needs=CIFAR[:1],
        commands=files_commands,
    ),
]
STEP_BY_NAME = {s.name: s for s in PLAN}
STEPS = tuple(STEP_BY_NAME)


def commands(
    step: str,
    work: Path,
    extra: list[str] | tuple[str, ...] = (),
    epochs: int = WANT_EPOCHS,
    dry: bool = False,
    rows: list[str] | None = None,
) -> list[list[str]]:
    """The commands a step runs, at full size or (``dry``) at the dry run's toy sizes;
    ``extra``: Hydra overrides appended to the runs; ``rows``: a speed step's rows (default:
    all of them)."""
    if step not in STEP_BY_NAME:
        raise SystemExit(f"unknown step {step!r}; choose from {', '.join(STEPS)}")
    args = CommandArgs(work, dry, tuple(extra), epochs, rows)
    return STEP_BY_NAME[step].commands(args)
