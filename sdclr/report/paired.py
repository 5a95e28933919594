"""The paper's question, asked pairwise: on the same split, does method B beat method A?

For every pair of methods of a sweep (in report order, B after A) and every probe stage,
the jobs are matched on their split (several jobs of one method on one split, e.g. seeds,
are averaged first) and the per-split differences B - A of ``acc``, ``many``, ``medium``,
``few`` and ``std`` get their mean ± population std and an exact paired sign-flip test
(:func:`sign_flip_p`). Collapsed probes are left out, as in the averages.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sdclr.report.aggregate import METRICS, STD_DDOF
from sdclr.report.jobs import STAGES, as_float
from sdclr.utils.io import natural_key

#: The largest number of paired splits tested exactly (2^20 sign patterns).
MAX_EXACT = 20


def sign_flip_p(diffs: Sequence[float]) -> float | None:
    """Two-sided exact p-value of the paired sign-flip (permutation) test of mean 0: the
    share of the 2^n sign patterns s whose |sum s_i d_i| is at least the observed |sum d_i|.
    With n pairs the smallest possible value is 2 / 2^n (0.0625 for 5 splits). None for no
    pairs or more than :data:`MAX_EXACT`."""
    d = np.asarray(diffs, dtype=np.float64)
    n = d.size
    if n == 0 or n > MAX_EXACT:
        return None
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    stats = np.abs(signs @ d)
    observed = abs(float(d.sum()))
    # sums of the same numbers in another order may differ in the last bits: count those
    tol = 1e-9 * max(1.0, float(np.abs(d).sum()))
    return float(np.mean(stats >= observed - tol))


def _per_split(
    jobs: Sequence[str], jobs_by_name: Mapping[str, Mapping[str, Any]], stage: str, key: str
) -> dict[str, float]:
    """``{split: mean of key}`` over the (non-collapsed) jobs of one method."""
    values: dict[str, list[float]] = {}
    for name in jobs:
        metrics = jobs_by_name[name]["metrics"]
        run = metrics.get("run") if isinstance(metrics.get("run"), Mapping) else {}
        split = run.get("split")
        value = as_float(metrics[stage].get(key))
        if split is not None and value is not None:
            values.setdefault(str(split), []).append(value)
    return {s: float(np.mean(v)) for s, v in values.items()}


def paired_differences(
    methods: Sequence[Mapping[str, Any]], jobs_by_name: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One entry per (stage, A, B) with at least one common split: ``{stage, a, b, splits,
    n, <metric>: {diffs, mean, std, p}}``, the differences B - A in split order."""
    out = []
    for stage, _title in STAGES:
        for a, b in itertools.combinations(methods, 2):
            entry: dict[str, Any] = {"stage": stage, "a": a["label"], "b": b["label"]}
            splits: list[str] | None = None
            for key, _col in METRICS:
                va = _per_split(a[stage]["jobs"], jobs_by_name, stage, key)
                vb = _per_split(b[stage]["jobs"], jobs_by_name, stage, key)
                common = sorted(set(va) & set(vb), key=natural_key)
                splits = common if splits is None else splits
                diffs = [vb[s] - va[s] for s in common]
                entry[key] = {
                    "splits": common,
                    "diffs": diffs,
                    "mean": float(np.mean(diffs)) if diffs else None,
                    "std": float(np.std(diffs, ddof=STD_DDOF)) if diffs else None,
                    "p": sign_flip_p(diffs),
                }
            entry["splits"], entry["n"] = splits or [], len(splits or [])
            if entry["n"]:
                out.append(entry)
    return out


def accuracy_gain(ours: float, base: float, n: int) -> tuple[float, float]:
    """(ours - base, its standard error) in points, for two top-1 accuracies (%) on the same
    ``n`` test images, each taken as an independent binomial: the errors of two encoders on
    the same images are positively correlated, so this overstates the error (conservative)."""
    p, q = ours / 100.0, base / 100.0
    se = math.sqrt(max(p * (1 - p), 0.0) / n + max(q * (1 - q), 0.0) / n) if n > 0 else math.inf
    return ours - base, 100.0 * se
