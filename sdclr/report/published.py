"""The paper's numbers, and whether a method of a sweep ran the setting they were measured at.

The published Many / Medium / Few rows (protocol.md section 4) stand beside ours only when
every job of the method ran the paper's setting: plain SimCLR, or SDCLR p=0.9 with dual BN
and the three-layer head, on CIFAR-10-LT, the reference's own split files, all five splits,
the full data, the published pretraining schedule and the published full-shot linear probe.
Otherwise :func:`published_match` says why not, in words the report prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: The paper's CIFAR-10-LT full-shot numbers: mean and population std over its 5 splits, in
#: points (2000 pretraining epochs). The paper gives no Acc or Std (balancedness) column.
PUBLISHED: dict[str, dict[str, float]] = {
    "SimCLR": {
        "many": 78.18,
        "many_std": 4.18,
        "medium": 76.23,
        "medium_std": 5.33,
        "few": 71.37,
        "few_std": 7.07,
    },
    "SDCLR": {
        "many": 86.44,
        "many_std": 3.12,
        "medium": 81.84,
        "medium_std": 4.78,
        "few": 76.23,
        "few_std": 6.29,
    },
}
PUBLISHED_SOURCE = (
    "Jiang et al., Self-Damaging Contrastive Learning (ICML 2021), Table 4, as quoted by the "
    "authors in the reference repository's issue #2 (VITA-Group/SDCLR): CIFAR-10-LT, the five "
    "published splits, 2000 pretraining epochs, mean ± population std over the splits"
)

PAPER_DATASET, PAPER_SPLITS, PAPER_PRUNE = "cifar10_lt", (1, 2, 3, 4, 5), 0.9

#: What every job's run record must say (``metrics["run"]``), with how to name a difference.
PAPER_RUN: dict[str, Any] = {
    "dataset": PAPER_DATASET,
    "split_source": "official",
    "pretrain_set": "D_i",
    "fraction": 1.0,
    "smoke": False,
}
#: The published schedule (protocol.md sections 1-2), as the run record's ``protocol`` holds it.
PAPER_PROTOCOL: dict[str, Any] = {
    "pretrain_epochs": 2000,
    "pretrain_batch_size": 512,
    "pretrain_lr": 0.5,
    "temperature": 0.2,
    "linear": {
        "epochs": 30,
        "batch_size": 128,
        "lr": 30.0,
        "lrs": [],
        "momentum": 0.9,
        "weight_decay": 0.0,
        "milestones": [10, 20],
        "gamma": 0.1,
        "lr_step": "epoch_start",
        "val_every": 1,
        "select_metric": "top1",
        "normalize": False,
        "augment": True,
    },
}


def published_match(
    method: Mapping[str, Any], jobs_by_name: Mapping[str, Any]
) -> tuple[str | None, str | None]:
    """``(key of PUBLISHED, None)`` when this method's full-shot jobs ran the paper's setting,
    else ``(None, why not)``."""
    linear = method["linear"]
    if not linear["jobs"]:  # the setting is still worth naming when every probe collapsed
        no_result = "no full-shot result that did not collapse"
        names = [c["job"] for c in linear.get("collapsed") or []]
    else:
        no_result, names = None, list(linear["jobs"])
    runs = [jobs_by_name[n]["metrics"].get("run") for n in names if n in jobs_by_name]
    runs = [r for r in runs if isinstance(r, Mapping)]
    if not runs:
        return None, no_result or "no completed full-shot job"
    key = _paper_method(str(method["label"]), runs[0])
    if key is None:
        return None, (
            "the paper publishes plain SimCLR and SDCLR p=0.9 (dual BN, three-layer head) only"
        )
    for field, want in PAPER_RUN.items():
        why = _differs(field, [r.get(field, _MISSING) for r in runs], want)
        if why:
            return None, why
    splits = sorted({int(r["split"]) for r in runs if r.get("split") is not None})
    if tuple(splits) != PAPER_SPLITS:
        return None, (
            f"splits {', '.join(map(str, splits)) or 'unknown'} ran, the paper averages all five"
        )
    protocols = [r.get("protocol", _MISSING) for r in runs]
    if any(p is _MISSING for p in protocols):
        return None, "its jobs do not record their schedule (run by an older version)"
    for field, want in PAPER_PROTOCOL.items():
        if field == "linear":
            continue
        why = _differs(field, [p.get(field, _MISSING) for p in protocols], want)
        if why:
            return None, why
    for field, want in PAPER_PROTOCOL["linear"].items():
        values = [(p.get("linear") or {}).get(field, _MISSING) for p in protocols]
        why = _differs(f"linear.{field}", values, want)
        if why:
            return None, why
    return (None, no_result) if no_result else (key, None)


_MISSING = object()

#: How a differing field is named in the report.
_NAMES = {
    "dataset": "data",
    "split_source": "split.source",
    "pretrain_set": "split.pretrain_set",
    "fraction": "data.fraction",
    "smoke": "smoke",
    "pretrain_epochs": "pretrain.epochs",
    "pretrain_batch_size": "pretrain.batch_size",
    "pretrain_lr": "pretrain.lr",
    "temperature": "pretrain.temperature",
}


def _differs(field: str, values: Sequence[Any], want: Any) -> str | None:
    """Why ``values`` (one per job) are not all the paper's ``want``, or None."""
    name = _NAMES.get(field, field)
    if any(v is _MISSING for v in values):
        return f"its jobs do not record {name} (run by an older version)"
    seen = sorted({_show(v) for v in values if not _same(v, want)})
    if not seen:
        return None
    return f"{name}={' / '.join(seen)} ran, the paper's is {_show(want)}"


def _same(value: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(value, bool):
        return isinstance(value, bool) and value == want
    if isinstance(want, float) and isinstance(value, int | float):
        return abs(float(value) - want) <= 1e-9 * max(1.0, abs(want))
    if isinstance(want, list):
        return isinstance(value, list | tuple) and [float(v) for v in value] == [
            float(w) for w in want
        ]
    return value == want


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _paper_method(label: str, run: Mapping[str, Any]) -> str | None:
    """``SimCLR`` / ``SDCLR`` when the label is the paper's recipe with no option (SimCLR:
    the two-layer head; SDCLR: dual BN and the three-layer head), else None."""
    if label == _default_label("SimCLR", run) and run.get("head_depth") == 2:
        return "SimCLR"
    sdclr = _default_label(f"SDCLR p={PAPER_PRUNE:g}", run)
    if label == sdclr and run.get("bn") == "dual" and run.get("head_depth") == 3:
        return "SDCLR"
    return None


def _default_label(title: str, run: Mapping[str, Any]) -> str:
    """The label of the paper's recipe: the method, its BN mode and head depth, no option."""
    return f"{title} {run.get('bn')}-BN head{run.get('head_depth')}"
