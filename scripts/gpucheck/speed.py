"""Steps 3, 5 and 7, ``speed_eager``, ``speed_compiled``, ``speed_reduce_overhead``: the rows
of ``python -m sdclr.bench`` that fit in the time left, in one bench command per step, each
published as it finishes; what they measured goes to the planner."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpucheck.check import Check, CommandArgs, StepFailed, plan_basis
from gpucheck.settings import (
    BENCH_METHODS,
    COMPILED_ROWS,
    EAGER_ROWS,
    PY,
    REDUCE_OVERHEAD_ROWS,
    SPEED_BENCH,
    TOY_BENCH,
)

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


def bench_command(args: CommandArgs, label: str, *flags: str) -> list[str]:
    """``python -m sdclr.bench`` writing ``work/bench/<label>.json`` and its table (``.md``);
    the dry run at toy sizes."""
    b = args.work / "bench" / label
    toy = TOY_BENCH if args.dry else []
    return [PY, "-m", "sdclr.bench", *toy, *flags, "--out", f"{b}.json", "--table", f"{b}.md"]


def speed_commands(step: str) -> Callable[[CommandArgs], list[list[str]]]:
    """A speed step's bench command: its chosen rows (``args.rows``; default all of them)."""

    def commands(args: CommandArgs) -> list[list[str]]:
        label, all_rows, _, flags = SPEED[step]
        chosen = args.rows if args.rows is not None else [name for name, _ in all_rows]
        reps = [] if args.dry else SPEED_BENCH
        return [bench_command(args, label, *bench_args(chosen), *flags, *reps)]

    return commands


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


def run_bench(
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
        partial = read_bench(cmd, round(time.monotonic() - t0, 1))
        if partial is not None and on_rows is not None:
            on_rows(partial)

    try:
        check.run(label, cmd, on_poll=poll)
    except StepFailed as e:
        partial = read_bench(cmd, round(time.monotonic() - t0, 1))
        done = ", ".join(partial["rows_done"]) if partial else ""
        raise StepFailed(
            f"{e}; rows finished: {done or 'none'}", {"bench": partial} if partial else {}
        ) from None
    result = read_bench(cmd, round(time.monotonic() - t0, 1))
    if result is None:
        raise StepFailed(f"{label}: exited 0 but wrote no JSON")
    return result


def read_bench(cmd: list[str], wall_seconds: float | None) -> dict[str, Any] | None:
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
    cmd = speed_commands(step)(check.command_args(rows=chosen))[0]
    try:
        results["bench"] = run_bench(
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
