"""Render the report as markdown: aligned tables, mean ± std cells and the report's sections.

Failed, running and incomplete jobs are listed with their error line and Hydra overrides;
override combinations of ``multirun.yaml`` without any job dir are listed as missing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sdclr.report.aggregate import KNN_KEY, METRICS
from sdclr.report.jobs import EVAL_STAGES, KNN_STAGE, RANDOM_INIT_SUFFIX, STAGES, as_float
from sdclr.report.plots import DIAGNOSTICS_PLOT, GROUP_PLOT, KNN_PLOT, PER_CLASS_PLOT
from sdclr.report.tables import stage_entries

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
    """A small markdown table of one job's ``linear``/``fewshot``/``knn`` results, each
    followed by the same evaluation of the random-init encoder when the job ran it
    (``stage.random_init``).

    Columns: Stage, Acc, Many, Medium, Few, Std, Seconds (and Collapsed when a probe did).
    Returns a one-line note when the job has none of them.
    """
    rows = []
    for stage, title in EVAL_STAGES:
        for key_, what in ((stage, title), (stage + RANDOM_INIT_SUFFIX, f"{title}, random init")):
            res = metrics.get(key_)
            if not isinstance(res, Mapping):
                continue
            if stage == KNN_STAGE[0] and res.get("k") is not None:
                what += f" (k={res['k']}, t={res.get('temperature')})"
            row: dict[str, Any] = {"Stage": what}
            for key, col in METRICS:
                row[col] = as_float(res.get(key))
            seconds = as_float(res.get("seconds"))
            row["Seconds"] = None if seconds is None else f"{seconds:.1f}"
            row["Collapsed"] = "yes" if res.get("collapsed") is True else "no"
            rows.append(row)
    if not any(r["Collapsed"] == "yes" for r in rows):
        for row in rows:
            del row["Collapsed"]
    if not rows:
        return "(no linear, few-shot or kNN results)"
    return format_table(rows)


def format_mean_std(mean: float | None, std: float | None) -> str:
    """``86.44 ± 0.51``; ``-`` when there is no value."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or math.isnan(std):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}"


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
    if counts.get("collapsed"):
        parts.append(f"{counts['collapsed']} collapsed probe results (listed apart, not averaged)")
    text = "; ".join(parts)
    text = text[0].upper() + text[1:] + "."
    if counts["expected"] is not None:
        text += f" The sweep expected {counts['expected']} jobs (from multirun.yaml)."
    return text


#: How the report marks a row of published numbers.
PUBLISHED_MARK = "(published)"


def _stage_rows(
    methods: Sequence[Mapping[str, Any]], stage: str, published: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """One row per method with results (or collapsed probes) in ``stage``; the published
    row after each method that matches the paper's setting (full-shot only)."""
    with_collapse = any(m[stage].get("collapsed") for m in methods)
    rows = []
    for m, paper in stage_entries(methods, stage, published.get("values") or {}):
        res = m[stage]
        if paper is None:
            row: dict[str, Any] = {"Method": m["label"], "n": res["n"]}
            for key, col in METRICS:
                row[col] = format_mean_std(res[key]["mean"], res[key]["std"])
            row["Splits"] = ", ".join(str(s) for s in res["splits"] if s is not None) or "-"
            collapsed: Any = len(res.get("collapsed") or [])
        else:
            row = {"Method": f"{m['published']} {PUBLISHED_MARK}", "n": 5}
            for key, col in METRICS:
                row[col] = (
                    format_mean_std(paper[key], paper.get(f"{key}_std")) if key in paper else "-"
                )
            row["Splits"], collapsed = "1, 2, 3, 4, 5", "-"
        if with_collapse:
            row["Collapsed"] = collapsed
        rows.append(row)
    return rows


def _why_not_published(methods: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per method without a published row beside it, saying why (its setting is not
    the paper's: report/published.py)."""
    reasons = [
        f"{m['label']}: {m['published_why_not']}"
        for m in methods
        if (m["linear"]["n"] or m["linear"].get("collapsed"))
        and not m.get("published")
        and m.get("published_why_not")
    ]
    if not reasons:
        return []
    return ["", "No published row beside: " + "; ".join(reasons) + "."]


def _knn_stage_section(methods: Sequence[Mapping[str, Any]]) -> list[str]:
    """The kNN classifier's table (``stage=knn``, or ``stage.knn``), when a job ran it."""
    if not any(m.get(KNN_KEY, {}).get("n") for m in methods):
        return []
    rows = _stage_rows(methods, KNN_KEY, {})
    for row, (m, _) in zip(rows, stage_entries(methods, KNN_KEY, {})):
        res = m[KNN_KEY]
        row["k"] = ", ".join(f"{v:g}" for v in res.get("k") or []) or "-"
        row["t"] = ", ".join(f"{v:g}" for v in res.get("temperature") or []) or "-"
    return [
        "",
        f"## {KNN_STAGE[1]}",
        "",
        "The kNN monitor's weighted kNN (probe pool as the bank, the test set as queries) on "
        "each job's checkpoint; no training, so a cheap third reading beside the probes.",
        "",
        format_table(rows),
    ]


def _markdown_target(path: str) -> str:
    return f"<{path}>" if any(c in path for c in " ()") else path


def _embed_maps_section(maps: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per job's map of its test features (``stage=embed``), linking its PNG."""
    if not maps:
        return []
    out = [
        "",
        "## Maps of the test features",
        "",
        "Each job's 2-D map of its test features (`stage=embed`), coloured by class (left) and "
        "by Many / Medium / Few (right); paths relative to this report.",
        "",
    ]
    for m in maps:
        what = {"tsne": "t-SNE", "pca": "PCA"}.get(str(m.get("map")), str(m.get("map")))
        trust = as_float(m.get("trustworthiness"))
        details = [m["method"], f"{what} of {m.get('points')} test images"]
        if trust is not None:
            details.append(f"trustworthiness {trust:.3f}")
        if m["stage"].endswith(RANDOM_INIT_SUFFIX):
            details.append("random init")
        out.append(
            f"- `{m['job']}` ({', '.join(details)}): "
            f"![{m['job']} {m['stage']}]({_markdown_target(m['image'])})"
        )
    return out


def _fmt_p(p: float | None) -> str:
    return "-" if p is None else f"{p:.4g}"


def _paired_section(paired: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per stage, for each pair of methods, the per-split differences B - A with their mean
    ± std and the exact sign-flip p-value."""
    if not paired:
        return []
    out = [
        "",
        "## Paired differences (same split, B - A)",
        "",
        "For each pair of methods, the difference on each split both ran (collapsed probes "
        "left out), its mean ± population std over the splits, and the two-sided p-value of "
        "the exact paired sign-flip test (all 2^n sign patterns; with n splits p cannot go "
        "below 2/2^n, 0.0625 for 5). Positive: B is higher (for Std, B is less balanced).",
    ]
    for stage, title in STAGES:
        entries = [e for e in paired if e["stage"] == stage]
        if not entries:
            continue
        rows = []
        for e in entries:
            for key, col in METRICS:
                d = e[key]
                rows.append(
                    {
                        "B - A": f"{e['b']} - {e['a']}",
                        "Metric": col,
                        "n": len(d["diffs"]),
                        "Per split": ", ".join(
                            f"{s}: {v:+.2f}" for s, v in zip(d["splits"], d["diffs"])
                        ),
                        "Mean ± std": format_mean_std(d["mean"], d["std"]),
                        "p": _fmt_p(d["p"]),
                    }
                )
        out += ["", f"### {title}", "", format_table(rows)]
    return out


def render_markdown(summary: Mapping[str, Any]) -> str:
    """The sweep report of ``summary`` (:func:`sdclr.report.build.summarize_sweep`), section by
    section: the probes, the kNN classifier, paired comparisons, pretraining, the kNN monitor,
    the plots and maps, and what did not make it into the averages."""
    methods = summary["methods"]
    out = _intro(summary["sweep_dir"], summary["counts"])
    out += _probe_sections(methods, summary.get("published") or {})
    out += _knn_stage_section(methods)
    out += _paired_section(summary.get("paired") or [])
    out += _pretrain_section(methods)
    out += _knn_monitor_section(methods)
    out += _plots_section(summary.get("plots", {}))
    out += _embed_maps_section(summary.get("embed_maps") or [])
    out += _problems_section(summary["failed"] + summary["incomplete"])
    out += _collapsed_section(summary.get("collapsed") or [])
    out += _missing_section(summary["counts"], summary["missing"])
    if summary["warnings"]:
        out += ["", "## Warnings", ""] + [f"- {w}" for w in summary["warnings"]]
    return "\n".join(out) + "\n"


def _intro(sweep_dir: str, counts: Mapping[str, Any]) -> list[str]:
    return [
        f"# Sweep report: `{sweep_dir}`",
        "",
        _header(counts),
        "",
        "Each cell is mean ± std over the splits of the completed jobs of that method; the ± "
        "is the **population** standard deviation (numpy `ddof=0`). `n` is the number of "
        "splits (jobs) averaged. The Std column is each job's balancedness: the population "
        "std of its (Many, Medium, Few) accuracies, then averaged like the others; like every "
        "accuracy here it is in percentage points (the reference's analysis script gives it as "
        "a fraction, 100 times smaller). "
        "Failed and incomplete jobs, and collapsed probes, are never averaged in.",
    ]


def _probe_sections(
    methods: Sequence[Mapping[str, Any]], published: Mapping[str, Any]
) -> list[str]:
    out: list[str] = []
    for stage, title in STAGES:
        out += ["", f"## {title}", ""]
        rows = _stage_rows(methods, stage, published)
        out.append(format_table(rows) if rows else "_No completed jobs with this probe._")
        if any(str(r["Method"]).endswith(PUBLISHED_MARK) for r in rows):
            out += ["", f"Rows marked {PUBLISHED_MARK}: {published['source']}."]
        if stage == "linear" and rows:
            out += _why_not_published(methods)
    return out


def _pretrain_section(methods: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [
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
    return ["", "## Pretraining", "", format_table(rows)] if rows else []


def _knn_monitor_section(methods: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = []
    for m in methods:
        k = m.get("knn")
        if not k:
            continue
        row = {"Method": m["label"], "n": k["n"], "Epoch": ", ".join(map(str, k["epoch"]))}
        for key, col in METRICS[:4]:
            row[col] = format_mean_std(k[key]["mean"], k[key]["std"])
        rows.append(row)
    if not rows:
        return []
    return [
        "",
        "## kNN monitor (last monitored epoch)",
        "",
        "Weighted kNN (probe pool as the bank, the test set as queries) during pretraining; "
        "a learning curve, not a replacement for the probes.",
        "",
        format_table(rows),
    ]


def _plots_section(plots: Mapping[str, Any]) -> list[str]:
    out = [
        "",
        "## Plots",
        "",
        f"![Many/Medium/Few accuracy per method]({GROUP_PLOT})",
        "",
        f"![Per-class accuracy against class count in D_i]({PER_CLASS_PLOT})",
    ]
    if "knn_curves" in plots:
        out += ["", f"![kNN monitor accuracy against the epoch]({KNN_PLOT})"]
    if "diagnostics" in plots:
        out += [
            "",
            f"![Dense/pruned disagreement and loss share against class count]({DIAGNOSTICS_PLOT})",
        ]
    return out


def _problems_section(problems: Sequence[Mapping[str, Any]]) -> list[str]:
    table = format_table([_job_row(j) for j in problems]) if problems else "None."
    return ["", "## Failed and incomplete jobs", "", table]


def _collapsed_section(collapsed: Sequence[Mapping[str, Any]]) -> list[str]:
    if not collapsed:
        return []
    rows = [
        {
            "Job": c["job"],
            "Method": c["method"],
            "Stage": c["stage"],
            "Split": c["split"],
            "Reason": c["reason"] or "-",
        }
        for c in collapsed
    ]
    return [
        "",
        "## Collapsed probes (not averaged)",
        "",
        "A probe whose loss went non-finite or whose validation top-1 stayed at chance level "
        "is no result of the encoder; rerun it with a learning-rate grid "
        "(`stage=linear stage.checkpoint=... linear.lrs=[...]`) or, when its reason names a "
        "runaway feature scale, with normalised features (`linear.normalize=true`).",
        "",
        format_table(rows),
    ]


def _missing_section(counts: Mapping[str, Any], missing: Sequence[Sequence[str]]) -> list[str]:
    if counts["expected"] is None:
        return []
    out = ["", "## Missing jobs", ""]
    out.append(
        f"The sweep expected {counts['expected']} jobs; {counts['job_dirs']} job dirs found."
    )
    if missing:
        out += ["Override combinations with no job dir:", ""]
        out += [f"- `{' '.join(combo)}`" for combo in missing]
    else:
        out.append("Every override combination has a job dir.")
    return out
