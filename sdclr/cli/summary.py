"""What a job says about itself: its run record in ``metrics.json``, its own report (table
and plots in ``job_dir/report``, and W&B), and the summary printed at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sdclr.config.derived import bn_mode, head_depth, method_label, method_title
from sdclr.data.run_data import RunData
from sdclr.data.splits import paper_split_note
from sdclr.report.build import build_report, read_tables, report_plots
from sdclr.report.jobs import EVAL_STAGES, RANDOM_INIT_SUFFIX
from sdclr.report.paired import accuracy_gain
from sdclr.report.plots import (
    write_pretrain_plots,
)
from sdclr.report.render import format_job_metrics
from sdclr.utils.runlog import note
from sdclr.utils.tracking import Tracker


def run_record(cfg: DictConfig, device: torch.device, data: RunData) -> dict[str, Any]:
    """``metrics["run"]``: what ran (method, options, split, data), as the report groups it."""
    split = data.split
    return {
        "method": method_title(cfg),
        "method_name": str(cfg.method.name),
        "label": method_label(cfg),
        "dataset": cfg.data.name,
        "split": int(cfg.split.index),
        "pretrain_set": cfg.split.pretrain_set,
        "backbone": cfg.backbone.name,
        "prune_ratio": cfg.prune.ratio,
        "random_ratio": cfg.prune.random_ratio,
        "random_rule": str(cfg.prune.random_rule),
        "bn": bn_mode(cfg),
        "head_depth": head_depth(cfg),
        "loss": str(cfg.loss.name) if cfg.method.name == "simclr" else None,
        "temperature_schedule": str(cfg.temperature.schedule),
        "boost": bool(cfg.boost),
        "seed": int(cfg.seed),
        "fraction": float(cfg.data.fraction),
        "smoke": bool(cfg.smoke),
        "device": str(device),
        # official (the reference's files) | generated | file | lists, as the report compares
        # it; split_files says which files, and how they were checked
        "split_source": split.kind,
        "split_files": split.source,
        # set when the dataset has a published split and this run generated its own instead
        "split_note": paper_split_note(str(cfg.data.name), split.source),
        "data_source": data.source,
        "data_fingerprint": data.fingerprint,
        "protocol": protocol_record(cfg),
    }


def protocol_record(cfg: DictConfig) -> dict[str, Any]:
    """The schedule the run's numbers were measured with, which the report compares with the
    paper's before it prints a published row (``sdclr.report.published``)."""
    linear = OmegaConf.to_container(cfg.linear, resolve=True)
    assert isinstance(linear, dict)
    linear.pop("eval_batch_size", None)  # no effect on the result
    return {
        "pretrain_epochs": int(cfg.pretrain.epochs),
        "pretrain_batch_size": int(cfg.pretrain.batch_size),
        "pretrain_lr": float(cfg.pretrain.lr),
        "temperature": float(cfg.pretrain.temperature),
        "linear": linear,
    }


def job_report(job_dir: Path, metrics: dict[str, Any], tracker: Tracker) -> None:
    """This job's table and plots in ``job_dir/report`` (and W&B)."""
    out = job_dir / "report"
    if not any(s in metrics for s, _ in EVAL_STAGES):
        # a pretrain-only job: its learning curve and diagnostics, if it has them
        plots = write_pretrain_plots(metrics, out)
        tracker.log_files(images=plots)
        return
    build_report(job_dir, out)
    tracker.log_files(tables=read_tables(out), images=report_plots(out))


def print_summary(cfg: DictConfig, metrics: dict[str, Any], job_dir: Path) -> None:
    lines = [
        f"\n{metrics['run']['label']} on {cfg.data.name} split {cfg.split.index} "
        f"({cfg.split.pretrain_set})"
    ]
    if cfg.smoke or cfg.data.fraction < 1:
        lines.append(
            f"NOTE: smoke-scale run (data.fraction={cfg.data.fraction:g}, "
            f"pretrain.epochs={cfg.pretrain.epochs}); the numbers show the pipeline "
            f"works, not the method's accuracy."
        )
    if metrics.get("run", {}).get("split_note"):
        lines.append(metrics["run"]["split_note"])
    if "pretrain" in metrics:
        pre = metrics["pretrain"]
        dens = pre.get("mask_density")
        lines.append(
            f"pretrain: {pre['epochs']} epochs, final loss {pre['final_loss']:.4f}, "
            f"{pre['seconds']:.1f} s" + (f", mask density {dens[-1]:.3f}" if dens else "")
        )
        if pre.get("knn"):
            k = pre["knn"][-1]
            lines.append(
                f"kNN monitor (epoch {k['epoch']}): acc {k['acc']:.2f}, many {k['many']:.2f}, "
                f"medium {k['medium']:.2f}, few {k['few']:.2f}"
            )
            if len(pre["knn"]) > 1:
                curve = ", ".join(f"{p['epoch']}: {p['acc']:.2f}" for p in pre["knn"])
                lines.append(f"kNN accuracy by epoch (0 = random init): {curve}")
    if any(s in metrics for s, _ in EVAL_STAGES):
        lines.append(format_job_metrics(metrics))
        lines += baseline_lines(metrics)
    lines.append(f"job directory: {job_dir}")
    note("\n".join(lines))  # stdout, and the end of the job's run.log


def baseline_lines(metrics: dict[str, Any]) -> list[str]:
    """Pretrained minus random init, per probe, when the job ran the baseline: the line that
    says whether pretraining helped."""
    out = []
    for stage, title in EVAL_STAGES:
        ours, base = metrics.get(stage), metrics.get(stage + RANDOM_INIT_SUFFIX)
        if not (isinstance(ours, dict) and isinstance(base, dict)):
            continue
        gain, se = accuracy_gain(ours["acc"], base["acc"], int(ours.get("test_images") or 0))
        if gain > 2 * se:
            verdict = "pretraining helps"
        elif gain < -2 * se:
            verdict = "pretraining is WORSE than random init"
        else:
            verdict = "no clear difference from random init (within 2 standard errors)"
        out.append(
            f"{title}: pretrained {ours['acc']:.2f} vs random init {base['acc']:.2f} "
            f"({gain:+.2f} ± {se:.2f} points, 1 s.e.): {verdict}"
        )
    return out
