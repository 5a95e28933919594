"""A job's own plots (sdclr.report.plots): a pretrain-only job gets its kNN and diagnostics
plots."""

from __future__ import annotations

import json

from fake_jobs import fake_job


def test_pretrain_only_job_gets_its_plots(tmp_path):
    from sdclr.report.plots import write_pretrain_plots

    fake_job(tmp_path, "job", "SDCLR p=0.9 dual-BN head3", "SDCLR", 1, 50.0)
    metrics = json.loads((tmp_path / "job" / "metrics.json").read_text())
    del metrics["linear"], metrics["fewshot"]
    written = write_pretrain_plots(metrics, tmp_path / "job" / "report")
    assert set(written) == {"knn_curves", "diagnostics"}
    assert all(p.stat().st_size > 1000 for p in written.values())
    assert write_pretrain_plots({"pretrain": {"epochs": 1}}, tmp_path / "none") == {}
