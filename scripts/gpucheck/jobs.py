"""A run's job directory as the steps read it (while it runs, and after), and the runner's
command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpucheck.check import CommandArgs
from gpucheck.settings import PY


def run_command(args: CommandArgs, job: str, *overrides: str) -> list[str]:
    """``python -m sdclr stage=all`` in ``work/jobs/<job>``, with ``overrides`` and the extra
    ones. Split 1 and logger=none are the defaults, named so a changed default cannot move
    them."""
    return [
        *(PY, "-m", "sdclr", "stage=all", "split=split1", "logger=none"),
        f"hydra.run.dir={args.work / 'jobs' / job}",
        *overrides,
        *args.extra,
    ]


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
