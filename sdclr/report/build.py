"""Build the sweep report: read the jobs, aggregate them, draw the plots, write the report.

Outputs (in ``DIR`` or ``--out``): ``report.md`` (also printed), ``report.json``,
``group_accuracy.png`` and ``per_class_accuracy.png``; when the runs have them,
``knn_curves.png`` and ``diagnostics.png`` (:mod:`sdclr.report.plots`). The jobs' own maps
of their test features (``stage=embed``) stay in the job directories; the report links them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sdclr.report.aggregate import STD_DDOF, aggregate, label_of
from sdclr.report.jobs import (
    EMBED_STAGE,
    RANDOM_INIT_SUFFIX,
    STAGES,
    ReportError,
    find_job_dirs,
    load_job,
    missing_combinations,
    read_sweep_spec,
)
from sdclr.report.paired import paired_differences
from sdclr.report.plots import (
    DIAGNOSTICS_PLOT,
    GROUP_PLOT,
    KNN_PLOT,
    PER_CLASS_PLOT,
    plot_diagnostics,
    plot_group_accuracy,
    plot_knn_curves,
    plot_per_class,
)
from sdclr.report.published import PUBLISHED, PUBLISHED_SOURCE, published_match
from sdclr.report.render import render_markdown
from sdclr.report.tables import per_class_rows, report_tables
from sdclr.utils.tracking import Tracker, sweep_group


def build_report(sweep_dir: Path, out_dir: Path | None = None) -> str:
    """Aggregate ``sweep_dir``; write report.md, report.json and the PNGs; return the markdown.

    Raises :class:`ReportError` when ``sweep_dir`` does not exist or holds no job dirs.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        what = "is not a directory" if sweep_dir.exists() else "does not exist"
        raise ReportError(
            f"sweep directory {sweep_dir} {what}; pass a Hydra multirun directory such as "
            "outputs/multirun/<date>/<time>"
        )
    job_dirs = find_job_dirs(sweep_dir)
    if not job_dirs:
        raise ReportError(
            f"no job dirs found under {sweep_dir} (none holds .hydra/config.yaml, metrics.json "
            "or status.json); pass the Hydra multirun directory of a sweep that has started"
        )
    out_dir = Path(out_dir) if out_dir is not None else sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    jobs = [load_job(d, sweep_dir) for d in job_dirs]
    spec, warnings = read_sweep_spec(sweep_dir)
    missing = missing_combinations(spec, jobs) if spec is not None else []
    methods = aggregate(jobs)
    for m in methods:
        warnings.extend(m.pop("warnings"))
    by_name = {j["name"]: j for j in jobs}
    for m in methods:
        m["published"], m["published_why_not"] = published_match(m, by_name)
    collapsed = [
        {
            "job": c["job"],
            "method": m["label"],
            "stage": stage,
            "split": c["split"],
            "reason": c["reason"],
            "overrides": by_name[c["job"]]["overrides"],
        }
        for m in methods
        for stage, _title in STAGES
        for c in m[stage]["collapsed"]
    ]
    expected = math.prod(len(v) for v in spec.values()) if spec is not None else None

    def public(job: Mapping[str, Any]) -> dict[str, Any]:
        return {k: job[k] for k in ("name", "overrides", "state", "stage", "error")}

    summary: dict[str, Any] = {
        "sweep_dir": str(sweep_dir),
        "std": f"population std over splits (numpy ddof={STD_DDOF})",
        "std_ddof": STD_DDOF,
        "counts": {
            "job_dirs": len(jobs),
            "completed": sum(j["state"] == "completed" for j in jobs),
            "failed": sum(j["state"] == "failed" for j in jobs),
            "incomplete": sum(j["state"] == "incomplete" for j in jobs),
            "expected": expected,
            "missing": len(missing),
            "collapsed": len(collapsed),
        },
        "methods": methods,
        "paired": paired_differences(methods, by_name),
        "published": {"source": PUBLISHED_SOURCE, "values": PUBLISHED},
        "collapsed": collapsed,
        "per_class": per_class_rows(jobs),
        "failed": [public(j) for j in jobs if j["state"] == "failed"],
        "incomplete": [public(j) for j in jobs if j["state"] == "incomplete"],
        "missing": missing,
        "sweep_overrides": spec,
        "warnings": warnings,
        "plots": {"group_accuracy": GROUP_PLOT, "per_class_accuracy": PER_CLASS_PLOT},
        "embed_maps": embed_maps(jobs, out_dir),
    }
    plot_group_accuracy(methods, out_dir / GROUP_PLOT)
    plot_per_class(methods, by_name, out_dir / PER_CLASS_PLOT)
    groups = [(m["label"], [by_name[n]["metrics"] for n in m["jobs"]]) for m in methods]
    if plot_knn_curves(groups, out_dir / KNN_PLOT):
        summary["plots"]["knn_curves"] = KNN_PLOT
    if plot_diagnostics(groups, out_dir / DIAGNOSTICS_PLOT):
        summary["plots"]["diagnostics"] = DIAGNOSTICS_PLOT
    markdown = render_markdown(summary)
    (out_dir / "report.md").write_text(markdown, encoding="utf-8")
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return markdown


def embed_maps(jobs: list[dict[str, Any]], out_dir: Path) -> list[dict[str, Any]]:
    """Each job's map of its test features (``metrics["embed"]``, and ``embed_random_init``),
    whose PNG is there: ``image`` relative to ``out_dir`` (looked for in the job directory
    first, so a moved sweep keeps its links), with what the map shows."""
    maps = []
    for job in jobs:
        metrics = job["metrics"]
        if not isinstance(metrics, Mapping):
            continue
        for key in (EMBED_STAGE[0], EMBED_STAGE[0] + RANDOM_INIT_SUFFIX):
            rec = metrics.get(key)
            if not isinstance(rec, Mapping):
                continue
            recorded = Path(str(rec.get("path") or f"{key}.png"))
            png = Path(job["path"]) / recorded.name
            png = png if png.is_file() else recorded
            if not png.is_file():
                continue
            maps.append(
                {
                    "job": job["name"],
                    "stage": key,
                    "method": label_of(job)[0],
                    "image": Path(
                        os.path.relpath(png.resolve(), Path(out_dir).resolve())
                    ).as_posix(),
                    "map": rec.get("method"),
                    "points": rec.get("points"),
                    "trustworthiness": rec.get("trustworthiness"),
                }
            )
    return maps


def read_tables(out_dir: Path) -> dict[str, dict[str, Any]]:
    """The tables of the report written in ``out_dir`` (:func:`sdclr.report.tables.report_tables`
    of its ``report.json``)."""
    return report_tables(json.loads((Path(out_dir) / "report.json").read_text(encoding="utf-8")))


def report_plots(out_dir: Path) -> dict[str, Path]:
    """The report's plots in ``out_dir`` by their W&B names (those not drawn are absent on
    disk, and :meth:`sdclr.utils.tracking.Tracker.log_files` skips them)."""
    out = Path(out_dir)
    return {
        "group_accuracy": out / GROUP_PLOT,
        "per_class_accuracy": out / PER_CLASS_PLOT,
        "knn_curves": out / KNN_PLOT,
        "diagnostics": out / DIAGNOSTICS_PLOT,
    }


def log_to_wandb(sweep_dir: Path, out_dir: Path, project: str) -> None:
    """The report's tables (as ``wandb.Table``), plots and the jobs' maps of their test
    features (``maps/<job>/<embed or embed_random_init>``), in a run of the sweep's group."""
    from types import SimpleNamespace

    group = sweep_group(sweep_dir)
    logger_cfg = SimpleNamespace(
        mode="auto", project=project, entity=None, tags=["report"], dir=None
    )
    tracker = Tracker(Path(out_dir))
    tracker.start_wandb(
        logger_cfg, {"sweep_dir": str(sweep_dir)}, name=f"report-{group}", group=group
    )
    summary = json.loads((Path(out_dir) / "report.json").read_text(encoding="utf-8"))
    maps = {
        f"maps/{m['job']}/{m['stage']}": Path(out_dir) / m["image"]
        for m in summary.get("embed_maps") or []
    }
    tracker.log_files(tables=report_tables(summary), images={**report_plots(out_dir), **maps})
    tracker.finish()
