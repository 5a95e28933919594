"""The end of a sweep (``sdclr -m ...``): its report, built in the sweep directory.

:class:`SweepReport` is a Hydra callback (``hydra.callbacks.sweep_report`` in
``conf/config.yaml``): Hydra calls ``on_multirun_end`` in the process that ran the sweep once
every job has returned, whatever the launcher (the basic one, or submitit's local and SLURM
executors, where the jobs ran elsewhere). The report (:mod:`sdclr.report.build`) goes into the
sweep directory and the last line printed names its ``report.md``; ``make report DIR=`` (``python
-m sdclr.report DIR``) rebuilds it. A report that cannot be built is one ``error:`` line on
stderr: it never hides the jobs' own results, and the exit status stays theirs (1 when a job
failed, listed after this line by the runner).
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepReport(Callback):
    """Build the sweep's report when a multirun ends (see the module docstring)."""

    def __init__(self) -> None:
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # The sweep directory of this multirun, as the sweeper and the launcher see it:
        # ``sdclr_now`` is a cached resolver, so the first resolution in this config fixes the
        # time for every job (copied into each job's config, and pickled with submitit's).
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("RANK", "0") != "0":  # one report, from the process that owns it
            return
        sweep_dir = self.sweep_dir or Path(str(config.hydra.sweep.dir))
        line, ok = build_sweep_report(sweep_dir.absolute(), debug=bool(config.get("debug")))
        print(line, file=sys.stdout if ok else sys.stderr, flush=True)


def build_sweep_report(sweep_dir: Path, debug: bool = False) -> tuple[str, bool]:
    """Build the report of ``sweep_dir`` in it; returns ``(line, ok)``: the line naming its
    ``report.md`` and its jobs by state, or a one-line error (with the traceback before it
    when ``debug``)."""
    import json

    from sdclr.report.build import build_report
    from sdclr.report.jobs import ReportError

    try:
        build_report(sweep_dir)
        counts = json.loads((sweep_dir / "report.json").read_text(encoding="utf-8"))["counts"]
    except Exception as exc:  # the jobs' results stand; the report can be rebuilt
        if debug:
            traceback.print_exc()
        reason = str(exc) if isinstance(exc, ReportError) else f"{type(exc).__name__}: {exc}"
        reason = " ".join(reason.split())
        return (
            f"error: the sweep's report was not built ({reason}); rebuild it with "
            f"`make report DIR={sweep_dir}`",
            False,
        )
    jobs = ", ".join(
        f"{counts[k]} {k}" for k in ("completed", "failed", "incomplete", "missing") if counts[k]
    )
    return f"sweep report ({jobs} jobs): {sweep_dir / 'report.md'}", True


def sweep_objective(metrics: dict[str, Any], key: str | None, searching: bool) -> float | None:
    """The number a job returns to Hydra's sweeper: ``sweep.objective``, a dotted path into
    ``metrics.json`` (``linear.acc`` by default; ``fewshot.few``, ``knn.acc``, ...). A sweeper
    that searches (``hydra/sweeper=optuna``) maximises it; the basic sweeper ignores it.

    None when unset, or when this job's stages did not produce a number there
    (``stage=pretrain``, say); under a searching sweeper that is one warning line, since it
    counts the trial as failed. Never an error: the job's own results stand."""
    if not key:
        return None
    value: Any = metrics
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        if searching:
            print(
                f"warning: sweep.objective={key} is not a number in this job's metrics.json "
                f"(its sections: {', '.join(sorted(metrics)) or 'none'}); the sweeper gets no "
                "objective from this job",
                file=sys.stderr,
                flush=True,
            )
        return None
    return float(value)
