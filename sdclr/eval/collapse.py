"""Is a probe's result a result? A collapsed probe is named, never averaged silently.

A probe has collapsed when the head it reports trained on a non-finite loss (lr 30 on
features whose BN statistics lag diverges), or when its best validation top-1 is at chance
level: no better than predicting the validation set's largest class for every image, within
:data:`CHANCE_SIGMAS` binomial standard deviations (so a small validation set does not
call a barely-better-than-chance probe a result). The reason names the scale of the frozen
features (the L2 norms the probe recorded: on an early or smoke-scale checkpoint the
backbone's BN running statistics lag its weights and the scale runs away) and the fixes:
``<stage>.normalize=true`` (an affine-free BatchNorm before the linear layer) when the
features were not normalised, the learning-rate grid (``linear.lrs`` / ``fewshot.lrs``) when
a single rate ran, else that the features themselves carry no class information yet.
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
    :func:`sdclr.eval.probe.fit_probe`) is not a result, or None when it is."""
    rate = f"lr {result.get('lr'):g}" if result.get("lr") is not None else "its rate"
    if result.get("diverged_epoch") is not None or result.get("best_val_acc") is None:
        return (
            f"the {stage} probe's training loss became non-finite at epoch "
            f"{result.get('diverged_epoch')} ({rate}); {_advice(result, stage)}"
        )
    chance, sd = chance_level(val_labels)
    best = float(result["best_val_acc"])
    if best <= chance + CHANCE_SIGMAS * sd:
        return (
            f"the {stage} probe's best validation top-1 {best:.2f}% ({rate}) is at chance level "
            f"(largest class {chance:.2f}% of {np.asarray(val_labels).size} validation images, "
            f"+{CHANCE_SIGMAS:g} sd = {chance + CHANCE_SIGMAS * sd:.2f}%); {_advice(result, stage)}"
        )
    return None


def feature_scale(result: Mapping[str, Any]) -> str | None:
    """The frozen training features' L2 norms as the probe recorded them, in words (None for
    a result without them)."""
    stats = (result.get("feature_norm") or {}).get("train") or {}
    if stats.get("mean") is None:
        return None
    where = (
        f"the {stats['images']} training images" if stats.get("images") else "the training images"
    )
    return (
        f"feature scale: L2 norm {stats['mean']:.3g} +/- {stats.get('std') or 0:.3g} "
        f"(max {stats.get('max') or 0:.3g}) over {where}"
    )


def _advice(result: Mapping[str, Any], stage: str) -> str:
    """The feature scale, then what to try: normalised features (unless they were), a rate
    grid (unless one ran), else that the features carry nothing yet."""
    fixes = []
    if not result.get("normalize"):
        fixes.append(
            f"{stage}.normalize=true (an affine-free BatchNorm before the linear layer, for an "
            "early checkpoint whose BN running statistics lag its weights)"
        )
    if len(result.get("grid") or []) <= 1:
        fixes.append(f"a learning-rate grid, e.g. {stage}.lrs={SUGGESTED_GRID}")
    nothing = (
        "the features may carry no class information yet (an early checkpoint, too few "
        "pretraining epochs or too little data)"
    )
    advice = f"try {' or '.join(fixes)}" if fixes else nothing
    if fixes and len(result.get("grid") or []) > 1:
        advice += f"; otherwise {nothing}"
    scale = feature_scale(result)
    return f"{scale}; {advice}" if scale else advice
