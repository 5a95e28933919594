"""Is a probe's result a result? A collapsed probe is named, never averaged silently.

A probe has collapsed when the head it reports trained on a non-finite loss (lr 30 on
features whose BN statistics lag diverges), or when its best validation top-1 is at chance
level: no better than predicting the validation set's largest class for every image, within
:data:`CHANCE_SIGMAS` binomial standard deviations (so a small validation set does not
call a barely-better-than-chance probe a result). The reason names the fix: the learning-rate
grid (``linear.lrs`` / ``fewshot.lrs``) when a single rate ran, else that the features
themselves carry no class information yet.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

#: How many binomial standard deviations above chance a validation top-1 must be.
CHANCE_SIGMAS = 3.0
#: The grid the message suggests: log-spaced from 1e-3 to the protocol's 30.
SUGGESTED_GRID = "[0.001,0.01,0.1,1,10,30]"


def chance_level(val_labels: np.ndarray) -> tuple[float, float]:
    """(chance %, its binomial standard deviation in %) on these validation labels: the
    top-1 of always predicting the largest class."""
    labels = np.asarray(val_labels).reshape(-1)
    if labels.size == 0:
        return 0.0, 0.0
    share = float(np.bincount(labels).max()) / labels.size
    return 100.0 * share, 100.0 * math.sqrt(share * (1.0 - share) / labels.size)


def collapse_reason(result: Mapping[str, Any], val_labels: np.ndarray, stage: str) -> str | None:
    """Why the probe result of ``stage`` (``linear`` / ``fewshot``; the dict of
    :func:`sdclr.eval.probe.train_probe`) is not a result, or None when it is."""
    grid = result.get("grid") or []
    single = len(grid) <= 1
    fix = (
        f"try a learning-rate grid, e.g. {stage}.lrs={SUGGESTED_GRID}"
        if single
        else "the features may carry no class information yet (an early checkpoint, too few "
        "pretraining epochs or too little data)"
    )
    rate = f"lr {result.get('lr'):g}" if result.get("lr") is not None else "its rate"
    if result.get("diverged_epoch") is not None or result.get("best_val_acc") is None:
        return (
            f"the {stage} probe's training loss became non-finite at epoch "
            f"{result.get('diverged_epoch')} ({rate}); {fix}"
        )
    chance, sd = chance_level(val_labels)
    best = float(result["best_val_acc"])
    if best <= chance + CHANCE_SIGMAS * sd:
        return (
            f"the {stage} probe's best validation top-1 {best:.2f}% ({rate}) is at chance level "
            f"(largest class {chance:.2f}% of {np.asarray(val_labels).size} validation images, "
            f"+{CHANCE_SIGMAS:g} sd = {chance + CHANCE_SIGMAS * sd:.2f}%); {fix}"
        )
    return None
