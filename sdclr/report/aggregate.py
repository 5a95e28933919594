"""Aggregate the completed jobs per method: mean ± std of each probe stage, the kNN classifier
stage, pretraining, the kNN monitor.

Completed jobs are grouped by ``metrics["run"]["label"]`` (one entry per method); for the
full-shot linear probe (``metrics["linear"]``), the few-shot probe (``metrics["fewshot"]``)
and the kNN classifier (``metrics["knn"]``, under the entry's ``knn_stage``) the report gives
mean ± std over the jobs (one per split) of ``acc``, ``many``, ``medium``, ``few`` and ``std``.
The ± is the population standard deviation (numpy ``ddof=0``). Failed, running and
incomplete jobs are never averaged in, nor is a probe that collapsed
(``collapsed: true`` in its stage, :mod:`sdclr.eval.collapse`): it is listed apart, with its
reason, under the stage's ``collapsed``.

Any mix of methods (SimCLR, SDCLR, MoCo v2, BYOL, with or without a pruned branch, losses
and options) is grouped correctly: the label names the method and every non-default option
(:func:`sdclr.config.derived.method_label`); labels of older runs that lack the method name get it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sdclr.report.jobs import KNN_STAGE, STAGES, as_float, overrides_dict

#: Metric keys aggregated per stage, with their column titles.
METRICS: tuple[tuple[str, str], ...] = (
    ("acc", "Acc"),
    ("many", "Many"),
    ("medium", "Medium"),
    ("few", "Few"),
    ("std", "Std"),
)
#: Key of a method entry holding its kNN classifier results (``stage=knn``); ``knn`` is the
#: kNN monitor's (the last point of ``metrics["pretrain"]["knn"]``).
KNN_KEY = "knn_stage"
#: Degrees of freedom used for every ± in the report (population std).
STD_DDOF = 0

#: Method families in report order; a label matches the first whose name it contains.
METHOD_ORDER = ("simclr", "sdclr", "moco", "byol")


def _stats(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=STD_DDOF)),
        "n": int(arr.size),
        "values": [float(v) for v in arr],
    }


def _is_simclr_like(label: str, method: str | None) -> bool:
    text = f"{label} {method or ''}".lower()
    return "simclr" in text and "sdclr" not in text


def _method_rank(label: str, method: str | None) -> int:
    """SimCLR, SDCLR, MoCo, BYOL, then anything else (a MoCo + SDCLR run ranks as MoCo)."""
    text = f"{label} {method or ''}".lower()
    if _is_simclr_like(label, method):
        return 0
    for rank, name in enumerate(METHOD_ORDER[2:], start=2):
        if name in text:
            return rank
    return 1 if "sdclr" in text else len(METHOD_ORDER)


def label_of(job: Mapping[str, Any]) -> tuple[str, str | None]:
    """(label, method) of a job; the method's name leads the label when the label lacks it
    (runs of different methods never share a label)."""
    run = (job["metrics"] or {}).get("run")
    run = run if isinstance(run, dict) else {}
    method = run.get("method")
    label = str(run.get("label") or method or f"job {job['name']}")
    if method is not None:
        first = str(method).split()[0]
        if first.lower() not in label.lower():
            label = f"{method} {label}"
    return label, (str(method) if method is not None else None)


def _split_of(job: Mapping[str, Any]) -> Any:
    run = (job["metrics"] or {}).get("run")
    if isinstance(run, dict) and run.get("split") is not None:
        return run["split"]
    return overrides_dict(job["overrides"]).get("split")


def rank_trend(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, list[float]] | None:
    """Per-method trend: average over jobs of accuracy at each frequency rank.

    Every split has the same long-tailed profile with its own class order, so the k-th most
    frequent class of each job is averaged with the k-th most frequent of the others.
    """
    usable = [(c, a) for c, a in pairs if c.size and c.size == a.size]
    if not usable:
        return None
    n = min(c.size for c, _ in usable)
    counts, accs = [], []
    for c, a in usable:
        order = np.argsort(-c, kind="stable")[:n]
        counts.append(c[order])
        accs.append(a[order])
    return {
        "count": [float(x) for x in np.mean(counts, axis=0)],
        "acc": [float(x) for x in np.mean(accs, axis=0)],
    }


def aggregate(jobs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per method label, SimCLR-like labels first, then by label."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for job in jobs:
        if job["state"] == "completed":
            groups.setdefault(label_of(job)[0], []).append(job)
    methods = []
    for label, members in groups.items():
        method = label_of(members[0])[1]
        entry: dict[str, Any] = {
            "label": label,
            "method": method,
            "jobs": [j["name"] for j in members],
            "warnings": [],
        }
        for stage, _title in STAGES:
            entry[stage] = stage_summary(label, members, stage, entry["warnings"])
        # the kNN classifier stage: apart from "knn", the kNN monitor's summary below
        entry[KNN_KEY] = stage_summary(label, members, KNN_STAGE[0], entry["warnings"])
        knn_res = [j["metrics"][KNN_STAGE[0]] for j in members if _has(j, KNN_STAGE[0])]
        for key in ("k", "temperature"):  # the settings its numbers were measured with
            entry[KNN_KEY][key] = sorted({as_float(r.get(key)) for r in knn_res} - {None})
        pre = [j["metrics"].get("pretrain") for j in members]
        pre = [p for p in pre if isinstance(p, dict)]
        entry["pretrain"] = {
            "n": len(pre),
            "epochs": sorted({p.get("epochs") for p in pre if p.get("epochs") is not None}),
            "final_loss": _stats(
                [v for v in (as_float(p.get("final_loss")) for p in pre) if v is not None]
            ),
            "seconds": _stats(
                [v for v in (as_float(p.get("seconds")) for p in pre) if v is not None]
            ),
        }
        entry["knn"] = knn_summary(pre)
        methods.append(entry)
    methods.sort(key=lambda m: (_method_rank(m["label"], m["method"]), m["label"]))
    return methods


def _has(job: Mapping[str, Any], stage: str) -> bool:
    return isinstance(job["metrics"].get(stage), dict)


def stage_summary(
    label: str, members: Sequence[Mapping[str, Any]], stage: str, warnings: list[str]
) -> dict[str, Any]:
    """Mean ± std over ``members`` (completed jobs of one method) of each metric of
    ``stage``, its collapsed results apart, and the per-class trend; a warning when two jobs
    share a split."""
    present = [j for j in members if _has(j, stage)]
    collapsed = [j for j in present if j["metrics"][stage].get("collapsed") is True]
    with_stage = [j for j in present if j not in collapsed]
    res: dict[str, Any] = {
        "n": len(with_stage),
        "jobs": [j["name"] for j in with_stage],
        "splits": [_split_of(j) for j in with_stage],
        "collapsed": [
            {
                "job": j["name"],
                "split": _split_of(j),
                "reason": j["metrics"][stage].get("collapse_reason"),
            }
            for j in collapsed
        ],
    }
    for key, _col in METRICS + (("seconds", "Seconds"),):
        vals = [as_float(j["metrics"][stage].get(key)) for j in with_stage]
        res[key] = _stats([v for v in vals if v is not None])
    pairs = []
    for j in with_stage:
        pc = j["metrics"][stage].get("per_class")
        cc = j["metrics"][stage].get("class_counts")
        if isinstance(pc, list) and isinstance(cc, list) and len(pc) == len(cc):
            try:
                pairs.append((np.asarray(cc, float), np.asarray(pc, float)))
            except (TypeError, ValueError):
                pass
    res["per_class_trend"] = rank_trend(pairs)
    splits = [s for s in res["splits"] if s is not None]
    if len(splits) != len(set(map(str, splits))):
        warnings.append(
            f"{label}: {stage} averages several jobs with the same split "
            f"({', '.join(map(str, res['splits']))})"
        )
    return res


def knn_curve(pretrain: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    curve = pretrain.get("knn") if isinstance(pretrain, Mapping) else None
    if not isinstance(curve, list):
        return []
    return [p for p in curve if isinstance(p, Mapping) and as_float(p.get("epoch")) is not None]


def knn_summary(pre: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The kNN monitor of a method's jobs: its last point (mean ± std over jobs) and the
    mean curve over the epochs every job has."""
    curves = [c for c in (knn_curve(p) for p in pre) if c]
    if not curves:
        return None
    out: dict[str, Any] = {"n": len(curves), "epoch": sorted({int(c[-1]["epoch"]) for c in curves})}
    for key, _col in METRICS[:4]:
        vals = [as_float(c[-1].get(key)) for c in curves]
        out[key] = _stats([v for v in vals if v is not None])
    common = set.intersection(*({int(p["epoch"]) for p in c} for c in curves))
    epochs = sorted(common)
    out["curve"] = {"epoch": epochs}
    for key, _col in METRICS[:4]:
        by_epoch = [
            [as_float(p.get(key)) for c in curves for p in c if int(p["epoch"]) == e]
            for e in epochs
        ]
        out["curve"][key] = [
            float(np.mean([v for v in vals if v is not None]))
            if any(v is not None for v in vals)
            else None
            for vals in by_epoch
        ]
    return out
