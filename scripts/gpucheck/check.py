"""The runner: a step, the planner's costs, and one run of the plan under its budget (its
clock, its commands in subprocesses, its three result files)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpucheck.report import markdown
from gpucheck.settings import (
    COMPILE_WORST_S,
    FAIL_ENV,
    LOG_HEAD,
    LOG_TAIL,
    MARK,
    POLL_S,
    REPO,
    ROW_WORST_S,
    SAFETY,
    START_WORST_S,
    WANT_EPOCHS,
)


class StepFailed(Exception):
    """A step's failure, with what it measured before it failed."""

    def __init__(self, message: str, results: dict[str, Any] | None = None):
        super().__init__(message)
        self.results = results or {}


@dataclass(frozen=True)
class CommandArgs:
    """What a step's commands depend on: the scratch folder, full or (``dry``) the dry run's
    toy sizes; ``extra``: Hydra overrides appended to the runs; ``epochs``: the accuracy
    runs'; ``rows``: a speed step's rows (None: all of them)."""

    work: Path
    dry: bool = False
    extra: tuple[str, ...] = ()
    epochs: int = WANT_EPOCHS
    rows: list[str] | None = None

    @property
    def scale(self) -> str:
        """Which sizes the commands run at: "dry" (toy, CPU) or "gpu"."""
        return "dry" if self.dry else "gpu"


@dataclass
class Step:
    """One step of the plan: what it runs and measures (``run``), its least seconds from the
    costs known (``estimate``: can it finish?), and the commands it runs (``commands``: in
    one place, for the step and for the test that composes them)."""

    name: str
    title: str
    run: Callable[[Check], dict[str, Any]]
    estimate: Callable[[Check], float]  # its seconds from the costs known: can it finish?
    cuda_only: bool = False
    needs: tuple[str, ...] = ()  # files under SDCLR_DATA
    cap: float | None = None  # the most seconds its commands may take (None: the time left)
    commands: Callable[[CommandArgs], list[list[str]]] | None = None  # None: runs none


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
    selected: set[str] | None = None  # --steps; None: every step
    cuda: bool | None = None  # known once the env step ran
    commands: list[dict[str, Any]] = field(default_factory=list)  # what the log bundles
    costs: Costs = field(default_factory=Costs)
    step_end: float | None = None  # the running step's cap, on the monotonic clock
    plan: list[Step] = field(default_factory=list)  # the steps run_plan runs, in order

    @property
    def scale(self) -> str:
        """Which sizes the commands run at: "dry" (toy, CPU) or "gpu"."""
        return "dry" if self.dry else "gpu"

    def chosen(self, name: str) -> bool:
        """Whether step ``name`` is selected (``--steps``)."""
        return self.selected is None or name in self.selected

    def command_args(self, **kwargs: Any) -> CommandArgs:
        """A step's commands at this check's sizes, in its scratch folder."""
        return CommandArgs(self.work, self.dry, **kwargs)

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
    check.plan = list(steps)
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
        if not check.chosen(s.name):
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
