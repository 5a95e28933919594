"""The report's tables as columns and rows, for W&B (``wandb.Table``: sortable, groupable).

:func:`per_class_rows` is the long-format per-class accuracy of every job (one row per job,
stage and class), stored in ``report.json``; :func:`report_tables` turns a report summary
(``report.json``) into ``{name: {"columns": [...], "data": [[...], ...]}}``: one results
table per probe stage and for the kNN classifier (ours and, where the setting is the
paper's, the published row), the paired differences, the per-class accuracy, and the jobs
that failed or collapsed; every name starts with ``results/`` (the plots keep their own
names).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sdclr.report.aggregate import KNN_KEY, METRICS, label_of
from sdclr.report.jobs import EVAL_STAGES, KNN_STAGE, STAGES, as_float


def per_class_rows(jobs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each completed job's per-class test accuracy with the class's D_i count."""
    rows = []
    for job in jobs:
        metrics = job["metrics"]
        if job["state"] != "completed" or not isinstance(metrics, Mapping):
            continue
        run = metrics.get("run") if isinstance(metrics.get("run"), Mapping) else {}
        for stage, _title in EVAL_STAGES:
            res = metrics.get(stage)
            if not isinstance(res, Mapping) or not isinstance(res.get("per_class"), list):
                continue
            counts = res.get("class_counts")
            counts = counts if isinstance(counts, list) else []
            for cls, acc in enumerate(res["per_class"]):
                rows.append(
                    {
                        "job": job["name"],
                        "method": label_of(job)[0],
                        "stage": stage,
                        "split": run.get("split"),
                        "class": cls,
                        "class_count": counts[cls] if cls < len(counts) else None,
                        "acc": as_float(acc),
                        "collapsed": res.get("collapsed") is True,
                    }
                )
    return rows


def stage_entries(
    methods: Sequence[Mapping[str, Any]], stage: str, published: Mapping[str, Any]
) -> Iterator[tuple[Mapping[str, Any], Mapping[str, float] | None]]:
    """The rows of a stage's results table, as (method entry, published numbers or None):
    each method with results (or collapsed probes) in ``stage``, followed on the full-shot
    table by the paper's numbers when its setting is the paper's (``published``: the
    :data:`sdclr.report.published.PUBLISHED` values)."""
    for m in methods:
        res = m[stage]
        if not res["n"] and not res.get("collapsed"):
            continue
        yield m, None
        paper = published.get(m.get("published") or "")
        if stage == "linear" and paper:
            yield m, paper


def _table(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return {"columns": columns, "data": [[row.get(c) for c in columns] for row in rows]}


def report_tables(summary: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The summary's tables, each ``{"columns", "data"}``; empty tables are left out."""
    published = (summary.get("published") or {}).get("values") or {}
    tables: dict[str, dict[str, Any]] = {}
    # the kNN classifier's results sit under the entry's KNN_KEY (its "knn" is the monitor's)
    entry_keys = [(stage, stage) for stage, _title in STAGES] + [(KNN_STAGE[0], KNN_KEY)]
    for stage, key_ in entry_keys:
        rows = []
        if not all(key_ in m for m in summary["methods"]):
            continue  # a report.json from before the key
        for m, paper in stage_entries(summary["methods"], key_, published):
            res = m[key_]
            if paper is None:
                row: dict[str, Any] = {"method": m["label"], "source": "ours", "n": res["n"]}
                for key, _col in METRICS:
                    row[f"{key}_mean"], row[f"{key}_std"] = res[key]["mean"], res[key]["std"]
                row["splits"] = ", ".join(str(s) for s in res["splits"] if s is not None)
                row["collapsed"] = len(res.get("collapsed") or [])
            else:
                row = {"method": m["published"], "source": "published", "n": 5}
                for key, _col in METRICS:
                    row[f"{key}_mean"], row[f"{key}_std"] = paper.get(key), paper.get(f"{key}_std")
                row["splits"], row["collapsed"] = "1, 2, 3, 4, 5", 0
            rows.append(row)
        if rows:
            tables[f"results/{stage}"] = _table(rows)
    paired = [
        {
            "stage": e["stage"],
            "b": e["b"],
            "a": e["a"],
            "metric": key,
            "n": len(e[key]["diffs"]),
            "mean_diff": e[key]["mean"],
            "std_diff": e[key]["std"],
            "p_sign_flip": e[key]["p"],
            "per_split": ", ".join(
                f"{s}: {v:+.2f}" for s, v in zip(e[key]["splits"], e[key]["diffs"])
            ),
        }
        for e in summary.get("paired") or []
        for key, _col in METRICS
    ]
    if paired:
        tables["results/paired_differences"] = _table(paired)
    if summary.get("per_class"):
        tables["results/per_class_accuracy"] = _table(summary["per_class"])
    problems = [
        {"job": j["name"], "problem": j["state"], "stage": j["stage"], "detail": j["error"]}
        for j in list(summary["failed"]) + list(summary["incomplete"])
    ] + [
        {"job": c["job"], "problem": "collapsed", "stage": c["stage"], "detail": c["reason"]}
        for c in summary.get("collapsed") or []
    ]
    if problems:
        tables["results/problems"] = _table(problems)
    return tables
