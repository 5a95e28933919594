#!/usr/bin/env python
"""Everything a GPU can tell us in one device call, by value and risk (``make gpu-check``).

    python scripts/gpu_check.py --budget 480 --out DIR     # on a CUDA machine
    python scripts/gpu_check.py --dry-run --out DIR        # the same plan on the CPU, toy sizes

The plan, in this order, under one time budget (``--budget`` seconds; ``--steps`` a subset):

1. ``env``: GPU name and memory, driver, torch / CUDA / cuDNN / timm versions, commit; the
   package imports and ``device=auto`` picks CUDA.
2. ``default_run``: the runner as users get it on CUDA, ``python -m sdclr stage=all`` (SDCLR
   p90, split 1) for 2 epochs at 20% of the data (``data.fraction=0.2 pretrain.epochs=2
   pretrain.warmup_epochs=1``) with 2-epoch probes, every numeric default left alone (bf16,
   channels_last, torch.compile, its mode, the fused branches' default): it records what the
   run's metrics.json says ran (and fails when that is not the CUDA default), its epoch times
   and the compile of its training graphs, timed apart (the first epoch's training less the
   second's). stage=all, not pretrain: the probes' bf16 feature pass and the monitors run as
   users get them too.
3. ``speed_eager``: ``python -m sdclr.bench --no-compile``: SimCLR, SDCLR p90, the model-only
   ceiling and the linear probe, eager: no compile to wait for, so these numbers come back.
4. ``cuda_tests``: every test that skips itself on CPU (found by its ``skipif(not
   torch.cuda.is_available())`` mark), with their outcomes.
5. ``speed_compiled``: the bench's compiled rows (SimCLR, SDCLR p90, the ceiling, the fused
   branches, the augmentation, the step ratio: in that order, as many as the budget
   allows), each row's compile timed apart from its steady state.
6. ``accuracy``: SimCLR and SDCLR p90 on CIFAR-10-LT split 1, full data, batch 512, the
   published optimiser, for as many epochs as the budget left allows (from the measured
   epoch times: up to 200, at least 100 when that fits), then the full linear and few-shot
   probes.
7. ``speed_reduce_overhead``: the method rows again with ``--compile-mode reduce-overhead``.
8. ``files``: the 224-px file path: nvJPEG decoding plus both views against the DataLoader + PIL
   baseline (the bench's ``loading_224`` row), and one short ``data=folder`` run (ResNet-50).

The budget is planned from measured costs (:class:`Costs`): what one compiled ResNet-18
training graph set takes to compile, a command's start, one bench row; each is measured on
the device by the first command that can (the default run, then the bench rows) and later
steps plan from it (x ``SAFETY``). Until a cost is measured the planner assumes its named
worst case (``COMPILE_WORST_S`` and the others below). Every step checks the clock first and
is skipped, with the reason, when its estimate does not fit in the time left; the speed steps
run as many of their rows as fit. Commands run in subprocesses whose timeout is the time left
(the default run: at most ``DEFAULT_RUN_CAP_S``). A failing step is recorded with its error,
and with what it measured before it failed, and the next step runs. The default budget, 480
s, leaves ``MARGIN_S`` = 60 s of a device call's 540 s outside the plan: installing the
wheels, starting Python, the last command's kill (SIGTERM, 5 s, SIGKILL) and the last writes.

Every number is written the moment it is measured: the bench rewrites its JSON after every
row, the runner appends to metrics.jsonl, and this script reads both while they run (every
``POLL_S`` seconds) and after every command rewrites its three result files:
``DIR/gpu_check.json`` (all results, the planner's costs, partial bench rows of a command
stopped or failed part-way), ``DIR/gpu_check.md`` (a table per step) and ``DIR/gpu_check.log``
(the commands' output, trimmed): what a device call brings back stays within its limits, and a
call killed at its limit still brings back every finished row. Jobs, trees and caches go to
``--work``.

``--dry-run`` runs the same plan in the same order on the CPU at toy sizes (stage widths
8-64, 1% of the data; the CUDA-only test step is skipped: "no CUDA device"), in 1 to 1.5
minutes on a 2-core CPU: its independent toy commands run side by side
(:meth:`Check.run_side_by_side`). On a CPU nothing compiles (the runner's and the bench's CPU
default; compiling the toy rows on the CPU takes minutes), so the dry run checks the plumbing
and the planner, not the compiler.
tests/e2e/test_gpu_check.py runs it. ``--prepare DIR`` fills the folder a device call carries
(wheels, data, commit); see ``make gpu-check-device`` and scripts/gpu_check_device.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
STEPS = (
    "env",
    "default_run",
    "speed_eager",
    "cuda_tests",
    "speed_compiled",
    "accuracy",
    "speed_reduce_overhead",
    "files",
)
CIFAR = ("cifar10-jpg.tar.gz", "cifar10-train-labels.npy")
TINY_IMAGENET = "tiny-imagenet-32.tar.gz"  # the nvJPEG test's image tree
MARK = "GPU_CHECK_JSON: "  # the line a helper subprocess prints its result on
FAIL_ENV = "SDCLR_GPU_CHECK_FAIL"  # for tests: comma-separated steps that fail on purpose
LOG_HEAD, LOG_TAIL = 4 << 10, 28 << 10  # bytes of each command's output kept in the log
POLL_S = 10.0  # while a command runs: read its partial results and rewrite the three files

# The time: a device call may run 540 s; the plan gets 480 of them, the rest is margin.
CALL_LIMIT_S = 540.0
MARGIN_S = 60.0  # wheels, Python's start, the last kill (SIGTERM, 5 s, SIGKILL), last writes
BUDGET_S = CALL_LIMIT_S - MARGIN_S
# Worst cases the planner assumes until the device has measured them (assumptions, not
# measurements: no GPU had run the plan when they were set). A cold inductor cache every call:
COMPILE_WORST_S = 120.0  # compiling one ResNet-18 training graph set (forward + backward of
# backbone and head, the augmentation, the short last batch's recompile)
START_WORST_S = 45.0  # a command's own start: Python, torch / timm imports, the first
# CIFAR-10 decode (about 20 s on a 2-core CPU), job files and the report at a run's end
ROW_WORST_S = 30.0  # one eager bench row at batch 512: building, warm-up and timed steps
PROBES_WORST_S = 90.0  # a full-size run's linear (30 epochs) and few-shot probes
EPOCH_WORST_S = {"simclr": 2.0, "sdclr": 3.0}  # one full-data pretraining epoch
DEFAULT_RUN_WORK_S = 30.0  # the default run beyond start and compile: 2 small epochs, the
# monitors, 2-epoch probes at 20% of the data
DEFAULT_RUN_CAP_S = 300.0  # the most the default run may take: a hang leaves time for the rest
PYTEST_START_S = 30.0  # pytest's start and collection of the CUDA tests' files
FOLDER_WORK_S = 40.0  # the data=folder run beyond its start: 3 eager ResNet-50 epochs, probes
SAFETY = 1.25  # on measured times, for what they leave out (monitors, checkpoints, noise)
# numerics the runner records in metrics.json ("what ran"), and their CUDA defaults
NUMERICS = ("precision", "compile", "channels_last", "compile_mode", "fuse_branches")
CUDA_DEFAULTS = {
    "precision": "bf16",
    "compile": True,
    "channels_last": True,
    "compile_mode": "default",
    "fuse_branches": False,
}

# Toy sizes of the dry run: every run and bench on the CPU, tiny widths, a slice of the data.
TOY_SIZES = (
    "smoke=true backbone.channels=[8,16,32,64] pretrain.batch_size=32 pretrain.warmup_epochs=0 "
    "linear.epochs=1 linear.milestones=[] fewshot.epochs=1 fewshot.milestones=[]"
).split()
TOY = ["device=cpu", *TOY_SIZES, "pretrain.epochs=1"]
TOY_RUN = [*TOY, "data.fraction=0.01", "linear.batch_size=64"]
TOY_FOLDER = [
    *TOY,
    *"data.image_size=32 data.eval_resize=36 data.workers=1 linear.batch_size=32".split(),
    "fewshot.batch_size=32",
]
# The default run: the runner's defaults but size (split 1, SDCLR p90, stage=all). On the GPU
# 2 epochs at 20% with 2-epoch probes; the dry run: the toy sizes at 1%, 2 epochs (the second
# one's time is what the first one's compile is measured against).
DEFAULT_RUN = {
    "gpu": "data.fraction=0.2 pretrain.epochs=2 pretrain.warmup_epochs=1 linear.epochs=2 "
    "linear.milestones=[1] fewshot.epochs=2 fewshot.milestones=[1]".split(),
    "dry": [*TOY_SIZES, "data.fraction=0.01", "linear.batch_size=64", "pretrain.epochs=2"],
}
# The sizes the planner scales the default run's times by: its data fraction and probe epochs,
# and the accuracy runs' (full data and the published probes on the GPU; toy in the dry run).
RUN_FRACTION = {"gpu": 0.2, "dry": 0.01}
RUN_PROBE_EPOCHS = {"gpu": (2, 2), "dry": (1, 1)}
ACC_FRACTION = {"gpu": 1.0, "dry": 0.01}
ACC_PROBE_EPOCHS = {"gpu": (30, 100), "dry": (1, 1)}
# the short data=folder run at full size: ResNet-50 at 224 px on the tree, a few epochs, eager
# (compiling ResNet-50 at 224 px would double the step's time)
FOLDER_RUN = (
    "backbone=resnet50 pretrain.batch_size=256 linear.batch_size=256 fewshot.batch_size=256 "
    "pretrain.epochs=3 pretrain.warmup_epochs=1 linear.epochs=5 linear.milestones=[3,4] "
    "fewshot.epochs=5 fewshot.milestones=[3,4] compile=false"
).split()
TOY_BENCH = ["--quick", "--channels", "8,16,32,64"]
SPEED_BENCH = ["--steps", "10", "--warmup", "5", "--probe-epochs", "5"]  # make bench: 22/15/30
# The speed steps' rows in value order, each with the compiled ResNet-18 training graph sets
# it builds (a method row (--methods) or a row group (--rows) of sdclr.bench). A step runs the
# longest prefix that fits in the time left, in one bench command.
EAGER_ROWS = (("simclr", 1), ("sdclr_p90", 1), ("ceiling", 1), ("probe", 1))
COMPILED_ROWS = (
    ("simclr", 1),
    ("sdclr_p90", 1),
    ("ceiling", 1),
    ("sdclr_p90_fused", 1),
    ("augmentation", 1),
    ("step_ratio", 3),  # two SDCLR models (two passes, fused) and the plain backbone
)
REDUCE_OVERHEAD_ROWS = COMPILED_ROWS[:4]
BENCH_METHODS = ("simclr", "sdclr_p90", "sdclr_p90_fused", "ceiling")  # sdclr.bench METHODS
# The accuracy step: epochs between these, from the measured epoch times.
MAX_EPOCHS, WANT_EPOCHS, MIN_EPOCHS = 200, 100, 10
# the 224-px tree: 10 classes from 400 down to 12 images (Many, Medium and Few all present)
TREE = {
    "gpu": ([400, 300, 200, 150, 110, 80, 50, 30, 18, 12], 20, (320, 500)),
    "dry": ([60, 40, 30, 24, 20, 16, 14, 12, 12, 12], 4, (40, 72)),
}


class StepFailed(Exception):
    """A step's failure, with what it measured before it failed."""

    def __init__(self, message: str, results: dict[str, Any] | None = None):
        super().__init__(message)
        self.results = results or {}


@dataclass
class Step:
    name: str
    title: str
    run: Callable[[Check], dict[str, Any]]
    estimate: Callable[[Check], float]  # its seconds from the costs known: can it finish?
    cuda_only: bool = False
    needs: tuple[str, ...] = ()  # files under SDCLR_DATA
    cap: float | None = None  # the most seconds its commands may take (None: the time left)


@dataclass
class _Running:
    """A started command: its log entry, process and output file, start and time limit."""

    label: str
    entry: dict[str, Any]
    proc: subprocess.Popen
    path: Path
    t0: float
    limit: float


@dataclass
class Costs:
    """What the planner knows of this device, in seconds: each measured by a command of this
    check (``measured_by`` says which), or None until then, when the planner assumes the
    named worst case. Measured values are planned with ``SAFETY``."""

    compile_s: float | None = None  # one compiled ResNet-18 training graph set
    run_start_s: float | None = None  # a run's own cost beyond pretraining and the probes
    bench_start_s: float | None = None  # a bench command's own cost beyond its rows
    row_s: float | None = None  # one eager bench row (build, warm-up, timed steps)
    measured_by: dict[str, str] = field(default_factory=dict)

    WORST = {
        "compile_s": COMPILE_WORST_S,
        "run_start_s": START_WORST_S,
        "bench_start_s": START_WORST_S,
        "row_s": ROW_WORST_S,
    }

    def get(self, name: str) -> float:
        """The planning value: measured x SAFETY, or the worst case until measured."""
        value = getattr(self, name)
        return self.WORST[name] if value is None else SAFETY * value

    def measure(self, name: str, seconds: float | None, by: str) -> None:
        if seconds is not None and seconds >= 0:
            setattr(self, name, float(seconds))
            self.measured_by[name] = by

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, worst in self.WORST.items():
            value = getattr(self, name)
            if value is None:
                out[name] = {"plan_s": worst, "assumed": "worst case (not measured yet)"}
            else:
                out[name] = {
                    "measured_s": round(value, 2),
                    "plan_s": round(self.get(name), 2),
                    "measured_by": self.measured_by[name],
                }
        return out


@dataclass
class Check:
    """One run of the plan: its clock, its folders and everything recorded so far."""

    out: Path
    work: Path
    budget: float
    dry: bool
    data: Path
    start: float = field(default_factory=time.monotonic)
    record: dict[str, Any] = field(default_factory=dict)
    selected: set[str] = field(default_factory=lambda: set(STEPS))  # --steps
    cuda: bool | None = None  # known once the env step ran
    commands: list[dict[str, Any]] = field(default_factory=list)  # what the log bundles
    costs: Costs = field(default_factory=Costs)
    step_end: float | None = None  # the running step's cap, on the monotonic clock

    @property
    def scale(self) -> str:
        """Which sizes the commands run at: "dry" (toy, CPU) or "gpu"."""
        return "dry" if self.dry else "gpu"

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def step(self, name: str) -> dict[str, Any]:
        return next(s for s in self.record["steps"] if s["name"] == name)

    def results(self, name: str) -> dict[str, Any]:
        if not any(s["name"] == name for s in self.record.get("steps", [])):
            return {}
        return self.step(name).get("results") or {}

    def publish(self, name: str, results: dict[str, Any]) -> None:
        """A step's results so far into the record, and the files rewritten: what was
        measured comes back even if the call is killed before the step ends."""
        if any(s["name"] == name for s in self.record.get("steps", [])):
            self.step(name)["results"] = results
        self.save()

    def run(
        self,
        label: str,
        cmd: list[str],
        timeout: float | None = None,
        on_poll: Callable[[], None] | None = None,
    ) -> str:
        """Run ``cmd`` (from the repository root) with at most the time left; returns its
        output. Raises StepFailed when it fails or outruns its time (it is then killed).
        ``on_poll`` runs every POLL_S seconds while it runs and once when it ended."""
        return self.wait_for(self.launch(label, cmd, timeout), on_poll)

    def run_side_by_side(self, commands: list[tuple[str, list[str]]]) -> list[str | StepFailed]:
        """The dry run's independent toy commands, all started at once (the CPU's cores
        shared among them), each with the time left; per command its output or its
        StepFailed. On a GPU the plan runs its commands one after another: each decides from
        the clock what the next may do, and side by side they would share the device."""
        threads = max(1, (os.cpu_count() or 1) // len(commands))
        env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
        started: list[_Running | StepFailed] = []
        for label, cmd in commands:
            try:
                started.append(self.launch(label, cmd, env=env))
            except StepFailed as e:
                started.append(e)
        outcomes: list[str | StepFailed] = []
        for running in started:
            try:
                outcomes.append(
                    running if isinstance(running, StepFailed) else self.wait_for(running)
                )
            except StepFailed as e:
                outcomes.append(e)
        return outcomes

    def launch(
        self,
        label: str,
        cmd: list[str],
        timeout: float | None = None,
        env: dict[str, str] | None = None,
    ) -> _Running:
        """Start ``cmd``, its output going to a log file, with at most the time left (and
        the running step's cap)."""
        limit = self.left() if timeout is None else min(timeout, self.left())
        if self.step_end is not None:
            limit = min(limit, self.step_end - time.monotonic())
        if limit <= 1:
            raise StepFailed(f"{label}: no time left in the budget to start it")
        logs = self.work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"{len(self.commands):02d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', label)}.out"
        entry = {"label": label, "cmd": " ".join(cmd), "path": str(path), "rc": None}
        self.commands.append(entry)
        full_env = dict(
            os.environ, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1", WANDB_MODE="disabled"
        )
        full_env.update(env or {})
        if self.dry:
            full_env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run stays on the CPU on any machine
        with open(path, "wb") as sink:
            proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                env=full_env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        entry["pid"] = proc.pid
        return _Running(label, entry, proc, path, time.monotonic(), limit)

    def wait_for(self, running: _Running, on_poll: Callable[[], None] | None = None) -> str:
        """Wait for a started command (killing it at its limit); its output, or StepFailed.
        Every POLL_S seconds, and once it ended, ``on_poll`` publishes what it measured so
        far and the three files are rewritten."""
        proc, t0, limit, label = running.proc, running.t0, running.limit, running.label
        timed_out = False
        while proc.poll() is None:
            try:
                proc.wait(timeout=min(POLL_S, max(0.1, limit - (time.monotonic() - t0))))
            except subprocess.TimeoutExpired:
                if on_poll is not None:
                    on_poll()
                self.write_log()  # a call killed meanwhile still brings this back
                self.save()
                if time.monotonic() - t0 >= limit:
                    timed_out = True
                    _kill(proc)
        running.entry.update(rc=proc.returncode, seconds=round(time.monotonic() - t0, 1))
        if on_poll is not None:
            on_poll()
        self.write_log()
        self.save()
        output = running.path.read_text(errors="replace")
        if timed_out:
            raise StepFailed(f"{label}: stopped after {limit:.0f} s, the time left in the budget")
        if proc.returncode != 0:
            last = [line for line in output.splitlines() if line.strip()][-3:]
            raise StepFailed(f"{label}: exit {proc.returncode}: " + " | ".join(last)[-800:])
        return output

    def run_json(self, label: str, cmd: list[str]) -> dict[str, Any]:
        """Run a helper that prints its result on a MARK line; returns that result."""
        output = self.run(label, cmd)
        lines = [line for line in output.splitlines() if line.startswith(MARK)]
        if not lines:
            raise StepFailed(f"{label}: printed no result")
        return json.loads(lines[-1][len(MARK) :])

    def write_log(self) -> None:
        """DIR/gpu_check.log: each command's output, its start and end when long."""
        parts = []
        for c in self.commands:
            raw = Path(c["path"]).read_bytes() if Path(c["path"]).exists() else b""
            if len(raw) > LOG_HEAD + LOG_TAIL:
                cut = len(raw) - LOG_HEAD - LOG_TAIL
                raw = raw[:LOG_HEAD] + f"\n[... {cut} bytes cut ...]\n".encode() + raw[-LOG_TAIL:]
            status = "running" if c["rc"] is None else f"exit {c['rc']}, {c['seconds']} s"
            parts.append(f"### {c['label']} ({status})\n$ {c['cmd']}\n".encode() + raw + b"\n")
        _write(self.out / "gpu_check.log", b"".join(parts))

    def save(self) -> None:
        self.record["elapsed_s"] = round(time.monotonic() - self.start, 1)
        self.record["costs"] = self.costs.record()
        _write(self.out / "gpu_check.json", (json.dumps(self.record, indent=2) + "\n").encode())
        _write(self.out / "gpu_check.md", markdown(self.record).encode())


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _kill(proc: subprocess.Popen) -> None:
    """SIGTERM to the command's process group (a run writes a checkpoint), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


# --- the runner -----------------------------------------------------------------------------


def run_plan(check: Check, steps: list[Step]) -> int:
    """Run ``steps`` in order under the budget; 1 if one failed."""
    check.out.mkdir(parents=True, exist_ok=True)
    check.work.mkdir(parents=True, exist_ok=True)
    check.record["steps"] = [{"name": s.name, "title": s.title, "status": "pending"} for s in steps]
    check.save()
    failing = {s.strip() for s in os.environ.get(FAIL_ENV, "").split(",") if s.strip()}
    for s in steps:
        rec = check.step(s.name)
        # from the costs measured so far: each step plans from what the earlier ones measured
        rec["estimate_s"] = round(s.estimate(check), 1)
        missing = [f for f in s.needs if not (check.data / f).is_file()]
        left = check.left()
        reason = None
        if s.name not in check.selected:
            reason = "not selected (--steps)"
        elif s.cuda_only and check.dry:
            reason = "no CUDA device (dry run: the CPU at toy sizes)"
        elif check.cuda is False and not check.dry:
            reason = "no CUDA device (the env step found none; --dry-run runs the plan on a CPU)"
        elif missing:
            reason = f"SDCLR_DATA={check.data} lacks {', '.join(missing)}"
        elif left < rec["estimate_s"]:
            reason = (
                f"budget: {max(0.0, left):.0f} s of {check.budget:.0f} s left, the step needs at "
                f"least {rec['estimate_s']:.0f} s (planned from {plan_basis(check)})"
            )
        if reason:
            rec.update(status="skipped", reason=reason, seconds=0.0)
            print(f"[{s.name}] skipped: {reason}", flush=True)
            check.save()
            continue
        rec.update(status="running", started_s=round(check.budget - left, 1))
        check.step_end = None if s.cap is None else time.monotonic() + s.cap
        check.save()
        print(f"[{s.name}] {s.title} ({left:.0f} s left)", flush=True)
        t0 = time.monotonic()
        try:
            if s.name in failing:
                raise StepFailed(f"failure injected through {FAIL_ENV} (for tests)")
            rec["results"] = s.run(check)
            rec["status"] = "ok"
        except StepFailed as e:
            rec.update(status="failed", error=str(e), results=e.results)
        except Exception as e:  # a bug in the step itself: record it, go on
            rec.update(status="failed", error="".join(traceback.format_exception_only(e)).strip())
        check.step_end = None
        rec["seconds"] = round(time.monotonic() - t0, 1)
        print(f"[{s.name}] {rec['status']} in {rec['seconds']:.0f} s", flush=True)
        if rec["status"] == "failed":
            print(f"[{s.name}] {rec['error']}", flush=True)
        check.save()
    check.record["finished"] = True
    check.save()
    return 1 if any(r["status"] == "failed" for r in check.record["steps"]) else 0


def plan_basis(check: Check) -> str:
    """Which costs a plan rests on: measured ones, or the assumed worst cases."""
    c = check.costs
    parts = [
        f"{name} {c.get(name):.0f} s " + ("measured" if getattr(c, name) is not None else "assumed")
        for name in Costs.WORST
    ]
    return ", ".join(parts)


# --- 1. the environment ---------------------------------------------------------------------


def env_info(dry: bool) -> dict[str, Any]:
    """(Helper subprocess.) Versions, the GPU, and whether the package imports and picks CUDA."""
    import platform

    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
    }
    for name in ("torchvision", "timm", "numpy", "hydra", "omegaconf"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:  # reported, not fatal here: the import check below decides
            info[name] = f"missing ({type(e).__name__}: {e})"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu=p.name,
            gpu_memory_mib=round(p.total_memory / 2**20),
            gpu_count=torch.cuda.device_count(),
            capability=f"{p.major}.{p.minor}",
            multiprocessors=p.multi_processor_count,
        )
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        if smi.returncode == 0 and smi.stdout.strip():
            info["driver"] = smi.stdout.strip().splitlines()[0].split(",")[-1].strip()
    except (OSError, subprocess.SubprocessError) as e:
        info["nvidia_smi"] = f"not run ({e})"
    errors = []
    for module in ("sdclr.cli.run", "sdclr.cli.bench"):
        try:
            __import__(module)
        except Exception as e:
            errors.append(f"import {module}: {type(e).__name__}: {e}")
    from sdclr.utils.distributed import resolve_device

    info["auto_device"] = str(resolve_device("auto"))
    if not dry and not info["auto_device"].startswith("cuda"):
        errors.append(f"device=auto picked {info['auto_device']}, not CUDA")
    info["errors"] = errors
    return info


def commit(data: Path) -> str:
    """The commit checked: git where the checkout has it, else the COMMIT file that
    ``--prepare`` wrote next to the carried data (a device copy of the tree has no .git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        if head.returncode == 0:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=REPO,
                capture_output=True,
                text=True,
            ).stdout.strip()
            return head.stdout.strip() + ("-dirty" if dirty else "")
    except OSError:
        pass
    stamp = data / "COMMIT"
    return stamp.read_text().strip() + " (from COMMIT)" if stamp.is_file() else "unknown"


def step_env(check: Check) -> dict[str, Any]:
    info = check.run_json("env", commands("env", check.work, dry=check.dry)[0])
    info["commit"] = check.record["commit"]
    check.cuda = bool(info["cuda_available"]) and not check.dry
    if info["errors"]:
        raise StepFailed("; ".join(info["errors"]), info)
    return info


# --- 2. the default run ---------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """A metrics.jsonl's records; a line cut by a kill is left out."""
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return records


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
    cmd = commands("default_run", check.work, dry=check.dry)[0]
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


# --- 4. the CUDA tests ----------------------------------------------------------------------


def cuda_tests() -> tuple[list[str], list[str]]:
    """The test files and names of the tests that skip themselves without CUDA (a
    ``skipif(not torch.cuda.is_available(), ...)`` on the test, or on the whole module)."""
    files, names = [], []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        text = path.read_text()
        if re.search(r"^pytestmark\s*=.*not torch\.cuda\.is_available\(\)", text, re.M):
            files.append(str(path.relative_to(REPO)))
            names.append(path.stem)
            continue
        found = re.findall(
            r"skipif\(\s*not torch\.cuda\.is_available\(\)[^\n]*\n(?:\s*@[^\n]*\n)*\s*def (\w+)",
            text,
        )
        if found:
            files.append(str(path.relative_to(REPO)))
            names += found
    return files, names


def cuda_tests_estimate(check: Check) -> float:
    """pytest's start and a compile for each CUDA test that compiles (its name says so: the
    augmentation's, the bf16 step's, the compiled step across a mask refresh)."""
    compiling = [n for n in cuda_tests()[1] if "compile" in n]
    return PYTEST_START_S + len(compiling) * check.costs.get("compile_s")


def step_cuda_tests(check: Check) -> dict[str, Any]:
    files, names = cuda_tests()
    if not names:
        raise StepFailed("no test skips itself without CUDA: nothing to run")
    results: dict[str, Any] = {"selected": names}

    def poll() -> None:  # the outcomes so far, from pytest -v's output
        output = Path(check.commands[-1]["path"]).read_text(errors="replace")
        check.publish("cuda_tests", {**results, **_pytest_outcomes(output)})

    try:
        output = check.run("cuda_tests", commands("cuda_tests", check.work)[0], on_poll=poll)
    except StepFailed as e:
        output = Path(check.commands[-1]["path"]).read_text(errors="replace")
        results.update(_pytest_outcomes(output))
        raise StepFailed(str(e), results) from None
    results.update(_pytest_outcomes(output))
    if results["outcomes"] and all(v == "SKIPPED" for v in results["outcomes"].values()):
        raise StepFailed("every CUDA test skipped itself: torch sees no GPU", results)
    return results


def _pytest_outcomes(output: str) -> dict[str, Any]:
    outcomes = dict(
        re.findall(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", output, re.M)
    )
    summary = re.findall(
        r"^=+ (.*(?:passed|failed|skipped|error|no tests ran).*) =+$", output, re.M
    )
    return {"outcomes": outcomes, "summary": summary[-1] if summary else None}


# --- 3, 5, 7. the speed rows ----------------------------------------------------------------

SPEED = {  # step: (label, the rows in value order, whether they compile, extra bench flags)
    "speed_eager": ("bench-eager", EAGER_ROWS, False, ["--no-compile"]),
    "speed_compiled": ("bench-compiled", COMPILED_ROWS, True, []),
    "speed_reduce_overhead": (
        "bench-reduce-overhead",
        REDUCE_OVERHEAD_ROWS,
        True,
        ["--compile-mode", "reduce-overhead"],
    ),
}


def bench_args(rows: list[str]) -> list[str]:
    """sdclr.bench's --rows / --methods for ``rows`` (method rows and row groups), in order."""
    methods = [r for r in rows if r in BENCH_METHODS]
    groups = (["methods"] if methods else []) + [r for r in rows if r not in BENCH_METHODS]
    return ["--rows", ",".join(groups), *(["--methods", ",".join(methods)] if methods else [])]


def row_cost(check: Check, graphs: int, compiled: bool) -> float:
    """One row's planned seconds: each graph set's compile (when it compiles) and steady part."""
    c = check.costs
    return graphs * ((c.get("compile_s") if compiled else 0.0) + c.get("row_s"))


def plan_rows(check: Check, step: str) -> tuple[list[str], float, dict[str, str]]:
    """The longest prefix of a speed step's rows that fits in the time left, in one bench
    command: (the rows, their planned seconds, why each other row is left out)."""
    _, rows, compiled, _ = SPEED[step]
    left = min(check.left(), check.step_end - time.monotonic() if check.step_end else 1e9)
    total = check.costs.get("bench_start_s")
    chosen: list[str] = []
    dropped: dict[str, str] = {}
    for name, graphs in rows:
        cost = row_cost(check, graphs, compiled)
        if dropped or total + cost > left:
            dropped[name] = (
                f"budget: {left:.0f} s left, the rows before it {total:.0f} s, it about "
                f"{cost:.0f} s (planned from {plan_basis(check)})"
            )
            continue
        total += cost
        chosen.append(name)
    return chosen, total, dropped


def speed_estimate(step: str) -> Callable[[Check], float]:
    """A speed step's least: the bench's start and its first row."""

    def estimate(check: Check) -> float:
        _, rows, compiled, _ = SPEED[step]
        return check.costs.get("bench_start_s") + row_cost(check, rows[0][1], compiled)

    return estimate


def _bench(
    check: Check,
    label: str,
    cmd: list[str],
    on_rows: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run one bench command; its JSON, with the table it wrote and its wall time. While it
    runs, ``on_rows`` gets the rows finished so far (the bench rewrites its JSON after every
    row). When it fails or is stopped, the StepFailed carries those rows as ``bench``."""
    out, table = (Path(cmd[cmd.index(flag) + 1]) for flag in ("--out", "--table"))
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in (out, table):  # an earlier check's file must not pass for this one's rows
        stale.unlink(missing_ok=True)
    t0 = time.monotonic()

    def poll() -> None:
        partial = _bench_read(cmd, round(time.monotonic() - t0, 1))
        if partial is not None and on_rows is not None:
            on_rows(partial)

    try:
        check.run(label, cmd, on_poll=poll)
    except StepFailed as e:
        partial = _bench_read(cmd, round(time.monotonic() - t0, 1))
        done = ", ".join(partial["rows_done"]) if partial else ""
        raise StepFailed(
            f"{e}; rows finished: {done or 'none'}", {"bench": partial} if partial else {}
        ) from None
    result = _bench_read(cmd, round(time.monotonic() - t0, 1))
    if result is None:
        raise StepFailed(f"{label}: exited 0 but wrote no JSON")
    return result


def _bench_read(cmd: list[str], wall_seconds: float | None) -> dict[str, Any] | None:
    """A bench command's JSON as it stands (finished, or the rows so far), with its table
    and the command's wall time; None before its first row."""
    out, table = (Path(cmd[cmd.index(flag) + 1]) for flag in ("--out", "--table"))
    try:
        result = json.loads(out.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    result["table"] = table.read_text() if table.is_file() else ""
    result["wall_seconds"] = wall_seconds
    return result


def measure_bench(check: Check, step: str, bench: dict[str, Any] | None) -> None:
    """What a bench command measured, for the planner: its own start (wall less its rows),
    an eager row, a compile (the slowest of its compiled rows)."""
    if not bench:
        return
    seconds = bench.get("row_seconds", {})
    if bench.get("finished") and bench.get("wall_seconds") is not None:
        start = bench["wall_seconds"] - sum(seconds.values())
        check.costs.measure("bench_start_s", start, step)
    methods = [m for m in BENCH_METHODS if m in seconds]
    if not bench["setup"]["compile"]:
        if methods:
            check.costs.measure("row_s", max(seconds[m] for m in methods), step)
        return
    compiles = [bench[m]["compile_seconds"] for m in methods if "compile_seconds" in bench[m]]
    if compiles:
        check.costs.measure("compile_s", max(compiles), step)


def step_speed(check: Check, step: str) -> dict[str, Any]:
    """A speed step: its rows that fit, in one bench command, published as they finish."""
    label, rows, compiled, _ = SPEED[step]
    chosen, planned, dropped = plan_rows(check, step)
    results: dict[str, Any] = {
        "planned": chosen,
        "planned_seconds": round(planned, 1),
        "not_planned": dropped,
    }
    if not chosen:
        raise StepFailed(f"budget: not even its first row fits ({dropped[rows[0][0]]})", results)
    check.publish(step, results)
    cmd = commands(step, check.work, dry=check.dry, rows=chosen)[0]
    try:
        results["bench"] = _bench(
            check, label, cmd, on_rows=lambda b: check.publish(step, {**results, "bench": b})
        )
    except StepFailed as e:
        results["bench"] = e.results.get("bench")
        measure_bench(check, step, results["bench"])
        raise StepFailed(str(e), results) from None
    measure_bench(check, step, results["bench"])
    setup = results["bench"]["setup"]
    if check.cuda and setup["compile"] != compiled:  # CUDA compiles by default, the CPU not
        raise StepFailed(f"the bench ran with compile={setup['compile']}", results)
    return results


# --- 6. the accuracy point ------------------------------------------------------------------

METHODS = {"simclr": "prune=none", "sdclr": "prune=p90"}


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
    later = [
        s for s in PLAN[PLAN.index(STEP_BY_NAME["accuracy"]) + 1 :] if s.name in check.selected
    ]
    return sum(s.estimate(check) for s in later if not (s.cuda_only and check.dry))


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

    def command(name: str, n: int) -> list[str]:
        job = check.work / "jobs" / f"acc-{name}"
        shutil.rmtree(job, ignore_errors=True)  # a fresh job: never resume an earlier check's
        return commands("accuracy", check.work, epochs=n, dry=check.dry)[list(METHODS).index(name)]

    def record(name: str, n: int, outcome: str | StepFailed, t0: float) -> None:
        job = check.work / "jobs" / f"acc-{name}"
        if isinstance(outcome, StepFailed):
            results[name] = {"status": "failed", "error": str(outcome), **job_metrics(job)}
        else:
            results[name] = {"status": "ok", "planned_epochs": n, **job_metrics(job)}
        results[name]["wall_seconds"] = round(time.monotonic() - t0, 1)
        check.publish("accuracy", results)

    def progress(name: str) -> Callable[[], None]:
        def poll() -> None:  # the epochs reached so far, from the run's metrics.jsonl
            results[name] = {
                "status": "running",
                **job_metrics(check.work / "jobs" / f"acc-{name}"),
            }
            check.publish("accuracy", results)

        return poll

    if check.dry:  # toy runs of one epoch, nothing to decide between them: side by side
        t0 = time.monotonic()
        labelled = [(f"accuracy-{name}", command(name, epochs)) for name in METHODS]
        for name, outcome in zip(METHODS, check.run_side_by_side(labelled)):
            record(name, epochs, outcome, t0)
    else:
        for name in METHODS:
            # the second run: the first may have taken longer than estimated
            n = min(epochs, max(0, int((check.left() - speed["fixed"]) // speed[name])))
            if n < min(MIN_EPOCHS, epochs):
                results[name] = {
                    "status": "skipped",
                    "reason": f"budget: {check.left():.0f} s left, under {MIN_EPOCHS} epochs",
                }
                continue
            cmd, t0 = command(name, n), time.monotonic()
            try:
                record(name, n, check.run(f"accuracy-{name}", cmd, on_poll=progress(name)), t0)
            except StepFailed as e:
                record(name, n, e, t0)
    bad = [n for n in METHODS if results[n]["status"] != "ok"]
    if bad:
        first = results[bad[0]]
        raise StepFailed(f"{bad[0]}: {first.get('error') or first.get('reason')}", results)
    return results


def job_metrics(job: Path) -> dict[str, Any]:
    """What a run's job directory holds: metrics.json (the diagnostics of the last epoch
    only), and from metrics.jsonl the epochs reached (also by a run stopped early), the steady
    epoch time (the first epoch, which compiles, left out) and the last kNN accuracy."""
    out: dict[str, Any] = {}
    records = read_jsonl(job / "metrics.jsonl")
    epochs = [r for r in records if r.get("kind") == "pretrain" and "epoch_loss" in r]
    if epochs:
        out["epochs_reached"] = epochs[-1]["epoch"]
        if len(epochs) > 1:
            span = epochs[-1]["time"] - epochs[0]["time"]
            out["steady_epoch_seconds"] = span / (epochs[-1]["epoch"] - epochs[0]["epoch"])
    knn = [r for r in records if r.get("kind") == "knn"]
    if knn:
        out["knn"] = {k: v for k, v in knn[-1].items() if k not in ("kind", "time")}
    if (job / "metrics.json").is_file():
        try:
            m = json.loads((job / "metrics.json").read_text())
        except json.JSONDecodeError:
            m = {}  # being rewritten: the next read has it
        pre = m.get("pretrain", {})
        if pre.get("diagnostics"):
            pre["diagnostics"] = pre["diagnostics"][-1:]
        pre.pop("split_counts", None)
        out.update({k: m[k] for k in ("run", "pretrain", "linear", "fewshot") if k in m})
        if pre.get("epochs"):
            out["epochs_reached"] = pre["epochs"]
            out["epoch_seconds"] = pre["seconds"] / pre["epochs"]
    if (job / "status.json").is_file():
        try:
            out["job_status"] = json.loads((job / "status.json").read_text()).get("status")
        except json.JSONDecodeError:
            pass  # being rewritten
    return out


# --- 8. the 224-px file path ----------------------------------------------------------------


def write_tree(root: Path, archive: Path, scale: str) -> dict[str, Any]:
    """(Helper subprocess.) ``root/train/<class>/*.jpg`` and ``root/test/<class>/*.jpg``: real
    CIFAR-10 images from the archive, upscaled to varied ImageNet-like sizes, long-tailed."""
    import io

    import numpy as np
    from PIL import Image

    counts, test_per_class, (lo, hi) = TREE[scale]
    order: list[str] = []  # the classes as the archive lists them (alphabetical)
    left: dict[tuple[str, str], int] = {}
    rng = np.random.default_rng(0)
    written = 0
    with tarfile.open(archive, "r|gz") as tar:  # one pass, in the archive's order
        for m in tar:
            parts = m.name.split("/")
            if len(parts) != 3 or not m.isfile() or parts[0] not in ("train", "test"):
                continue
            split, cls = parts[0], parts[1]
            if cls not in order:
                if split != "train" or len(order) == len(counts):
                    continue
                order.append(cls)
                left[("train", cls)] = counts[len(order) - 1]
                left[("test", cls)] = test_per_class
            if left.get((split, cls), 0) <= 0:
                continue
            left[(split, cls)] -= 1
            w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
            img = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            img.resize((w, h), Image.BICUBIC).save(folder / parts[2], quality=90)
            written += 1
            if len(order) == len(counts) and not any(left.values()):
                break
    return {"images": written, "train_counts": counts, "test_per_class": test_per_class}


def files_estimate(check: Check) -> float:
    """The 224-px bench (its start, the augmentation's compile at 224 px, a row) and the
    folder run (its start and its eager epochs and probes); the dry run runs them side by side."""
    c = check.costs
    bench = c.get("bench_start_s") + c.get("compile_s") + c.get("row_s")
    folder = c.get("run_start_s") + FOLDER_WORK_S
    return max(bench, folder) if check.dry else bench + folder


def step_files(check: Check) -> dict[str, Any]:
    tree_cmd, bench_cmd, folder_cmd = commands("files", check.work, dry=check.dry)
    for sub in ("tree", "splits", "jobs/folder"):
        shutil.rmtree(check.work / sub, ignore_errors=True)
    results: dict[str, Any] = {"tree": check.run_json("tree", tree_cmd)}
    if not check.cuda:
        results["nvjpeg"] = "not run: no CUDA device (the CPU loader workers decoded)"
    check.publish("files", results)
    try:
        if check.dry:  # toy sizes, the bench's numbers only plumbing: side by side
            bench_out = Path(bench_cmd[bench_cmd.index("--out") + 1])
            bench_out.parent.mkdir(parents=True, exist_ok=True)
            bench_out.unlink(missing_ok=True)  # an earlier check's file is not this one's
            outcomes = check.run_side_by_side([("bench-224", bench_cmd), ("folder", folder_cmd)])
            failed = [o for o in outcomes if isinstance(o, StepFailed)]
            bench = _bench_read(bench_cmd, None)
            if bench and "loading_224" in bench:
                results["loading_224"] = {**bench["loading_224"], "table": bench["table"]}
            if failed:
                raise failed[0]
        else:
            bench = _bench(check, "bench-224", bench_cmd)
            results["loading_224"] = {**bench["loading_224"], "table": bench["table"]}
            check.publish("files", results)
            check.run("folder", folder_cmd)
    except StepFailed as e:
        results["folder"] = job_metrics(check.work / "jobs" / "folder")
        raise StepFailed(str(e), results) from None
    results["folder"] = job_metrics(check.work / "jobs" / "folder")
    return results


# --- the commands ---------------------------------------------------------------------------


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
    extra = list(extra)
    scale = "dry" if dry else "gpu"

    def bench(label: str, *args: str) -> list[str]:
        b = work / "bench" / label
        toy = TOY_BENCH if dry else []
        return [PY, "-m", "sdclr.bench", *toy, *args, "--out", f"{b}.json", "--table", f"{b}.md"]

    def run(job: str, *args: str) -> list[str]:
        # split 1 and logger=none are the defaults, named so a changed default cannot move them
        return [
            *(PY, "-m", "sdclr", "stage=all", "split=split1", "logger=none"),
            f"hydra.run.dir={work / 'jobs' / job}",
            *args,
            *extra,
        ]

    if step == "env":
        return [[PY, __file__, "--env-info", *(["--dry-run"] if dry else [])]]
    if step == "default_run":
        # no precision / compile / channels_last / compile_mode / fuse_branches: the defaults
        return [run("default", *DEFAULT_RUN[scale])]
    if step == "cuda_tests":
        files, names = cuda_tests()
        pytest = [PY, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider"]
        return [[*pytest, "--continue-on-collection-errors", *files, "-k", " or ".join(names)]]
    if step in SPEED:
        label, all_rows, _, flags = SPEED[step]
        chosen = rows if rows is not None else [name for name, _ in all_rows]
        reps = [] if dry else SPEED_BENCH
        return [bench(label, *bench_args(chosen), *flags, *reps)]
    if step == "accuracy":
        size = (
            TOY_RUN
            if dry
            else [
                f"pretrain.epochs={epochs}",
                f"pretrain.warmup_epochs={min(10, epochs // 10)}",
            ]
        )
        return [run(f"acc-{name}", prune, *size) for name, prune in METHODS.items()]
    if step == "files":
        tree = work / "tree"
        folder = [
            *(PY, "-m", "sdclr", "data=folder", f"data.root={tree}", "data.test_dir=test"),
            f"split.dir={work / 'splits'}",
            *("stage=all", "prune=p90", "logger=none", "smoke=true"),
            f"hydra.run.dir={work / 'jobs' / 'folder'}",
            *(TOY_FOLDER if dry else FOLDER_RUN),
            *extra,
        ]
        return [
            [PY, __file__, "--write-tree", str(tree), "--tree-scale", scale],
            bench("bench-224", "--rows", "loading_224"),
            folder,
        ]
    raise SystemExit(f"unknown step {step!r}; choose from {', '.join(STEPS)}")


# --- the plan and the Markdown --------------------------------------------------------------

PLAN = [
    Step(
        "env",
        "environment: GPU, driver, versions, imports, device=auto",
        step_env,
        lambda c: 2.0 if c.dry else 10.0,
    ),
    Step(
        "default_run",
        "the default runner on CUDA, every default on: SDCLR p90, 2 epochs at 20%, probes",
        step_default_run,
        default_run_estimate,
        needs=CIFAR,
        cap=DEFAULT_RUN_CAP_S,
    ),
    Step(
        "speed_eager",
        "speed, eager (sdclr.bench --no-compile): SimCLR, SDCLR p90, ceiling, probe",
        lambda c: step_speed(c, "speed_eager"),
        speed_estimate("speed_eager"),
        needs=CIFAR,
    ),
    Step(
        "cuda_tests",
        "the tests that skip themselves without CUDA",
        step_cuda_tests,
        cuda_tests_estimate,
        cuda_only=True,
        needs=(*CIFAR, TINY_IMAGENET),
    ),
    Step(
        "speed_compiled",
        "speed, compiled (sdclr.bench): the rows that fit, each compile timed apart",
        lambda c: step_speed(c, "speed_compiled"),
        speed_estimate("speed_compiled"),
        needs=CIFAR,
    ),
    Step(
        "accuracy",
        "SimCLR and SDCLR p90, CIFAR-10-LT split 1, full data, then probes",
        step_accuracy,
        accuracy_minimum,
        needs=CIFAR,
    ),
    Step(
        "speed_reduce_overhead",
        "speed, compile mode reduce-overhead (CUDA graphs): the method rows that fit",
        lambda c: step_speed(c, "speed_reduce_overhead"),
        speed_estimate("speed_reduce_overhead"),
        needs=CIFAR,
    ),
    Step(
        "files",
        "224-px file path: decode + views vs DataLoader + PIL; data=folder run",
        step_files,
        files_estimate,
        needs=CIFAR[:1],
    ),
]
STEP_BY_NAME = {s.name: s for s in PLAN}
assert tuple(STEP_BY_NAME) == STEPS


def _fmt(v: Any, digits: int = 2) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def speed_summary(r: dict[str, Any]) -> str:
    """One cell of a speed step: epoch times, the ceiling, the compiles, what was left out."""
    b = r.get("bench") or {}
    parts = []
    epochs = [
        f"{label} {_fmt(b[row]['epoch_seconds'], 3)}"
        for row, label in (
            ("simclr", "SimCLR"),
            ("sdclr_p90", "SDCLR"),
            ("sdclr_p90_fused", "fused"),
        )
        if row in b
    ]
    if epochs:
        parts.append("epoch s: " + ", ".join(epochs))
    if "ceiling" in b:
        parts.append(f"ceiling {_fmt(b['ceiling']['views_per_second'], 0)} views/s")
    if b.get("setup", {}).get("compile"):
        compiles = [f"{_fmt(b[m]['compile_seconds'], 1)}" for m in BENCH_METHODS if m in b]
        if compiles:
            parts.append("compile s: " + ", ".join(compiles))
    if b and not b.get("finished"):
        parts.append(f"PARTIAL: rows finished {', '.join(b.get('rows_done', [])) or 'none'}")
    if r.get("not_planned"):
        parts.append("not planned (budget): " + ", ".join(r["not_planned"]))
    return "; ".join(parts)


def summary(rec: dict[str, Any]) -> str:
    """One cell: what a step found, or why it did not run."""
    if rec["status"] in ("skipped", "pending"):
        return rec.get("reason", "")
    r = rec.get("results") or {}
    text = ""
    if rec["name"] == "env" and r:
        text = (
            f"{r.get('gpu', 'no GPU')}, {r.get('gpu_memory_mib', '-')} MiB, driver "
            f"{r.get('driver', '-')}; torch {r.get('torch')}, CUDA {r.get('cuda')}, cuDNN "
            f"{r.get('cudnn')}, timm {r.get('timm')}; commit {r.get('commit')}; "
            f"device=auto: {r.get('auto_device')}"
        )
    elif rec["name"] == "default_run" and r:
        ran = r.get("ran") or {}
        text = (
            f"ran: {', '.join(f'{k} {v}' for k, v in ran.items()) or '-'}; "
            f"{r.get('epochs_reached', 0)} epochs, steady epoch "
            f"{_fmt(r.get('steady_epoch_seconds'), 2)} s, "
            f"training compile {_fmt(r.get('compile_train_seconds'), 1)} s, first-epoch extra "
            f"{_fmt(r.get('first_epoch_extra_seconds'), 1)} s, run start "
            f"{_fmt(r.get('run_start_seconds'), 1)} s; linear "
            f"{_fmt((r.get('linear') or {}).get('acc'))}, few-shot "
            f"{_fmt((r.get('fewshot') or {}).get('acc'))}; job {r.get('job_status', '-')}"
        )
    elif rec["name"] == "cuda_tests" and r:
        text = f"{r.get('summary')}: " + ", ".join(
            f"{k.split('::')[-1]} {v}" for k, v in r.get("outcomes", {}).items()
        )
    elif rec["name"] in SPEED and r:
        text = speed_summary(r)
    elif rec["name"] == "accuracy" and r:
        text = "; ".join(
            f"{m} {r[m].get('epochs_reached', 0)} epochs: linear "
            f"{_fmt(r[m].get('linear', {}).get('acc'))}, few-shot "
            f"{_fmt(r[m].get('fewshot', {}).get('acc'))}"
            for m in METHODS
            if m in r
        )
    elif rec["name"] == "files" and r:
        ld = r.get("loading_224", {})
        text = (
            f"224 px images/s: suite {_fmt(ld.get('suite_images_per_second'), 0)} "
            f"({ld.get('decoder')}), DataLoader + PIL "
            f"{_fmt(ld.get('dataloader_pil_images_per_second'), 0)}; data=folder run "
            f"{r.get('folder', {}).get('job_status', '-')}"
        )
    if rec["status"] == "failed":
        text = f"**{rec.get('error', '')}**" + (f"; {text}" if text else "")
    elif rec["status"] == "running":
        text = "(running) " + text
    return text.replace("|", "/").replace("\n", " ")


SPEED_TITLES = {
    "speed_eager": "eager",
    "speed_compiled": "compiled, default mode",
    "speed_reduce_overhead": "compiled, reduce-overhead",
}


def markdown(record: dict[str, Any]) -> str:
    lines = [
        f"# gpu_check: {record.get('mode')}, budget {record.get('budget_s')} s, "
        f"commit {record.get('commit')}, {record.get('date')}",
        "",
        f"Elapsed {record.get('elapsed_s')} s"
        + ("" if record.get("finished") else " (not finished)")
        + f". Command: `{record.get('command')}`",
        "",
        "| # | step | status | seconds | result / reason |",
        "|---|---|---|---:|---|",
    ]
    for i, rec in enumerate(record.get("steps", []), 1):
        lines.append(
            f"| {i} | {rec['name']} | {rec['status']} | {_fmt(rec.get('seconds'), 1)} | "
            f"{summary(rec)} |"
        )
    costs = record.get("costs") or {}
    if costs:
        lines += [
            "",
            "Planner costs (s; measured x SAFETY, or the worst case assumed until measured): "
            + ", ".join(
                f"{k} {_fmt(v.get('plan_s'), 1)} ("
                + (
                    f"measured {_fmt(v['measured_s'], 1)} by {v['measured_by']}"
                    if "measured_s" in v
                    else "assumed"
                )
                + ")"
                for k, v in costs.items()
            ),
        ]
    steps = {r["name"]: r.get("results") or {} for r in record.get("steps", [])}
    for step, title in SPEED_TITLES.items():
        table = (steps.get(step, {}).get("bench") or {}).get("table")
        if table:
            lines += ["", f"## Speed ({title})", "", table.strip()]
    acc = steps.get("accuracy", {})
    if any(m in acc for m in METHODS):
        lines += [
            "",
            f"## Accuracy (CIFAR-10-LT split 1; {acc.get('plan')})",
            "",
            "| method | status | epochs | epoch s (steady) | linear acc / many / medium / few / "
            "std | few-shot acc / many / medium / few / std | kNN |",
            "|---|---|---:|---:|---|---|---:|",
        ]
        for m in METHODS:
            r = acc.get(m, {})
            probes = [
                " / ".join(
                    _fmt(r.get(p, {}).get(k)) for k in ("acc", "many", "medium", "few", "std")
                )
                for p in ("linear", "fewshot")
            ]
            knn = next((v for k, v in r.get("knn", {}).items() if "acc" in k), None)
            lines.append(
                f"| {m} | {r.get('status')} | {r.get('epochs_reached', 0)} | "
                f"{_fmt(r.get('epoch_seconds'), 3)} ({_fmt(r.get('steady_epoch_seconds'), 3)}) | "
                f"{probes[0]} | {probes[1]} | {_fmt(knn)} |"
            )
    if "table" in steps.get("files", {}).get("loading_224", {}):
        lines += ["", "## 224-px file path", "", steps["files"]["loading_224"]["table"].strip()]
    return "\n".join(lines) + "\n"


# --- preparing the carried folder -----------------------------------------------------------


def prepare(folder: Path, data: Path, wheels: Path, classes: int = 40) -> dict[str, Any]:
    """Fill the folder a device call carries: the wheels the device lacks (hydra-core,
    omegaconf, antlr), the CIFAR-10 copy, Tiny ImageNet cut to its first ``classes`` classes
    (the nvJPEG test uses 12; the whole archive is 36 MiB of the call's 64), and COMMIT."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in folder.glob("*.whl"):
        f.unlink()
    for whl in sorted(wheels.glob("*.whl")):
        shutil.copy2(whl, folder / whl.name)
    for name in CIFAR:
        shutil.copy2(data / name, folder / name)
    src, dst = data / TINY_IMAGENET, folder / TINY_IMAGENET
    if src.is_file():
        with tarfile.open(src, "r:gz") as tar:
            members = tar.getmembers()
            wnids = sorted(
                {
                    Path(m.name).parts[1]
                    for m in members
                    if m.name.startswith("train/") and len(Path(m.name).parts) == 3
                }
            )
            keep = set(wnids[:classes])
            with tarfile.open(dst, "w:gz") as out:
                for m in members:
                    parts = Path(m.name).parts
                    if len(parts) >= 2 and parts[0] in ("train", "val") and parts[1] not in keep:
                        continue
                    out.addfile(m, tar.extractfile(m) if m.isfile() else None)
    (folder / "COMMIT").write_text(commit(data) + "\n")
    sizes = {f.name: f.stat().st_size for f in sorted(folder.iterdir()) if f.is_file()}
    return {"folder": str(folder), "files": sizes, "mib": round(sum(sizes.values()) / 2**20, 1)}


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--budget",
        type=float,
        default=BUDGET_S,
        help=f"seconds for the whole plan (default {BUDGET_S:.0f}: a {CALL_LIMIT_S:.0f}-s device "
        f"call less {MARGIN_S:.0f} s of margin)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "outputs" / "gpu-check",
        help="where gpu_check.json / .md / .log go (comes back from a device call)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "gpu-check",
        help="scratch: job directories, image trees, bench files, full logs",
    )
    parser.add_argument("--dry-run", action="store_true", help="the plan on the CPU, toy sizes")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset")
    # helper modes, run by the steps in subprocesses (and --prepare, by make gpu-check-device)
    parser.add_argument("--env-info", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--write-tree", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tree-scale", choices=tuple(TREE), default="gpu", help=argparse.SUPPRESS)
    parser.add_argument(
        "--prepare",
        type=Path,
        default=None,
        help="fill this folder for a device call (wheels, data, COMMIT) and stop",
    )
    parser.add_argument(
        "--wheels",
        type=Path,
        default=REPO.parent / "shared" / "wheels",
        help="with --prepare: the wheels to carry",
    )
    args = parser.parse_args(argv)
    data = Path(os.environ.get("SDCLR_DATA", "data")).resolve()
    if args.env_info:
        print(MARK + json.dumps(env_info(args.dry_run)))
        return 0
    if args.write_tree:
        print(MARK + json.dumps(write_tree(args.write_tree, data / CIFAR[0], args.tree_scale)))
        return 0
    if args.prepare:
        print(json.dumps(prepare(args.prepare.resolve(), data, args.wheels), indent=2))
        return 0
    selected = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = set(selected) - set(STEPS)
    if unknown:
        parser.error(
            f"--steps: unknown {', '.join(sorted(unknown))}; choose from {', '.join(STEPS)}"
        )
    out, work = args.out.resolve(), args.work.resolve()
    for sub in ("logs", "bench", "jobs", "tree", "splits"):  # this check's scratch, fresh
        shutil.rmtree(work / sub, ignore_errors=True)
    check = Check(
        out=out, work=work, budget=args.budget, dry=args.dry_run, data=data, selected=set(selected)
    )
    check.record = {
        "mode": "dry-run (CPU, toy sizes)" if args.dry_run else "gpu",
        "budget_s": args.budget,
        "margin_s": MARGIN_S,
        "order": list(STEPS),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": commit(data),
        "command": " ".join(
            ["scripts/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "data": str(data),
        "work": str(work),
        "finished": False,
    }
    rc = run_plan(check, PLAN)
    print(f"results: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}, {out / 'gpu_check.log'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
