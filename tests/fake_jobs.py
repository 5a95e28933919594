"""A fake finished job (metrics.json and status.json), for the report tests."""

from __future__ import annotations

import json
from pathlib import Path


def fake_job(root: Path, name: str, label: str, method: str, split: int, acc: float, knn=True):
    counts = [500, 300, 180, 110, 65, 40, 24, 14, 9, 5]
    probe = {
        "acc": acc,
        "many": acc + 5,
        "medium": acc,
        "few": acc - 5,
        "std": 4.0,
        "per_class": [acc] * 10,
        "class_counts": counts,
    }
    pre = {"epochs": 4, "final_loss": 1.0, "seconds": 1.0, "split_counts": {"D_i": counts}}
    if knn:
        pre["knn"] = [
            {"epoch": e, "acc": acc - 8 + e, "many": acc, "medium": acc - 2, "few": acc - 4}
            for e in (2, 4)
        ]
    pre["diagnostics"] = [
        {
            "epoch": 4,
            "disagreement": None if "SDCLR" not in label else [0.01 * (i + 1) for i in range(10)],
            "loss_share": [c / sum(counts) for c in counts],
        }
    ]
    job = root / name
    job.mkdir(parents=True)
    metrics = {
        "run": {"method": method, "label": label, "split": split},
        "pretrain": pre,
        "linear": probe,
        "fewshot": probe,
    }
    (job / "metrics.json").write_text(json.dumps(metrics))
    (job / "status.json").write_text(json.dumps({"status": "completed"}))
