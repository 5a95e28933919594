"""The report over a sweep (sdclr.report.build): any mix of methods, in order, with kNN curves
and diagnostics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from fake_jobs import fake_job
from fake_sweep import (
    COUNTS,
    PNG_MAGIC,
    SDCLR,
    SIMCLR,
    cells,
    pop_std,
    write_sweep,
)

from sdclr.report.__main__ import main
from sdclr.report.build import build_report


def test_report_groups_any_mix_of_methods_with_curves_and_diagnostics(tmp_path):
    from sdclr.report.build import build_report

    jobs = [
        ("BYOL shared-BN head2", "BYOL"),
        ("MoCo v2 + SDCLR p=0.3 dual-BN head3", "MoCo v2 + SDCLR"),
        ("SDCLR p=0.9 dual-BN head3", "SDCLR"),
        ("SimCLR shared-BN head2", "SimCLR"),
        ("shared-BN head2 custom", "MoCo v2"),  # a label without the method: prefixed
    ]
    i = 0
    for label, method in jobs:
        for split in (1, 2):
            fake_job(tmp_path, str(i), label, method, split, 50.0 + i, knn=method != "SimCLR")
            i += 1
    md = build_report(tmp_path)
    summary = json.loads((tmp_path / "report.json").read_text())
    labels = [m["label"] for m in summary["methods"]]
    assert labels == [
        "SimCLR shared-BN head2",
        "SDCLR p=0.9 dual-BN head3",
        "MoCo v2 + SDCLR p=0.3 dual-BN head3",
        "MoCo v2 shared-BN head2 custom",
        "BYOL shared-BN head2",
    ]
    assert all(m["linear"]["n"] == 2 for m in summary["methods"])
    byol = summary["methods"][-1]
    assert byol["knn"]["epoch"] == [4] and byol["knn"]["acc"]["mean"] == pytest.approx(46.5)
    assert byol["knn"]["curve"]["epoch"] == [2, 4]
    assert summary["methods"][0]["knn"] is None
    assert summary["plots"]["knn_curves"] == "knn_curves.png"
    assert summary["plots"]["diagnostics"] == "diagnostics.png"
    for name in ("knn_curves.png", "diagnostics.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
        assert f"]({name})" in md
    assert "## kNN monitor (last monitored epoch)" in md


# --- a sweep of SimCLR and SDCLR over three splits (tests/fake_sweep.py) ------------------


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return write_sweep(tmp_path)


def test_report_numbers(sweep: Path, capsys):
    assert main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((sweep / "report.json").read_text())
    assert report["std_ddof"] == 0
    assert report["counts"] == {
        "job_dirs": 9,
        "completed": 6,
        "failed": 1,
        "incomplete": 2,
        "expected": 10,
        "missing": 1,
        "collapsed": 0,
    }
    labels = [m["label"] for m in report["methods"]]
    assert labels == [SIMCLR, SDCLR]  # SimCLR-like first although "SD" < "Si"
    simclr, sdclr = report["methods"]
    lin = simclr["linear"]
    assert lin["n"] == 3 and sorted(lin["splits"]) == [1, 2, 3]
    assert lin["acc"]["mean"] == pytest.approx(82.0)
    assert lin["acc"]["std"] == pytest.approx(math.sqrt(8 / 3))  # ddof=0, failed job excluded
    assert lin["many"]["mean"] == pytest.approx(91.0)
    assert lin["medium"]["mean"] == pytest.approx(82.0)
    assert lin["medium"]["std"] == pytest.approx(pop_std([80.0, 81.0, 85.0]))
    assert lin["few"]["mean"] == pytest.approx(72.0)
    assert lin["std"]["mean"] == pytest.approx(7.0)
    assert sdclr["linear"]["acc"]["mean"] == pytest.approx(86.0)
    assert sdclr["linear"]["acc"]["std"] == pytest.approx(math.sqrt(2.0))
    assert sdclr["fewshot"]["acc"]["mean"] == pytest.approx(76.0)
    assert sdclr["fewshot"]["few"]["mean"] == pytest.approx(72.0)
    assert sdclr["fewshot"]["n"] == 3
    # Trend pairs each job's per_class with its own class_counts (by frequency rank).
    trend = simclr["linear"]["per_class_trend"]
    assert trend["count"] == pytest.approx(COUNTS)
    assert trend["acc"] == pytest.approx([82.0 + (c - 100) / 50 for c in COUNTS])

    md = (sweep / "report.md").read_text()
    assert printed == md
    assert "Averaged over 6 of 10 jobs; 1 failed; 2 incomplete; 1 missing" in md
    assert "population" in md and "ddof=0" in md
    assert f"{82.0:.2f} ± {math.sqrt(8 / 3):.2f}" in md  # 82.00 ± 1.63
    assert "86.00 ± 1.41" in md
    assert md.index(SIMCLR + " ") < md.index(SDCLR)


def test_report_lists_failed_and_missing(sweep: Path, tmp_path: Path):
    out = tmp_path / "elsewhere"
    md = build_report(sweep, out)
    assert (out / "report.md").read_text() == md
    assert not (sweep / "report.md").exists()
    rows = {c[0]: c for c in map(cells, md.splitlines()) if c and c[0] in "678"}
    assert rows["6"][1:] == [
        "method=simclr split=split4 data=cifar10_lt",
        "failed",
        "few",
        "RuntimeError: CUDA out of memory",
    ]
    assert rows["7"][1:3] == ["method=sdclr split=split4 data=cifar10_lt", "incomplete"]
    assert rows["7"][4] == "no metrics.json"
    assert rows["8"][2] == "incomplete" and "running" in rows["8"][4]
    assert "- `method=simclr split=split5 data=cifar10_lt`" in md
    assert "expected 10 jobs" in md
    report = json.loads((out / "report.json").read_text())
    assert report["missing"] == [["method=simclr", "split=split5", "data=cifar10_lt"]]
    assert [j["name"] for j in report["failed"]] == ["6"]
    assert [j["name"] for j in report["incomplete"]] == ["7", "8"]


def test_plots_are_png(sweep: Path):
    md = build_report(sweep)
    for name in ("group_accuracy.png", "per_class_accuracy.png"):
        data = (sweep / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
        assert f"]({name})" in md


def test_the_knn_classifier_stage_gets_its_own_table_apart_from_the_monitor(tmp_path):
    """metrics["knn"] (stage=knn) is reported beside the probes, and metrics["pretrain"]["knn"]
    (the monitor's points) stays the monitor's; a job with only the kNN classifier is a
    completed job."""
    from sdclr.report.tables import report_tables

    for i, split in enumerate((1, 2)):
        fake_job(tmp_path, str(i), "SDCLR p=0.9 dual-BN head3", "SDCLR", split, 50.0 + i)
        metrics = json.loads((tmp_path / str(i) / "metrics.json").read_text())
        metrics["knn"] = {
            "acc": 40.0 + 2 * i,
            "many": 50.0,
            "medium": 40.0,
            "few": 30.0,
            "std": 8.0,
            "per_class": [40.0] * 10,
            "class_counts": metrics["linear"]["class_counts"],
            "k": 200,
            "temperature": 0.1,
        }
        (tmp_path / str(i) / "metrics.json").write_text(json.dumps(metrics))
    only = tmp_path / "2"  # stage=knn stage.checkpoint=...: nothing else
    only.mkdir()
    knn_only = {"acc": 30.0, "many": 40.0, "medium": 30.0, "few": 20.0, "std": 8.0}
    run = {"method": "SimCLR", "label": "SimCLR shared-BN head2", "split": 1}
    (only / "metrics.json").write_text(json.dumps({"run": run, "knn": {**knn_only, "k": 20}}))
    (only / "status.json").write_text(json.dumps({"status": "completed"}))

    md = build_report(tmp_path)
    summary = json.loads((tmp_path / "report.json").read_text())
    assert summary["counts"]["completed"] == 3
    simclr, sdclr = summary["methods"]
    assert sdclr["knn_stage"]["n"] == 2 and sdclr["knn_stage"]["acc"]["mean"] == pytest.approx(41)
    assert sdclr["knn_stage"]["k"] == [200] and sdclr["knn_stage"]["temperature"] == [0.1]
    assert sdclr["knn"]["epoch"] == [4]  # the monitor's summary, as before
    assert simclr["knn_stage"]["n"] == 1 and simclr["linear"]["n"] == 0
    section = md[md.index("## kNN classifier") :]
    rows = {c[0]: c for c in map(cells, section.splitlines()[:10]) if c}
    assert rows["SimCLR shared-BN head2"][1:3] == ["1", "30.00 ± 0.00"]
    assert rows["SDCLR p=0.9 dual-BN head3"][1:3] == ["2", "41.00 ± 1.00"]
    assert rows["SDCLR p=0.9 dual-BN head3"][-2:] == ["200", "0.1"]
    assert "## kNN monitor (last monitored epoch)" in md
    tables = report_tables(summary)
    assert tables["results/knn"]["data"][1][:4] == ["SDCLR p=0.9 dual-BN head3", "ours", 2, 41.0]
    assert {r["stage"] for r in summary["per_class"]} == {"linear", "fewshot", "knn"}


def test_a_sweep_without_the_knn_classifier_has_no_knn_table(sweep: Path):
    md = build_report(sweep)
    assert "## kNN classifier" not in md
    summary = json.loads((sweep / "report.json").read_text())
    assert all(m["knn_stage"]["n"] == 0 for m in summary["methods"])


def test_the_report_links_each_jobs_map_of_its_test_features(tmp_path):
    """A job of stage=embed (nothing else in its metrics) is a finished job, and the report
    links its embed.png (and the random-init map) relative to the report; a recorded map
    whose PNG is gone is left out."""
    sweep = tmp_path / "sweep"
    fake_job(sweep, "0_probes", "SDCLR p=0.9 dual-BN head3", "SDCLR", 1, 50.0)
    run = {"method": "SimCLR", "label": "SimCLR shared-BN head2", "split": 1}
    for name, keys in (("1_embed", ("embed", "embed_random_init")), ("2_gone", ("embed",))):
        job = sweep / name
        job.mkdir()
        metrics = {"run": run}
        for key in keys:
            png = job / f"{key}.png"
            metrics[key] = {
                "path": str(png),
                "method": "tsne",
                "points": 500,
                "trustworthiness": 0.9,
            }
            if name != "2_gone":
                png.write_bytes(PNG_MAGIC)
        (job / "metrics.json").write_text(json.dumps(metrics))
        (job / "status.json").write_text(json.dumps({"status": "completed"}))
    md = build_report(sweep, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "report.json").read_text())
    assert summary["counts"]["completed"] == 3 and summary["counts"]["incomplete"] == 0
    assert [(m["job"], m["stage"]) for m in summary["embed_maps"]] == [
        ("1_embed", "embed"),
        ("1_embed", "embed_random_init"),
    ]
    section = md[md.index("## Maps of the test features") :]
    assert "![1_embed embed](../sweep/1_embed/embed.png)" in section
    assert "![1_embed embed_random_init](../sweep/1_embed/embed_random_init.png)" in section
    assert "t-SNE of 500 test images, trustworthiness 0.900" in section
    assert "2_gone" not in section
    # in the sweep directory itself (the report at the end of a multirun): 1_embed/embed.png
    assert "](1_embed/embed.png)" in build_report(sweep)


def test_a_sweep_without_maps_has_no_maps_section(sweep: Path):
    assert "## Maps of the test features" not in build_report(sweep)
