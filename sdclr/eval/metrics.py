"""Long-tail metrics: per-class accuracy, Many / Medium / Few, and balancedness (Std).

Definitions (protocol.md section 2):

* classes are ranked by their image count in the split's long-tailed pretraining set D_i;
* ``thirds`` (CIFAR): Few = the n//3 smallest classes, Medium = the next n//3, Many = the rest;
  ``thresholds`` (ImageNet-style): Many > 100 images, Medium 20..100, Few < 20;
* a group's accuracy is the mean of its classes' test accuracies;
* Std is the population standard deviation of (Many, Medium, Few) accuracy;
* ``acc`` is plain top-1 over all test images.
"""

from __future__ import annotations

import numpy as np


def class_groups(
    class_counts: np.ndarray | list[int],
    scheme: str = "thirds",
    many_above: int = 100,
    few_below: int = 20,
) -> dict[str, list[int]]:
    counts = np.asarray(class_counts)
    n = len(counts)
    if scheme == "thirds":
        # ascending by count; ties broken by class id so the assignment is deterministic
        order = np.lexsort((np.arange(n), counts))
        third = n // 3
        few, medium, many = order[:third], order[third : 2 * third], order[2 * third :]
    elif scheme == "thresholds":
        many = np.flatnonzero(counts > many_above)
        few = np.flatnonzero(counts < few_below)
        medium = np.flatnonzero((counts >= few_below) & (counts <= many_above))
    else:
        raise ValueError(f"unknown grouping scheme {scheme!r}")
    return {
        "many": sorted(int(c) for c in many),
        "medium": sorted(int(c) for c in medium),
        "few": sorted(int(c) for c in few),
    }


def per_class_accuracy(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy (%) of each class; NaN for a class with no test images."""
    pred, target = np.asarray(pred), np.asarray(target)
    total = np.bincount(target, minlength=num_classes).astype(float)
    correct = np.bincount(target[pred == target], minlength=num_classes).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * correct / total


def summarize(
    pred: np.ndarray, target: np.ndarray, num_classes: int, groups: dict[str, list[int]]
) -> dict:
    per_class = per_class_accuracy(pred, target, num_classes)
    out = {"acc": float(100.0 * np.mean(np.asarray(pred) == np.asarray(target)))}
    for name in ("many", "medium", "few"):
        vals = per_class[groups[name]]
        vals = vals[~np.isnan(vals)]
        out[name] = float(vals.mean()) if len(vals) else float("nan")
    out["std"] = float(np.std([out["many"], out["medium"], out["few"]]))
    out["per_class"] = [None if np.isnan(v) else float(v) for v in per_class]
    out["groups"] = groups
    return out
