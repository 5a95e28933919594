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


def test_a_map_of_the_test_features_is_a_png_in_two_panels(tmp_path):
    import numpy as np

    from sdclr.report.plots import plot_embedding

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 30)
    coords = rng.normal(size=(len(labels), 2)) + labels[:, None]
    groups = {"many": [0, 1, 2, 3], "medium": [4, 5, 6], "few": [7, 8, 9]}
    names = [f"class{c}" for c in range(10)]
    path = tmp_path / "embed.png"
    plot_embedding(coords, labels, groups, path, names, "t-SNE of 300 test images")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # many classes (a colour bar instead of a legend), a class in no group, no names
    labels = np.arange(300) % 30
    plot_embedding(coords, labels, groups, tmp_path / "many.png")
    assert (tmp_path / "many.png").stat().st_size > 10_000
