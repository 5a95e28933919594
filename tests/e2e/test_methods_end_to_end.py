"""MoCo + SDCLR with every option and BYOL end to end through the CLI, then the report over
the mix."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from runs import TINY, ok, sdclr

E2E = [
    *[a for a in TINY if not a.startswith(("pretrain.batch_size", "linear.", "fewshot."))],
    "pretrain.batch_size=16",
    "linear.epochs=1",
    "linear.milestones=[1]",
    "fewshot.epochs=1",
    "fewshot.milestones=[1]",
]


def test_moco_sdclr_and_byol_end_to_end_with_every_option_and_a_mixed_report(tmp_path, env):
    root = tmp_path / "runs"
    moco = root / "moco"
    out = ok(
        sdclr(
            [
                *E2E,
                "method=moco",
                "prune=p30",
                "method.queue_size=256",
                "temperature.schedule=cosine",
                "temperature.period=4",
                "boost=true",
                "monitor.knn_every=1",
                f"hydra.run.dir={moco}",
            ],
            env,
        )
    )
    m = json.loads((moco / "metrics.json").read_text())
    assert m["run"]["label"] == "MoCo v2 + SDCLR p=0.3 dual-BN head3 T=cos(0.1-1/4) BCL"
    assert m["run"]["method"] == "MoCo v2 + SDCLR" and m["run"]["method_name"] == "moco"
    pre = m["pretrain"]
    assert pre["temperature"] == pytest.approx([1.0, 0.55])
    assert pre["boost"]["k"] == 2 and len(pre["mask_density"]) == 2
    assert [p["epoch"] for p in pre["knn"]] == [0, 1, 2]
    assert all(0 <= p["acc"] <= 100 for p in pre["knn"])
    diag = pre["diagnostics"]
    assert [d["epoch"] for d in diag] == [1, 2]  # on by default with a pruned branch
    assert len(diag[-1]["disagreement"]) == 10 and sum(diag[-1]["loss_share"]) == pytest.approx(1)
    assert len(diag[-1]["layer_density"]) > 15
    assert all(0 <= d <= 1 for d in diag[-1]["layer_density"].values())
    ckpt = torch.load(moco / "checkpoints" / "pretrain.pt", weights_only=False)
    assert ckpt["method_state"]["queue"].shape == (256, 128) and ckpt["boost"] is not None
    for stage in ("linear", "fewshot"):
        assert 0 <= m[stage]["acc"] <= 100
    assert (moco / "report" / "diagnostics.png").is_file()
    assert (moco / "report" / "knn_curves.png").is_file()
    kinds = [json.loads(line)["kind"] for line in (moco / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("knn") == 3 and kinds.count("diagnostics") == 2
    assert "kNN monitor (epoch 2)" in out.stdout

    byol = root / "byol"
    ok(
        sdclr(
            [
                *E2E,
                "method=byol",
                "prune=none",
                "monitor.knn_every=2",
                "monitor.diagnostics=true",
                f"hydra.run.dir={byol}",
            ],
            env,
        )
    )
    m = json.loads((byol / "metrics.json").read_text())
    assert m["run"]["label"] == "BYOL shared-BN head2"
    pre = m["pretrain"]
    assert "temperature" not in pre and "mask_density" not in pre
    assert [p["epoch"] for p in pre["knn"]] == [0, 2]
    assert pre["diagnostics"][-1]["disagreement"] is None
    assert (
        "predictor"
        in torch.load(byol / "checkpoints" / "pretrain.pt", weights_only=False)["method_state"]
    )

    report = subprocess.run(
        [sys.executable, "-m", "sdclr.report", str(root)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert report.returncode == 0, report.stderr
    summary = json.loads((root / "report.json").read_text())
    assert [x["label"] for x in summary["methods"]] == [
        "MoCo v2 + SDCLR p=0.3 dual-BN head3 T=cos(0.1-1/4) BCL",
        "BYOL shared-BN head2",
    ]
    assert set(summary["plots"]) >= {"knn_curves", "diagnostics"}
