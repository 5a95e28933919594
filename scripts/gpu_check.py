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

The code: this file is the command line; the plan is the package ``scripts/gpucheck/`` (one
module per step, each with the commands it runs; ``gpucheck/plan.py`` lists the steps in order).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# the package beside this file: its directory is on the path when this runs as a script, not
# when a test loads this file by its path
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from gpucheck.accuracy import plan_epochs  # noqa: E402
from gpucheck.check import Check, Costs, Step, StepFailed, plan_basis, run_plan  # noqa: E402
from gpucheck.cuda_tests import cuda_tests  # noqa: E402
from gpucheck.default_run import default_run_estimate, epoch_timing  # noqa: E402
from gpucheck.env import commit, env_info  # noqa: E402
from gpucheck.files import write_tree  # noqa: E402
from gpucheck.plan import PLAN, STEP_BY_NAME, STEPS, commands  # noqa: E402
from gpucheck.prepare import prepare  # noqa: E402
from gpucheck.settings import (  # noqa: E402
    BUDGET_S,
    CALL_LIMIT_S,
    CIFAR,
    COMPILE_WORST_S,
    COMPILED_ROWS,
    FAIL_ENV,
    MARGIN_S,
    MARK,
    REPO,
    START_WORST_S,
    TREE,
)
from gpucheck.speed import plan_rows, row_cost, speed_estimate, step_speed  # noqa: E402

# the plan's parts a test (or a reader) reaches through this file
__all__ = [
    "COMPILED_ROWS",
    "COMPILE_WORST_S",
    "FAIL_ENV",
    "PLAN",
    "START_WORST_S",
    "STEP_BY_NAME",
    "STEPS",
    "Check",
    "Costs",
    "Step",
    "StepFailed",
    "commands",
    "cuda_tests",
    "default_run_estimate",
    "epoch_timing",
    "main",
    "plan_basis",
    "plan_epochs",
    "plan_rows",
    "row_cost",
    "run_plan",
    "speed_estimate",
    "step_speed",
]


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
