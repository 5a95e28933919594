"""The report's PNG plots, drawn with matplotlib (imported lazily, no pyplot).

``group_accuracy.png`` and ``per_class_accuracy.png``; when the runs have them,
``knn_curves.png`` (the kNN monitor's accuracy and Many / Medium / Few against the epoch) and
``diagnostics.png`` (per class, the dense / pruned disagreement and the class's share of the
contrastive loss against its D_i count, at the last diagnosed epoch). A job of
``stage=embed`` draws ``embed.png`` in its own directory (:func:`plot_embedding`: the 2-D map
of its test features by class and by Many / Medium / Few).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sdclr.report.aggregate import knn_curve, knn_summary, label_of, rank_trend
from sdclr.report.jobs import STAGES, as_float

GROUP_PLOT = "group_accuracy.png"
PER_CLASS_PLOT = "per_class_accuracy.png"
KNN_PLOT = "knn_curves.png"
DIAGNOSTICS_PLOT = "diagnostics.png"
#: A ``stage=embed`` job's map, in the job directory (``<stage key>.png``: ``embed.png``, and
#: ``embed_random_init.png`` for the random-init baseline)
EMBED_PLOT = "embed.png"
#: Many / Medium / Few on the map: the names, and colours that stay apart from each other
EMBED_GROUPS = (
    ("many", "Many", "#1f77b4"),
    ("medium", "Medium", "#2ca02c"),
    ("few", "Few", "#d62728"),
)


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
    if not any(knn_curve(p) for _, ms in groups for p in _series(ms)):
        return False
    fig, axes = _figure(13, 4.8, 2)
    colors = _colors()
    axes[0].set_title("kNN monitor: accuracy")
    axes[1].set_title("kNN monitor: Many (solid), Medium (dashed), Few (dotted)")
    for i, (label, metrics_list) in enumerate(groups):
        color = colors[i % len(colors)]
        curves = [c for c in (knn_curve(p) for p in _series(metrics_list)) if c]
        if not curves:
            continue
        summary = knn_summary(_series(metrics_list))
        for c in curves:
            x = [int(p["epoch"]) for p in c]
            axes[0].plot(x, [as_float(p.get("acc")) for p in c], color=color, alpha=0.3, lw=1)
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
                trend = rank_trend(pairs)
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
    label, _ = label_of({"metrics": metrics, "name": Path(out_dir).parent.name})
    groups = [(label, [metrics])]
    written: dict[str, Path] = {}
    pre = metrics.get("pretrain")
    if not isinstance(pre, Mapping) or not (knn_curve(pre) or _diagnostics_of(pre)):
        return written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if plot_knn_curves(groups, out_dir / KNN_PLOT):
        written["knn_curves"] = out_dir / KNN_PLOT
    if plot_diagnostics(groups, out_dir / DIAGNOSTICS_PLOT):
        written["diagnostics"] = out_dir / DIAGNOSTICS_PLOT
    return written


def plot_embedding(
    coords: np.ndarray,
    labels: np.ndarray,
    groups: Mapping[str, Sequence[int]],
    path: Path,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> None:
    """A 2-D map of test features [N, 2] in two panels: coloured by class (a legend up to 20
    classes, a colour bar beyond), and by the class's Many / Medium / Few group (``groups``:
    group -> class ids, named in the legend up to five classes a group; a class in none of
    them is grey), the small groups drawn last so the tail stays visible. ``title`` heads the
    figure."""
    coords = np.asarray(coords, dtype=float)
    labels = np.asarray(labels).astype(int)
    n_classes = int(max(labels.max(initial=-1) + 1, len(class_names or [])))
    size = float(np.clip(20000 / max(len(labels), 1), 1.0, 12.0))
    fig, axes = _figure(13, 6.2, 2)
    if title:
        fig.suptitle(title, fontsize=10)
    ax = axes[0]
    ax.set_title("by class")
    if n_classes <= 20:
        import matplotlib as mpl

        cmap = mpl.colormaps["tab10" if n_classes <= 10 else "tab20"]
        for c in range(n_classes):
            sel = labels == c
            if not sel.any():
                continue
            name = class_names[c] if class_names and c < len(class_names) else str(c)
            ax.scatter(*coords[sel].T, s=size, color=cmap(c), label=name, linewidths=0)
        ax.legend(fontsize=7, markerscale=max(1.0, 16 / size) ** 0.5, loc="best", ncol=2)
    else:
        points = ax.scatter(*coords.T, s=size, c=labels, cmap="turbo", linewidths=0)
        fig.colorbar(points, ax=ax, label="class id")
    ax = axes[1]
    ax.set_title("by group (Many / Medium / Few of D_i)")
    group_of = {int(c): g for g in groups for c in groups[g]}
    member = np.asarray([group_of.get(int(c), "") for c in labels])
    other = member == ""
    if other.any():
        ax.scatter(*coords[other].T, s=size, color="#bbbbbb", label="no group", linewidths=0)
    for key, name, color in EMBED_GROUPS:
        sel = member == key
        if sel.any():
            ids = list(groups.get(key) or [])
            which = f"{len(ids)} classes"
            if class_names and len(ids) <= 5 and all(0 <= c < len(class_names) for c in ids):
                which = ", ".join(class_names[c] for c in ids)
            ax.scatter(*coords[sel].T, s=size, color=color, label=f"{name}: {which}", linewidths=0)
    ax.legend(fontsize=8, markerscale=max(1.0, 16 / size) ** 0.5, loc="best")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
