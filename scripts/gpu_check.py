#!/usr/bin/env python
"""Everything a GPU can tell us in one device call, most important first (``make gpu-check``).

    python scripts/gpu_check.py --budget 480 --out DIR     # on a CUDA machine
    python scripts/gpu_check.py --dry-run --out DIR        # the same plan on the CPU, toy sizes

The plan, in this order, under one time budget (``--budget`` seconds; ``--steps`` a subset):

1. ``env``: GPU name and memory, driver, torch / CUDA / cuDNN / timm versions, commit; the
   package imports and ``device=auto`` picks CUDA.
2. ``cuda_tests``: every test that skips itself on CPU (found by its ``skipif(not
   torch.cuda.is_available())`` mark), with their outcomes.
3. ``speed``: ``python -m sdclr.bench`` with fewer repetitions than ``make bench`` but its rows
   (the methods, the ceiling, the step ratio, the augmentation, the probe, peak memory), the
   compile warm-up apart from the steady state; then again with ``--compile-mode
   reduce-overhead`` when that still leaves the accuracy step its minimum.
4. ``accuracy``: SimCLR and SDCLR p90 on CIFAR-10-LT split 1, full data, batch 512, the
   published optimiser, for as many epochs as the budget left allows (from step 3's epoch
   times: up to 200, at least 100 when that fits), then the full linear and few-shot probes.
5. ``files``: the 224-px file path: nvJPEG decoding plus both views against the DataLoader + PIL
   baseline (the bench's ``loading_224`` row), and one short ``data=folder`` run (ResNet-50).

Every step checks the clock first and is skipped, with the reason, when it cannot finish in
the budget; its commands run in subprocesses whose timeout is the time left. A failing step
is recorded with its error and the next step runs. After every step ``DIR/gpu_check.json``
(all results) and ``DIR/gpu_check.md`` (a table per step) are rewritten, and the commands'
output is bundled, trimmed, in ``DIR/gpu_check.log``: three files in all, so what a device
call brings back stays within its limits. Jobs, trees and caches go to ``--work``.

``--dry-run`` runs the plan on the CPU at toy sizes (a few steps, stage widths 8-64, 1% of
the data, one epoch; the CUDA-only test step is skipped: "no CUDA device"), in under a
minute: its independent toy commands run side by side (:meth:`Check.run_side_by_side`);
tests/e2e/test_gpu_check.py runs it. ``--prepare DIR`` fills the folder a device call
carries (wheels, data, commit); see ``make gpu-check-device`` and scripts/gpu_check_device.sh.
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
STEPS = ("env", "cuda_tests", "speed", "accuracy", "files")
CIFAR = ("cifar10-jpg.tar.gz", "cifar10-train-labels.npy")
TINY_IMAGENET = "tiny-imagenet-32.tar.gz"  # the nvJPEG test's image tree
MARK = "GPU_CHECK_JSON: "  # the line a helper subprocess prints its result on
FAIL_ENV = "SDCLR_GPU_CHECK_FAIL"  # for tests: comma-separated steps that fail on purpose
LOG_HEAD, LOG_TAIL = 4 << 10, 28 << 10  # bytes of each command's output kept in the log

# Toy sizes of the dry run: every run and bench on the CPU, tiny widths, a slice of the data.
TOY = (
    "device=cpu smoke=true backbone.channels=[8,16,32,64] pretrain.epochs=1 "
    "pretrain.batch_size=32 pretrain.warmup_epochs=0 linear.epochs=1 linear.milestones=[] "
    "fewshot.epochs=1 fewshot.milestones=[]"
).split()
TOY_RUN = [*TOY, "data.fraction=0.01", "linear.batch_size=64"]
TOY_FOLDER = [
    *TOY,
    *"data.image_size=32 data.eval_resize=36 data.workers=1 linear.batch_size=32".split(),
    "fewshot.batch_size=32",
]
# the short data=folder run at full size: ResNet-50 at 224 px on the tree, a few epochs, eager
# (compiling ResNet-50 at 224 px would double the step's time)
FOLDER_RUN = (
    "backbone=resnet50 pretrain.batch_size=256 linear.batch_size=256 fewshot.batch_size=256 "
    "pretrain.epochs=3 pretrain.warmup_epochs=1 linear.epochs=5 linear.milestones=[3,4] "
    "fewshot.epochs=5 fewshot.milestones=[3,4] compile=false"
).split()
TOY_BENCH = ["--quick", "--channels", "8,16,32,64"]
SPEED_BENCH = ["--steps", "10", "--warmup", "5", "--probe-epochs", "5"]  # make bench: 22/15/30
SPEED_ROWS = "methods,step_ratio,augmentation,probe"  # make bench's GPU rows but loading_224
# The accuracy step: epochs between these, from the measured epoch times.
MAX_EPOCHS, WANT_EPOCHS, MIN_EPOCHS = 200, 100, 10
SAFETY = 1.25  # on measured times, for what the runs add (monitors, checkpoints, logging)
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
    estimate: Callable[[Check], float]  # a lower bound of its seconds: can it still finish?
    cuda_only: bool = False
    needs: tuple[str, ...] = ()  # files under SDCLR_DATA


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

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def step(self, name: str) -> dict[str, Any]:
        return next(s for s in self.record["steps"] if s["name"] == name)

    def results(self, name: str) -> dict[str, Any]:
        return self.step(name).get("results") or {}

    def run(self, label: str, cmd: list[str], timeout: float | None = None) -> str:
        """Run ``cmd`` (from the repository root) with at most the time left; returns its
        output. Raises StepFailed when it fails or outruns its time (it is then killed)."""
        return self.wait_for(self.launch(label, cmd, timeout))

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
        """Start ``cmd``, its output going to a log file, with at most the time left."""
        limit = self.left() if timeout is None else min(timeout, self.left())
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
        return _Running(label, entry, proc, path, time.monotonic(), limit)

    def wait_for(self, running: _Running) -> str:
        """Wait for a started command (killing it at its limit); its output, or StepFailed."""
        proc, t0, limit, label = running.proc, running.t0, running.limit, running.label
        timed_out = False
        while proc.poll() is None:
            try:
                proc.wait(timeout=min(20.0, max(0.1, limit - (time.monotonic() - t0))))
            except subprocess.TimeoutExpired:
                self.write_log()  # a call killed meanwhile still brings this back
                if time.monotonic() - t0 >= limit:
                    timed_out = True
                    _kill(proc)
        running.entry.update(rc=proc.returncode, seconds=round(time.monotonic() - t0, 1))
        self.write_log()
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
        _write(self.out / "gpu_check.json", (json.dumps(self.record, indent=2) + "\n").encode())
        _write(self.out / "gpu_check.md", markdown(self.record).encode())


def _write(path: Path, data: bytes) -> None:
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
                f"least {rec['estimate_s']:.0f} s"
            )
        if reason:
            rec.update(status="skipped", reason=reason, seconds=0.0)
            print(f"[{s.name}] skipped: {reason}", flush=True)
            check.save()
            continue
        rec.update(status="running", started_s=round(check.budget - left, 1))
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
        rec["seconds"] = round(time.monotonic() - t0, 1)
        print(f"[{s.name}] {rec['status']} in {rec['seconds']:.0f} s", flush=True)
        if rec["status"] == "failed":
            print(f"[{s.name}] {rec['error']}", flush=True)
        check.save()
    check.record["finished"] = True
    check.save()
    return 1 if any(r["status"] == "failed" for r in check.record["steps"]) else 0


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


# --- 2. the CUDA tests ----------------------------------------------------------------------


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


def step_cuda_tests(check: Check) -> dict[str, Any]:
    files, names = cuda_tests()
    if not names:
        raise StepFailed("no test skips itself without CUDA: nothing to run")
    results: dict[str, Any] = {"selected": names}
    try:
        output = check.run("cuda_tests", commands("cuda_tests", check.work)[0])
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


# --- 3. the speed table ---------------------------------------------------------------------


def _bench(check: Check, label: str, cmd: list[str]) -> dict[str, Any]:
    """Run one bench command; its JSON, with the table it printed and its wall time."""
    path = Path(cmd[cmd.index("--out") + 1])
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    check.run(label, cmd)
    return _bench_result(cmd, round(time.monotonic() - t0, 1))


def _bench_result(cmd: list[str], wall_seconds: float | None) -> dict[str, Any]:
    """A finished bench command's JSON with the table it printed and its wall time."""
    result = json.loads(Path(cmd[cmd.index("--out") + 1]).read_text())
    result["table"] = Path(cmd[cmd.index("--table") + 1]).read_text()
    result["wall_seconds"] = wall_seconds
    return result


def step_speed(check: Check) -> dict[str, Any]:
    default, graphs = commands("speed", check.work, dry=check.dry)
    results: dict[str, Any] = {"default": _bench(check, "bench", default)}
    # the CUDA-graph rows, when the accuracy step keeps its minimum after them
    need = results["default"]["wall_seconds"] + accuracy_minimum(check, results["default"])
    if check.left() < need and "accuracy" in check.selected:
        results["reduce_overhead"] = {
            "status": "skipped",
            "reason": f"budget: {check.left():.0f} s left; the reduce-overhead bench (about "
            f"{results['default']['wall_seconds']:.0f} s) and the accuracy step's minimum "
            f"need {need:.0f} s",
        }
        return results
    try:
        results["reduce_overhead"] = _bench(check, "bench-reduce-overhead", graphs)
    except StepFailed as e:
        raise StepFailed(str(e), results) from None
    return results


# --- 4. the accuracy point ------------------------------------------------------------------

METHODS = {"simclr": "prune=none", "sdclr": "prune=p90"}


def speed_numbers(bench: dict[str, Any] | None) -> dict[str, Any]:
    """Seconds per epoch of each method and one run's fixed cost (start and data, compile, the
    two probes) from step 3's bench, with a margin; guesses, marked, where it measured none."""
    if not bench or "simclr" not in bench:
        return {"simclr": 2.0, "sdclr": 3.0, "fixed": 240.0, "measured": False}
    probe = bench.get("linear_probe", {}).get("seconds", 60.0)
    warmup = max(bench[m].get("warmup_seconds", 60.0) for m in ("simclr", "sdclr_p90"))
    return {
        "simclr": round(bench["simclr"]["epoch_seconds"] * SAFETY, 4),
        "sdclr": round(bench["sdclr_p90"]["epoch_seconds"] * SAFETY, 4),
        # start and data loading (about 30 s), compile, the linear probe, the few-shot probe
        # (100 epochs over 450 images and the val/test features: about 10% of it plus 15 s)
        "fixed": round(30.0 + warmup + SAFETY * 1.1 * probe + 15.0, 1),
        "measured": True,
    }


def plan_epochs(
    left: float, simclr: float, sdclr: float, fixed: float, reserve: float
) -> tuple[int, str]:
    """Pretraining epochs for both methods: up to MAX_EPOCHS with ``reserve`` seconds kept for
    the step after; WANT_EPOCHS if that fits only without the reserve; 0 below MIN_EPOCHS."""

    def fit(seconds: float) -> int:
        return max(0, int((seconds - 2 * fixed) // (simclr + sdclr)))

    n = min(MAX_EPOCHS, fit(left - reserve))
    note = f"{n} epochs fit in {left:.0f} s, {reserve:.0f} s kept for the 224-px step"
    if n < WANT_EPOCHS and fit(left) > n:
        n = min(WANT_EPOCHS, fit(left))
        note = f"{n} epochs fit in {left:.0f} s only without the 224-px step's {reserve:.0f} s"
    if n < MIN_EPOCHS:
        return 0, f"fewer than {MIN_EPOCHS} epochs of both methods fit in {left:.0f} s"
    return n, note


def accuracy_minimum(check: Check, bench: dict[str, Any] | None = None) -> float:
    """The accuracy step's lower bound: both runs at MIN_EPOCHS (the dry run: its toy runs)."""
    if check.dry:
        return 12.0
    s = speed_numbers(bench if bench is not None else check.results("speed").get("default"))
    return 2 * s["fixed"] + MIN_EPOCHS * (s["simclr"] + s["sdclr"])


def step_accuracy(check: Check) -> dict[str, Any]:
    speed = speed_numbers(check.results("speed").get("default"))
    reserve = files_estimate(check) if "files" in check.selected else 0.0
    if check.dry:
        epochs, note = 1, "dry run: 1 epoch"
    else:
        epochs, note = plan_epochs(
            check.left(), speed["simclr"], speed["sdclr"], speed["fixed"], reserve
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
        check.step("accuracy")["results"] = results
        check.save()

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
                record(name, n, check.run(f"accuracy-{name}", cmd), t0)
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
    records = []
    if (job / "metrics.jsonl").is_file():
        for line in (job / "metrics.jsonl").read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by a kill
    epochs = [r for r in records if r.get("kind") == "pretrain"]
    if epochs:
        out["epochs_reached"] = epochs[-1]["epoch"]
        if len(epochs) > 1:
            span = epochs[-1]["time"] - epochs[0]["time"]
            out["steady_epoch_seconds"] = span / (epochs[-1]["epoch"] - epochs[0]["epoch"])
    knn = [r for r in records if r.get("kind") == "knn"]
    if knn:
        out["knn"] = {k: v for k, v in knn[-1].items() if k not in ("kind", "time")}
    if (job / "metrics.json").is_file():
        m = json.loads((job / "metrics.json").read_text())
        pre = m.get("pretrain", {})
        if pre.get("diagnostics"):
            pre["diagnostics"] = pre["diagnostics"][-1:]
        pre.pop("split_counts", None)
        out.update({k: m[k] for k in ("run", "pretrain", "linear", "fewshot") if k in m})
        if pre.get("epochs"):
            out["epochs_reached"] = pre["epochs"]
            out["epoch_seconds"] = pre["seconds"] / pre["epochs"]
    if (job / "status.json").is_file():
        out["job_status"] = json.loads((job / "status.json").read_text()).get("status")
    return out


# --- 5. the 224-px file path ----------------------------------------------------------------


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
    return 10.0 if check.dry else 75.0


def step_files(check: Check) -> dict[str, Any]:
    tree_cmd, bench_cmd, folder_cmd = commands("files", check.work, dry=check.dry)
    for sub in ("tree", "splits", "jobs/folder"):
        shutil.rmtree(check.work / sub, ignore_errors=True)
    results: dict[str, Any] = {"tree": check.run_json("tree", tree_cmd)}
    if not check.cuda:
        results["nvjpeg"] = "not run: no CUDA device (the CPU loader workers decoded)"
    try:
        if check.dry:  # toy sizes, the bench's numbers only plumbing: side by side
            bench_out = Path(bench_cmd[bench_cmd.index("--out") + 1])
            bench_out.parent.mkdir(parents=True, exist_ok=True)
            outcomes = check.run_side_by_side([("bench-224", bench_cmd), ("folder", folder_cmd)])
            failed = [o for o in outcomes if isinstance(o, StepFailed)]
            if not isinstance(outcomes[0], StepFailed):
                bench = _bench_result(bench_cmd, None)
                results["loading_224"] = {**bench["loading_224"], "table": bench["table"]}
            if failed:
                raise failed[0]
        else:
            bench = _bench(check, "bench-224", bench_cmd)
            results["loading_224"] = {**bench["loading_224"], "table": bench["table"]}
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
) -> list[list[str]]:
    """The commands a step runs, at full size or (``dry``) at the dry run's toy sizes;
    ``extra``: Hydra overrides appended to the runs."""
    extra = list(extra)

    def bench(label: str, *args: str) -> list[str]:
        b = work / "bench" / label
        toy = TOY_BENCH if dry else []
        return [PY, "-m", "sdclr.bench", *toy, *args, "--out", f"{b}.json", "--table", f"{b}.md"]

    if step == "env":
        return [[PY, __file__, "--env-info", *(["--dry-run"] if dry else [])]]
    if step == "cuda_tests":
        files, names = cuda_tests()
        pytest = [PY, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider"]
        return [[*pytest, "--continue-on-collection-errors", *files, "-k", " or ".join(names)]]
    if step == "speed":
        rows = ["--rows", SPEED_ROWS, *([] if dry else SPEED_BENCH)]
        graphs = ["--rows", "methods"] if dry else rows  # the CPU has no graphs: plumbing only
        return [
            bench("bench", *rows),
            bench("bench-reduce-overhead", *graphs, "--compile-mode", "reduce-overhead"),
        ]
    if step == "accuracy":
        size = (
            TOY_RUN
            if dry
            else [
                f"pretrain.epochs={epochs}",
                f"pretrain.warmup_epochs={min(10, epochs // 10)}",
            ]
        )
        return [
            [
                *(PY, "-m", "sdclr", "stage=all", "split=split1", prune, "logger=none"),
                f"hydra.run.dir={work / 'jobs' / f'acc-{name}'}",
                *size,
                *extra,
            ]
            for name, prune in METHODS.items()
        ]
    if step == "files":
        tree = work / "tree"
        run = [
            *(PY, "-m", "sdclr", "data=folder", f"data.root={tree}", "data.test_dir=test"),
            f"split.dir={work / 'splits'}",
            *("stage=all", "prune=p90", "logger=none", "smoke=true"),
            f"hydra.run.dir={work / 'jobs' / 'folder'}",
            *(TOY_FOLDER if dry else FOLDER_RUN),
            *extra,
        ]
        return [
            [PY, __file__, "--write-tree", str(tree), "--tree-scale", "dry" if dry else "gpu"],
            bench("bench-224", "--rows", "loading_224"),
            run,
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
        "cuda_tests",
        "the tests that skip themselves without CUDA",
        step_cuda_tests,
        lambda c: 60.0,
        cuda_only=True,
        needs=(*CIFAR, TINY_IMAGENET),
    ),
    Step(
        "speed",
        "speed table (sdclr.bench), default and reduce-overhead",
        step_speed,
        lambda c: 8.0 if c.dry else 90.0,
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
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "-"


def summary(rec: dict[str, Any]) -> str:
    """One cell: what a step found, or why it did not run."""
    if rec["status"] in ("skipped", "pending", "running"):
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
    elif rec["name"] == "cuda_tests" and r:
        text = f"{r.get('summary')}: " + ", ".join(
            f"{k.split('::')[-1]} {v}" for k, v in r.get("outcomes", {}).items()
        )
    elif rec["name"] == "speed" and "default" in r:
        d = r["default"]
        text = (
            f"epoch s: SimCLR {_fmt(d['simclr']['epoch_seconds'], 3)}, SDCLR "
            f"{_fmt(d['sdclr_p90']['epoch_seconds'], 3)}, fused "
            f"{_fmt(d['sdclr_p90_fused']['epoch_seconds'], 3)}"
        )
        ro = r.get("reduce_overhead", {})
        if "sdclr_p90" in ro:
            text += f"; reduce-overhead SDCLR {_fmt(ro['sdclr_p90']['epoch_seconds'], 3)}"
        elif ro:
            text += f"; reduce-overhead {ro.get('status')}: {ro.get('reason')}"
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
    return text.replace("|", "/").replace("\n", " ")


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
    steps = {r["name"]: r.get("results") or {} for r in record.get("steps", [])}
    for key, title in (("default", "default compile mode"), ("reduce_overhead", "reduce-overhead")):
        if "table" in steps.get("speed", {}).get(key, {}):
            lines += ["", f"## Speed ({title})", "", steps["speed"][key]["table"].strip()]
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
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole plan")
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
