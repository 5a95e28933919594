"""``DIR/gpu_check.md``: a row per step (what it found, or why it did not run), the planner's
costs, then the speed tables, the accuracy table and the 224-px table. It reads only the
record (``gpu_check.json``'s content)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpucheck.settings import BENCH_METHODS, METHODS

SPEED_TITLES = {
    "speed_eager": "eager",
    "speed_compiled": "compiled, default mode",
    "speed_reduce_overhead": "compiled, reduce-overhead",
}


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


def env_summary(r: dict[str, Any]) -> str:
    return (
        f"{r.get('gpu', 'no GPU')}, {r.get('gpu_memory_mib', '-')} MiB, driver "
        f"{r.get('driver', '-')}; torch {r.get('torch')}, CUDA {r.get('cuda')}, cuDNN "
        f"{r.get('cudnn')}, timm {r.get('timm')}; commit {r.get('commit')}; "
        f"device=auto: {r.get('auto_device')}"
    )


def default_run_summary(r: dict[str, Any]) -> str:
    ran = r.get("ran") or {}
    return (
        f"ran: {', '.join(f'{k} {v}' for k, v in ran.items()) or '-'}; "
        f"{r.get('epochs_reached', 0)} epochs, steady epoch "
        f"{_fmt(r.get('steady_epoch_seconds'), 2)} s, "
        f"training compile {_fmt(r.get('compile_train_seconds'), 1)} s, first-epoch extra "
        f"{_fmt(r.get('first_epoch_extra_seconds'), 1)} s, run start "
        f"{_fmt(r.get('run_start_seconds'), 1)} s; linear "
        f"{_fmt((r.get('linear') or {}).get('acc'))}, few-shot "
        f"{_fmt((r.get('fewshot') or {}).get('acc'))}; job {r.get('job_status', '-')}"
    )


def cuda_tests_summary(r: dict[str, Any]) -> str:
    return f"{r.get('summary')}: " + ", ".join(
        f"{k.split('::')[-1]} {v}" for k, v in r.get("outcomes", {}).items()
    )


def accuracy_summary(r: dict[str, Any]) -> str:
    return "; ".join(
        f"{m} {r[m].get('epochs_reached', 0)} epochs: linear "
        f"{_fmt(r[m].get('linear', {}).get('acc'))}, few-shot "
        f"{_fmt(r[m].get('fewshot', {}).get('acc'))}"
        for m in METHODS
        if m in r
    )


def files_summary(r: dict[str, Any]) -> str:
    ld = r.get("loading_224", {})
    return (
        f"224 px images/s: suite {_fmt(ld.get('suite_images_per_second'), 0)} "
        f"({ld.get('decoder')}), DataLoader + PIL "
        f"{_fmt(ld.get('dataloader_pil_images_per_second'), 0)}; data=folder run "
        f"{r.get('folder', {}).get('job_status', '-')}"
    )


#: Each step's cell, from its results (a step not named here: its status and error only).
SUMMARIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "env": env_summary,
    "default_run": default_run_summary,
    "cuda_tests": cuda_tests_summary,
    **{step: speed_summary for step in SPEED_TITLES},
    "accuracy": accuracy_summary,
    "files": files_summary,
}


def summary(rec: dict[str, Any]) -> str:
    """One cell: what a step found, or why it did not run."""
    if rec["status"] in ("skipped", "pending"):
        return rec.get("reason", "")
    r = rec.get("results") or {}
    text = SUMMARIES[rec["name"]](r) if r and rec["name"] in SUMMARIES else ""
    if rec["status"] == "failed":
        text = f"**{rec.get('error', '')}**" + (f"; {text}" if text else "")
    elif rec["status"] == "running":
        text = "(running) " + text
    return text.replace("|", "/").replace("\n", " ")


def costs_line(costs: dict[str, Any]) -> str:
    """The planner's costs: each measured (and by which step) or assumed."""
    return "Planner costs (s; measured x SAFETY, or the worst case assumed until measured): " + (
        ", ".join(
            f"{k} {_fmt(v.get('plan_s'), 1)} ("
            + (
                f"measured {_fmt(v['measured_s'], 1)} by {v['measured_by']}"
                if "measured_s" in v
                else "assumed"
            )
            + ")"
            for k, v in costs.items()
        )
    )


def accuracy_table(acc: dict[str, Any]) -> list[str]:
    """The accuracy runs: status, epochs, epoch times, the probes and the kNN accuracy."""
    lines = [
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
            " / ".join(_fmt(r.get(p, {}).get(k)) for k in ("acc", "many", "medium", "few", "std"))
            for p in ("linear", "fewshot")
        ]
        knn = next((v for k, v in r.get("knn", {}).items() if "acc" in k), None)
        lines.append(
            f"| {m} | {r.get('status')} | {r.get('epochs_reached', 0)} | "
            f"{_fmt(r.get('epoch_seconds'), 3)} ({_fmt(r.get('steady_epoch_seconds'), 3)}) | "
            f"{probes[0]} | {probes[1]} | {_fmt(knn)} |"
        )
    return lines


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
        lines += ["", costs_line(costs)]
    steps = {r["name"]: r.get("results") or {} for r in record.get("steps", [])}
    for step, title in SPEED_TITLES.items():
        table = (steps.get(step, {}).get("bench") or {}).get("table")
        if table:
            lines += ["", f"## Speed ({title})", "", table.strip()]
    acc = steps.get("accuracy", {})
    if any(m in acc for m in METHODS):
        lines += accuracy_table(acc)
    if "table" in steps.get("files", {}).get("loading_224", {}):
        lines += ["", "## 224-px file path", "", steps["files"]["loading_224"]["table"].strip()]
    return "\n".join(lines) + "\n"
