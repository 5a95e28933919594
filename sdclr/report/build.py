"""Aggregate a Hydra multirun sweep into a markdown report, a JSON summary and two plots.

Usage::

    python -m sdclr.report outputs/multirun/2026-11-22/10-00-00 [--out DIR2]

A *job dir* is any directory under the sweep directory that holds ``.hydra/config.yaml``,
``metrics.json`` or ``status.json`` (the search does not descend into a job dir once found).
Completed jobs are grouped by ``metrics["run"]["label"]`` (one row per method); for the
full-shot linear probe (``metrics["linear"]``) and the few-shot probe (``metrics["fewshot"]``)
the report gives mean ± std over the jobs (one per split) of ``acc``, ``many``, ``medium``,
``few`` and ``std``. The ± is the population standard deviation (numpy ``ddof=0``).

Failed, running and incomplete jobs are listed with their error line and Hydra overrides and
are never averaged in. When ``DIR/multirun.yaml`` exists, the expected job count is the
product of the number of comma-separated values of every sweep override, and override
combinations without any job dir are listed as missing.

Any mix of methods (SimCLR, SDCLR, MoCo v2, BYOL, with or without a pruned branch, losses
and options) is grouped correctly: the label names the method and every non-default option
(:func:`sdclr.config.derived.method_label`); labels of older runs that lack the method name get it.

Outputs (in ``DIR`` or ``--out``): ``report.md`` (also printed), ``report.json``,
``group_accuracy.png`` and ``per_class_accuracy.png``; when the runs have them,
``knn_curves.png`` (the kNN monitor's accuracy and Many / Medium / Few against the epoch) and
``diagnostics.png`` (per class, the dense / pruned disagreement and the class's share of the
contrastive loss against its D_i count, at the last diagnosed epoch).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sdclr.errors import SdclrError
from sdclr.utils.io import natural_key
from sdclr.utils.tracking import Tracker, sweep_group

#: Probe stages reported, in order, with their human-readable titles.
STAGES: tuple[tuple[str, str], ...] = (
    ("linear", "Full-shot (linear probe)"),
    ("fewshot", "Few-shot"),
)
#: Metric keys aggregated per stage, with their column titles.
METRICS: tuple[tuple[str, str], ...] = (
    ("acc", "Acc"),
    ("many", "Many"),
    ("medium", "Medium"),
    ("few", "Few"),
    ("std", "Std"),
)
#: Degrees of freedom used for every ± in the report (population std).
STD_DDOF = 0

MARKER_FILES = (Path(".hydra") / "config.yaml", Path("metrics.json"), Path("status.json"))
GROUP_PLOT = "group_accuracy.png"
PER_CLASS_PLOT = "per_class_accuracy.png"
KNN_PLOT = "knn_curves.png"
DIAGNOSTICS_PLOT = "diagnostics.png"
#: Method families in report order; a label matches the first whose name it contains.
METHOD_ORDER = ("simclr", "sdclr", "moco", "byol")


class ReportError(SdclrError):
    """The sweep directory cannot be reported on; the message says why and how to fix it."""


# --------------------------------------------------------------------------- formatting


def _fmt_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.2f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _is_numeric_text(text: str) -> bool:
    return bool(re.fullmatch(r"[-+]?\d[\d.,eE+-]*( ± [\d.eE+-]+)?", text.strip()))


def format_table(
    rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]],
    headers: Sequence[str] | None = None,
) -> str:
    """Render ``rows`` as an aligned markdown table.

    ``rows`` is either a list of dicts (the header is the union of their keys, in first-seen
    order, unless ``headers`` is given) or a list of sequences (the first row is the header
    unless ``headers`` is given). Floats are printed with two decimals, ``None``/NaN as ``-``;
    columns whose cells are all numeric are right-aligned.
    """
    rows = list(rows)
    if rows and isinstance(rows[0], Mapping):
        if headers is None:
            headers = list(dict.fromkeys(k for row in rows for k in row))
        body = [[row.get(h) for h in headers] for row in rows]  # type: ignore[union-attr]
    else:
        if headers is None:
            if not rows:
                return ""
            headers, rows = list(rows[0]), rows[1:]
        body = [list(row) for row in rows]
    head = [_fmt_cell(h) for h in headers]
    cells = [[_fmt_cell(v) for v in row] + [""] * (len(head) - len(row)) for row in body]
    widths = [max([len(head[i]), 3] + [len(r[i]) for r in cells]) for i in range(len(head))]
    right = [
        bool(cells) and all(_is_numeric_text(r[i]) or r[i] == "-" for r in cells)
        for i in range(len(head))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)]
        return "| " + " | ".join(parts) + " |"

    sep = "| " + " | ".join("-" * (w - 1) + ":" if r else "-" * w for w, r in zip(widths, right))
    return "\n".join([line(head), sep + " |"] + [line(r) for r in cells])


def format_job_metrics(metrics: Mapping[str, Any]) -> str:
    """A small markdown table of one job's ``linear``/``fewshot`` results.

    Columns: Stage, Acc, Many, Medium, Few, Std, Seconds. Returns a one-line note when the
    job has neither probe.
    """
    rows = []
    for stage, title in STAGES:
        res = metrics.get(stage)
        if not isinstance(res, Mapping):
            continue
        row: dict[str, Any] = {"Stage": title}
        for key, col in METRICS:
            row[col] = _as_float(res.get(key))
        seconds = _as_float(res.get("seconds"))
        row["Seconds"] = None if seconds is None else f"{seconds:.1f}"
        rows.append(row)
    if not rows:
        return "(no linear or few-shot results)"
    return format_table(rows)


def format_mean_std(mean: float | None, std: float | None) -> str:
    """``86.44 ± 0.51``; ``-`` when there is no value."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or math.isnan(std):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}"


# --------------------------------------------------------------------------- reading


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _is_job_dir(path: Path) -> bool:
    return any((path / marker).is_file() for marker in MARKER_FILES)


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Job dirs under ``sweep_dir`` (itself included), in natural order (0, 1, ..., 10)."""
    sweep_dir = Path(sweep_dir)
    if _is_job_dir(sweep_dir):
        return [sweep_dir]
    found = []
    for root, dirs, _files in os.walk(sweep_dir):
        path = Path(root)
        if path != sweep_dir and _is_job_dir(path):
            found.append(path)
            dirs[:] = []  # do not descend into a job dir
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
    return sorted(found, key=lambda p: natural_key(p.relative_to(sweep_dir).as_posix()))


def _read_json(path: Path) -> tuple[Any, str | None]:
    if not path.is_file():
        return None, None
    try:
        return json.loads(path.read_text()), None
    except (OSError, ValueError) as exc:
        return None, f"{path.name} unreadable: {exc}".splitlines()[0]


def _read_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [str(x) for x in data] if isinstance(data, list) else []


def _override_key(key: str) -> str:
    return key.strip().lstrip("+~")


def _overrides_dict(overrides: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in overrides:
        if "=" in item:
            key, value = item.split("=", 1)
            out[_override_key(key)] = value.strip()
    return out


def load_job(job_dir: Path, sweep_dir: Path) -> dict[str, Any]:
    """Read one job dir into ``{name, path, overrides, state, error, stage, metrics}``.

    ``state`` is ``completed`` (usable for averaging), ``failed`` or ``incomplete``.
    Fields relied on: ``status.json``: ``status``, ``error``, ``stage``; ``metrics.json``:
    ``run``, ``pretrain``, ``linear``, ``fewshot``.
    """
    rel = job_dir.relative_to(sweep_dir).as_posix()
    job: dict[str, Any] = {
        "name": rel,
        "path": str(job_dir),
        "overrides": _read_overrides(job_dir),
        "state": "incomplete",
        "error": None,
        "stage": None,
        "metrics": None,
    }
    metrics, metrics_err = _read_json(job_dir / "metrics.json")
    status, status_err = _read_json(job_dir / "status.json")
    if metrics is not None and not isinstance(metrics, dict):
        metrics, metrics_err = None, "metrics.json is not a JSON object"
    if status is not None and not isinstance(status, dict):
        status, status_err = None, "status.json is not a JSON object"
    job["metrics"] = metrics
    has_probe = isinstance(metrics, dict) and any(
        isinstance(metrics.get(s), dict) for s, _ in STAGES
    )
    declared = str(status.get("status")) if isinstance(status, dict) else None
    if isinstance(status, dict):
        job["stage"] = status.get("stage")
        if status.get("error"):
            job["error"] = str(status["error"]).splitlines()[0]

    if declared == "failed":
        job["state"] = "failed"
        job["error"] = job["error"] or "failed (no error message recorded)"
    elif declared == "running":
        job["state"] = "incomplete"
        job["error"] = job["error"] or "still running (or killed before it finished)"
    elif metrics_err or status_err:
        job["error"] = metrics_err or status_err
    elif metrics is None:
        job["error"] = "no metrics.json"
    elif not has_probe:
        job["error"] = "metrics.json has no linear or fewshot results" + (
            " (pretrain-only job)" if isinstance(metrics.get("pretrain"), dict) else ""
        )
    elif declared not in (None, "completed"):
        job["error"] = f"unknown status {declared!r} in status.json"
    else:
        job["state"] = "completed"
    return job


# --------------------------------------------------------------------------- sweep spec


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, parentheses, braces and quotes."""
    parts, depth, quote, buf = [], 0, "", []
    for ch in text:
        if quote:
            buf.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(buf).strip())
            buf = []
            continue
        buf.append(ch)
    parts.append("".join(buf).strip())
    return parts


def _sweep_values(value: str) -> list[str] | None:
    """The values a Hydra sweep override expands to, or None when it cannot be expanded."""
    value = value.strip()
    fn = re.fullmatch(r"(\w+)\((.*)\)", value, flags=re.S)
    if fn:
        name, inner = fn.group(1), fn.group(2)
        if name in ("choice", "sort", "shuffle"):
            inner_args = [a for a in _split_top_level(inner) if not a.startswith("reverse=")]
            vals: list[str] = []
            for arg in inner_args:
                sub = _sweep_values(arg)
                if sub is None:
                    return None
                vals.extend(sub)
            return vals
        if name == "range":
            try:
                args = [int(a.split("=")[-1]) for a in _split_top_level(inner)]
                return [str(x) for x in range(*args)]
            except (TypeError, ValueError):
                return None
        if name in ("interval", "glob", "tag"):
            return None
    return _split_top_level(value)


def read_sweep_spec(sweep_dir: Path) -> tuple[dict[str, list[str]] | None, list[str]]:
    """Sweep overrides from ``multirun.yaml`` as ``{key: [values]}`` plus warnings.

    Returns ``(None, warnings)`` when there is no ``multirun.yaml`` or it cannot be expanded.
    Reads ``hydra.overrides.task`` and ``hydra.sweeper.params`` (the former wins).
    """
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None, []
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        return None, [
            f"multirun.yaml unreadable ({str(exc).splitlines()[0]}); expected job count unknown"
        ]
    hydra_cfg = data.get("hydra") if isinstance(data, dict) else None
    hydra_cfg = hydra_cfg if isinstance(hydra_cfg, dict) else {}
    raw: dict[str, str] = {}
    params = (
        (hydra_cfg.get("sweeper") or {}).get("params")
        if isinstance(hydra_cfg.get("sweeper"), dict)
        else None
    )
    if isinstance(params, dict):
        for key, value in params.items():
            raw[_override_key(str(key))] = str(value)
    task = (
        (hydra_cfg.get("overrides") or {}).get("task")
        if isinstance(hydra_cfg.get("overrides"), dict)
        else None
    )
    for item in task or []:
        item = str(item)
        if "=" not in item:
            continue
        key, value = item.split("=", 1)
        raw[_override_key(key)] = value
    spec: dict[str, list[str]] = {}
    for key, value in raw.items():
        values = _sweep_values(value)
        if values is None:
            return None, [f"cannot expand sweep override {key}={value}; expected job count unknown"]
        spec[key] = values
    return spec, []


def missing_combinations(
    spec: Mapping[str, Sequence[str]], jobs: Sequence[Mapping[str, Any]]
) -> list[list[str]]:
    """Override combinations of the sweep that no job dir's overrides match."""
    keys = list(spec)
    have = [_overrides_dict(job["overrides"]) for job in jobs]
    missing = []
    for combo in itertools.product(*(spec[k] for k in keys)):
        want = dict(zip(keys, combo))
        if not any(all(h.get(k) == v for k, v in want.items()) for h in have):
            missing.append([f"{k}={v}" for k, v in want.items()])
    return missing


# --------------------------------------------------------------------------- aggregation


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


def _label_of(job: Mapping[str, Any]) -> tuple[str, str | None]:
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
    return _overrides_dict(job["overrides"]).get("split")


def _rank_trend(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, list[float]] | None:
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
            groups.setdefault(_label_of(job)[0], []).append(job)
    methods = []
    for label, members in groups.items():
        method = _label_of(members[0])[1]
        entry: dict[str, Any] = {
            "label": label,
            "method": method,
            "jobs": [j["name"] for j in members],
            "warnings": [],
        }
        for stage, _title in STAGES:
            with_stage = [j for j in members if isinstance(j["metrics"].get(stage), dict)]
            res: dict[str, Any] = {
                "n": len(with_stage),
                "jobs": [j["name"] for j in with_stage],
                "splits": [_split_of(j) for j in with_stage],
            }
            for key, _col in METRICS + (("seconds", "Seconds"),):
                vals = [_as_float(j["metrics"][stage].get(key)) for j in with_stage]
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
            res["per_class_trend"] = _rank_trend(pairs)
            splits = [s for s in res["splits"] if s is not None]
            if len(splits) != len(set(map(str, splits))):
                entry["warnings"].append(
                    f"{label}: {stage} averages several jobs with the same split "
                    f"({', '.join(map(str, res['splits']))})"
                )
            entry[stage] = res
        pre = [j["metrics"].get("pretrain") for j in members]
        pre = [p for p in pre if isinstance(p, dict)]
        entry["pretrain"] = {
            "n": len(pre),
            "epochs": sorted({p.get("epochs") for p in pre if p.get("epochs") is not None}),
            "final_loss": _stats(
                [v for v in (_as_float(p.get("final_loss")) for p in pre) if v is not None]
            ),
            "seconds": _stats(
                [v for v in (_as_float(p.get("seconds")) for p in pre) if v is not None]
            ),
        }
        entry["knn"] = _knn_summary(pre)
        methods.append(entry)
    methods.sort(key=lambda m: (_method_rank(m["label"], m["method"]), m["label"]))
    return methods


def _knn_curve(pretrain: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    curve = pretrain.get("knn") if isinstance(pretrain, Mapping) else None
    if not isinstance(curve, list):
        return []
    return [p for p in curve if isinstance(p, Mapping) and _as_float(p.get("epoch")) is not None]


def _knn_summary(pre: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The kNN monitor of a method's jobs: its last point (mean ± std over jobs) and the
    mean curve over the epochs every job has."""
    curves = [c for c in (_knn_curve(p) for p in pre) if c]
    if not curves:
        return None
    out: dict[str, Any] = {"n": len(curves), "epoch": sorted({int(c[-1]["epoch"]) for c in curves})}
    for key, _col in METRICS[:4]:
        vals = [_as_float(c[-1].get(key)) for c in curves]
        out[key] = _stats([v for v in vals if v is not None])
    common = set.intersection(*({int(p["epoch"]) for p in c} for c in curves))
    epochs = sorted(common)
    out["curve"] = {"epoch": epochs}
    for key, _col in METRICS[:4]:
        by_epoch = [
            [_as_float(p.get(key)) for c in curves for p in c if int(p["epoch"]) == e]
            for e in epochs
        ]
        out["curve"][key] = [
            float(np.mean([v for v in vals if v is not None]))
            if any(v is not None for v in vals)
            else None
            for vals in by_epoch
        ]
    return out


# --------------------------------------------------------------------------- plots


def _figure(width: float, height: float, ncols: int):
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    fig = Figure(figsize=(width, height), dpi=100)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _colors() -> list[str]:
    import matplotlib as mpl

    return list(mpl.rcParams["axes.prop_cycle"].by_key()["color"])


def _legend_below(ax) -> None:
    handles, _labels = ax.get_legend_handles_labels()
    ncol = 1 if any(len(lbl) > 40 for lbl in _labels) else 2
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=ncol)


def plot_group_accuracy(methods: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Two panels (full-shot, few-shot): bars of Many/Medium/Few/All per method, ± std."""
    fig, axes = _figure(13, 4.8, len(STAGES))
    colors = _colors()
    groups = (("many", "Many"), ("medium", "Medium"), ("few", "Few"), ("acc", "All"))
    x = np.arange(len(groups))
    for ax, (stage, title) in zip(axes, STAGES):
        shown = [m for m in methods if m[stage]["n"] > 0]
        ax.set_title(title)
        ax.set_xticks(x)
        ax.set_xticklabels([g for _, g in groups])
        ax.set_ylabel("accuracy (%)")
        if not shown:
            ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes)
            continue
        width = 0.8 / len(shown)
        for i, m in enumerate(shown):
            color = colors[methods.index(m) % len(colors)]
            means = [m[stage][k]["mean"] for k, _ in groups]
            stds = [m[stage][k]["std"] for k, _ in groups]
            means = [np.nan if v is None else v for v in means]
            stds = [0.0 if v is None else v for v in stds]
            ax.bar(
                x - 0.4 + width * (i + 0.5),
                means,
                width,
                yerr=stds,
                capsize=3,
                color=color,
                label=f"{m['label']} (n={m[stage]['n']})",
            )
        ax.grid(axis="y", alpha=0.3)
        _legend_below(ax)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")


def plot_per_class(
    methods: Sequence[Mapping[str, Any]],
    jobs_by_name: Mapping[str, Mapping[str, Any]],
    path: Path,
) -> None:
    """Per-class accuracy vs the class's count in D_i (log x): points per job, trend per method."""
    fig, axes = _figure(13, 4.8, len(STAGES))
    colors = _colors()
    for ax, (stage, title) in zip(axes, STAGES):
        ax.set_title(f"{title}: per-class accuracy")
        ax.set_xlabel("class count in D_i (log scale)")
        ax.set_ylabel("accuracy (%)")
        drew = False
        for i, m in enumerate(methods):
            color = colors[i % len(colors)]
            for name in m[stage]["jobs"]:
                res = jobs_by_name[name]["metrics"][stage]
                pc, cc = res.get("per_class"), res.get("class_counts")
                if not (isinstance(pc, list) and isinstance(cc, list) and len(pc) == len(cc)):
                    continue
                cc_arr = np.asarray(cc, dtype=float)
                ok = cc_arr > 0
                ax.scatter(cc_arr[ok], np.asarray(pc, float)[ok], s=10, alpha=0.35, color=color)
                drew = True
            trend = m[stage]["per_class_trend"]
            if trend:
                c, a = np.asarray(trend["count"]), np.asarray(trend["acc"])
                ok = c > 0
                ax.plot(c[ok], a[ok], "-o", ms=3, color=color, label=m["label"])
                drew = True
        if drew:
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
            _legend_below(ax)
        else:
            ax.text(
                0.5, 0.5, "no per-class results", ha="center", va="center", transform=ax.transAxes
            )
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")


def _series(metrics_list: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [m.get("pretrain") for m in metrics_list if isinstance(m.get("pretrain"), Mapping)]


def plot_knn_curves(groups: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], path: Path) -> bool:
    """kNN monitor curves: overall accuracy (thin: each job, thick: the method's mean) and
    the method means of Many / Medium / Few, against the epoch. ``groups``: (label, the jobs'
    metrics dicts). Returns False (and writes nothing) when no job has a curve."""
    if not any(_knn_curve(p) for _, ms in groups for p in _series(ms)):
        return False
    fig, axes = _figure(13, 4.8, 2)
    colors = _colors()
    axes[0].set_title("kNN monitor: accuracy")
    axes[1].set_title("kNN monitor: Many (solid), Medium (dashed), Few (dotted)")
    for i, (label, metrics_list) in enumerate(groups):
        color = colors[i % len(colors)]
        curves = [c for c in (_knn_curve(p) for p in _series(metrics_list)) if c]
        if not curves:
            continue
        summary = _knn_summary(_series(metrics_list))
        for c in curves:
            x = [int(p["epoch"]) for p in c]
            axes[0].plot(x, [_as_float(p.get("acc")) for p in c], color=color, alpha=0.3, lw=1)
        ep = summary["curve"]["epoch"]
        axes[0].plot(ep, summary["curve"]["acc"], "-o", ms=3, color=color, label=label)
        for key, style in (("many", "-"), ("medium", "--"), ("few", ":")):
            axes[1].plot(
                ep,
                summary["curve"][key],
                style,
                color=color,
                label=label if key == "many" else None,
            )
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_ylabel("kNN accuracy (%)")
        ax.grid(alpha=0.3)
        _legend_below(ax)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    return True


def _diagnostics_of(pretrain: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    recs = pretrain.get("diagnostics") if isinstance(pretrain, Mapping) else None
    return [r for r in recs if isinstance(r, Mapping)] if isinstance(recs, list) else []


def _class_counts(pretrain: Mapping[str, Any]) -> np.ndarray | None:
    counts = (pretrain.get("split_counts") or {}).get("D_i")
    return np.asarray(counts, dtype=float) if isinstance(counts, list) and counts else None


def _values(values: Any, n: int) -> np.ndarray | None:
    if not isinstance(values, list) or len(values) != n:
        return None
    return np.asarray([np.nan if v is None else float(v) for v in values], dtype=float)


def plot_diagnostics(groups: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], path: Path) -> bool:
    """SDCLR diagnostics against each class's D_i count (log x): the mean dense / pruned
    disagreement 1 - cos(z_dense, z_pruned) and the class's share of the contrastive loss.
    One job: a line per diagnosed epoch (up to four, evenly spaced, darker = later). Several:
    the last diagnosed epoch, points per job and each method's trend by frequency rank.
    Returns False (and writes nothing) when no job has diagnostics."""
    jobs = [
        (i, p)
        for i, (_, ms) in enumerate(groups)
        for p in _series(ms)
        if _diagnostics_of(p) and _class_counts(p) is not None
    ]
    if not jobs:
        return False
    fig, axes = _figure(13, 4.8, 2)
    colors = _colors()
    panels = (
        ("disagreement", "dense / pruned disagreement (1 - cos)"),
        ("loss_share", "share of the contrastive loss"),
    )
    single = len(jobs) == 1
    drew = [False, False]
    for ax, (_key, title) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("class count in D_i (log scale)")
        ax.set_ylabel(title.split(" (")[0])
    if single:
        import matplotlib as mpl

        _, pre = jobs[0]
        counts = _class_counts(pre)
        recs = _diagnostics_of(pre)
        picks = sorted({round(i * (len(recs) - 1) / 3) for i in range(4)}) if recs else []
        cmap = mpl.colormaps["viridis"]
        order = np.argsort(counts)
        for j, r_i in enumerate(picks):
            rec = recs[r_i]
            shade = cmap(0.15 + 0.7 * j / max(len(picks) - 1, 1))
            for k, (key, _) in enumerate(panels):
                vals = _values(rec.get(key), len(counts))
                if vals is None:
                    continue
                ok = (counts[order] > 0) & np.isfinite(vals[order])
                axes[k].plot(
                    counts[order][ok],
                    vals[order][ok],
                    "-o",
                    ms=3,
                    color=shade,
                    label=f"epoch {rec.get('epoch')}",
                )
                drew[k] = True
    else:
        for gi, (label, metrics_list) in enumerate(groups):
            color = colors[gi % len(colors)]
            for k, (key, _) in enumerate(panels):
                pairs = []
                for pre in _series(metrics_list):
                    recs, counts = _diagnostics_of(pre), _class_counts(pre)
                    if not recs or counts is None:
                        continue
                    vals = _values(recs[-1].get(key), len(counts))
                    if vals is None:
                        continue
                    ok = (counts > 0) & np.isfinite(vals)
                    axes[k].scatter(counts[ok], vals[ok], s=10, alpha=0.35, color=color)
                    pairs.append((counts, np.nan_to_num(vals, nan=0.0)))
                trend = _rank_trend(pairs)
                if trend:
                    c, a = np.asarray(trend["count"]), np.asarray(trend["acc"])
                    ok = c > 0
                    axes[k].plot(c[ok], a[ok], "-o", ms=3, color=color, label=label)
                    drew[k] = True
    for k, ax in enumerate(axes):
        if drew[k]:
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
            _legend_below(ax)
        else:
            note = "no pruned branch" if panels[k][0] == "disagreement" else "no loss shares"
            ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    return True


def write_pretrain_plots(metrics: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """One job's kNN curve and diagnostics plots in ``out_dir`` (for a job without probes,
    whose full report would have nothing to average); returns {name: path} of those written."""
    label, _ = _label_of({"metrics": metrics, "name": Path(out_dir).parent.name})
    groups = [(label, [metrics])]
    written: dict[str, Path] = {}
    pre = metrics.get("pretrain")
    if not isinstance(pre, Mapping) or not (_knn_curve(pre) or _diagnostics_of(pre)):
        return written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if plot_knn_curves(groups, out_dir / KNN_PLOT):
        written["knn_curves"] = out_dir / KNN_PLOT
    if plot_diagnostics(groups, out_dir / DIAGNOSTICS_PLOT):
        written["diagnostics"] = out_dir / DIAGNOSTICS_PLOT
    return written


# --------------------------------------------------------------------------- report


def _job_row(job: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "Job": job["name"],
        "Overrides": " ".join(job["overrides"]) or "(none recorded)",
        "Status": job["state"],
        "Stage": job["stage"] or "-",
        "Error": job["error"] or "-",
    }


def _header(counts: Mapping[str, Any]) -> str:
    total = counts["job_dirs"] + counts["missing"]
    parts = [f"averaged over {counts['completed']} of {total} jobs"]
    if counts["failed"]:
        parts.append(f"{counts['failed']} failed")
    if counts["incomplete"]:
        parts.append(f"{counts['incomplete']} incomplete")
    if counts["missing"]:
        parts.append(f"{counts['missing']} missing (no job dir)")
    text = "; ".join(parts)
    text = text[0].upper() + text[1:] + "."
    if counts["expected"] is not None:
        text += f" The sweep expected {counts['expected']} jobs (from multirun.yaml)."
    return text


def _render(summary: Mapping[str, Any]) -> str:
    counts = summary["counts"]
    out = [f"# Sweep report: `{summary['sweep_dir']}`", "", _header(counts), ""]
    out.append(
        "Each cell is mean ± std over the splits of the completed jobs of that method; the ± "
        "is the **population** standard deviation (numpy `ddof=0`). `n` is the number of "
        "splits (jobs) averaged. The Std column is each job's balancedness: the population "
        "std of its (Many, Medium, Few) accuracies, then averaged like the others. "
        "Failed and incomplete jobs are never averaged in."
    )
    methods = summary["methods"]
    for stage, title in STAGES:
        out += ["", f"## {title}", ""]
        rows = []
        for m in methods:
            res = m[stage]
            if not res["n"]:
                continue
            row: dict[str, Any] = {"Method": m["label"], "n": res["n"]}
            for key, col in METRICS:
                row[col] = format_mean_std(res[key]["mean"], res[key]["std"])
            row["Splits"] = ", ".join(str(s) for s in res["splits"] if s is not None) or "-"
            rows.append(row)
        out.append(format_table(rows) if rows else "_No completed jobs with this probe._")
    pre_rows = [
        {
            "Method": m["label"],
            "n": m["pretrain"]["n"],
            "Epochs": ", ".join(map(str, m["pretrain"]["epochs"])) or "-",
            "Final loss": format_mean_std(
                m["pretrain"]["final_loss"]["mean"], m["pretrain"]["final_loss"]["std"]
            ),
            "Seconds": format_mean_std(
                m["pretrain"]["seconds"]["mean"], m["pretrain"]["seconds"]["std"]
            ),
        }
        for m in methods
        if m["pretrain"]["n"]
    ]
    if pre_rows:
        out += ["", "## Pretraining", "", format_table(pre_rows)]
    knn_rows = []
    for m in methods:
        k = m.get("knn")
        if not k:
            continue
        row = {"Method": m["label"], "n": k["n"], "Epoch": ", ".join(map(str, k["epoch"]))}
        for key, col in METRICS[:4]:
            row[col] = format_mean_std(k[key]["mean"], k[key]["std"])
        knn_rows.append(row)
    if knn_rows:
        out += [
            "",
            "## kNN monitor (last monitored epoch)",
            "",
            "Weighted kNN (probe pool as the bank, the test set as queries) during pretraining; "
            "a learning curve, not a replacement for the probes.",
            "",
            format_table(knn_rows),
        ]
    out += [
        "",
        "## Plots",
        "",
        f"![Many/Medium/Few accuracy per method]({GROUP_PLOT})",
        "",
        f"![Per-class accuracy against class count in D_i]({PER_CLASS_PLOT})",
    ]
    plots = summary.get("plots", {})
    if "knn_curves" in plots:
        out += ["", f"![kNN monitor accuracy against the epoch]({KNN_PLOT})"]
    if "diagnostics" in plots:
        out += [
            "",
            f"![Dense/pruned disagreement and loss share against class count]({DIAGNOSTICS_PLOT})",
        ]
    problems = summary["failed"] + summary["incomplete"]
    out += ["", "## Failed and incomplete jobs", ""]
    out.append(format_table([_job_row(j) for j in problems]) if problems else "None.")
    if counts["expected"] is not None:
        out += ["", "## Missing jobs", ""]
        out.append(
            f"The sweep expected {counts['expected']} jobs; {counts['job_dirs']} job dirs found."
        )
        if summary["missing"]:
            out += ["Override combinations with no job dir:", ""]
            out += [f"- `{' '.join(combo)}`" for combo in summary["missing"]]
        else:
            out.append("Every override combination has a job dir.")
    if summary["warnings"]:
        out += ["", "## Warnings", ""] + [f"- {w}" for w in summary["warnings"]]
    return "\n".join(out) + "\n"


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
        },
        "methods": methods,
        "failed": [public(j) for j in jobs if j["state"] == "failed"],
        "incomplete": [public(j) for j in jobs if j["state"] == "incomplete"],
        "missing": missing,
        "sweep_overrides": spec,
        "warnings": warnings,
        "plots": {"group_accuracy": GROUP_PLOT, "per_class_accuracy": PER_CLASS_PLOT},
    }
    plot_group_accuracy(methods, out_dir / GROUP_PLOT)
    plot_per_class(methods, {j["name"]: j for j in jobs}, out_dir / PER_CLASS_PLOT)
    by_name = {j["name"]: j for j in jobs}
    groups = [(m["label"], [by_name[n]["metrics"] for n in m["jobs"]]) for m in methods]
    if plot_knn_curves(groups, out_dir / KNN_PLOT):
        summary["plots"]["knn_curves"] = KNN_PLOT
    if plot_diagnostics(groups, out_dir / DIAGNOSTICS_PLOT):
        summary["plots"]["diagnostics"] = DIAGNOSTICS_PLOT
    markdown = _render(summary)
    (out_dir / "report.md").write_text(markdown, encoding="utf-8")
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return markdown


def _log_to_wandb(sweep_dir: Path, out_dir: Path, markdown: str, project: str) -> None:
    from types import SimpleNamespace

    group = sweep_group(sweep_dir)
    logger_cfg = SimpleNamespace(
        mode="auto", project=project, entity=None, tags=["report"], dir=None
    )
    tracker = Tracker(Path(out_dir))
    tracker.start_wandb(
        logger_cfg, {"sweep_dir": str(sweep_dir)}, name=f"report-{group}", group=group
    )
    tracker.log_files(
        tables={"report": markdown},
        images={
            "group_accuracy": Path(out_dir) / GROUP_PLOT,
            "per_class_accuracy": Path(out_dir) / PER_CLASS_PLOT,
            "knn_curves": Path(out_dir) / KNN_PLOT,
            "diagnostics": Path(out_dir) / DIAGNOSTICS_PLOT,
        },
    )
    tracker.finish()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sdclr.report",
        description="Aggregate a Hydra multirun sweep into report.md, report.json and plots.",
    )
    parser.add_argument("sweep_dir", type=Path, help="Hydra multirun directory of the sweep")
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write the report (default: sweep_dir)"
    )
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log the table and plots to W&B, in the group of the sweep's runs",
    )
    parser.add_argument("--wandb-project", default="sdclr", help="W&B project (default sdclr)")
    args = parser.parse_args(argv)
    try:
        markdown = build_report(args.sweep_dir, args.out)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.wandb:
        _log_to_wandb(args.sweep_dir, args.out or args.sweep_dir, markdown, args.wandb_project)
    try:
        sys.stdout.write(markdown)
    except UnicodeEncodeError:  # e.g. an ASCII-only locale: keep the report, lose the ±
        sys.stdout.flush()
        enc = sys.stdout.encoding or "ascii"
        sys.stdout.buffer.write(markdown.encode(enc, errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
