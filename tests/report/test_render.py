"""The markdown (sdclr.report.render): a job's table, any table's shape."""

from __future__ import annotations

from fake_sweep import (
    SIMCLR,
    cells,
    job_metrics,
)

from sdclr.report.render import format_job_metrics, format_table


def test_format_job_metrics():
    metrics = job_metrics(SIMCLR, "SimCLR", 1)
    table = format_job_metrics(metrics)
    lines = table.splitlines()
    assert len(lines) == 4
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "Stage",
        "Acc",
        "Many",
        "Medium",
        "Few",
        "Std",
        "Seconds",
    ]
    assert "Full-shot" in lines[2] and "80.00" in lines[2] and "30.0" in lines[2]
    assert "Few-shot" in lines[3] and "70.00" in lines[3]
    only_pretrain = format_job_metrics({"run": {}, "pretrain": {"epochs": 1}})
    assert "no linear, few-shot or kNN results" in only_pretrain
    # the random-init baseline follows its probe; a collapsed probe is marked
    metrics["linear_random_init"] = {**metrics["linear"], "acc": 30.0, "collapsed": True}
    rows = [cells(line) for line in format_job_metrics(metrics).splitlines()[2:]]
    assert [(r[0], r[1], r[-1]) for r in rows] == [
        ("Full-shot (linear probe)", "80.00", "no"),
        ("Full-shot (linear probe), random init", "30.00", "yes"),
        ("Few-shot", "70.00", "no"),
    ]


def test_format_job_metrics_shows_the_knn_classifier_with_its_settings():
    knn = {"acc": 61.0, "many": 70.0, "medium": 60.0, "few": 50.0, "std": 8.2, "seconds": 3.0}
    metrics = {
        "run": {},
        # the kNN monitor's points are no stage result
        "pretrain": {"epochs": 1, "knn": [{"epoch": 1, "acc": 40.0}]},
        "knn": {**knn, "k": 200, "temperature": 0.1},
        "knn_random_init": {**knn, "acc": 20.0, "k": 200, "temperature": 0.1},
    }
    rows = [cells(line) for line in format_job_metrics(metrics).splitlines()[2:]]
    assert [(r[0], r[1], r[5]) for r in rows] == [
        ("kNN classifier (k=200, t=0.1)", "61.00", "8.20"),
        ("kNN classifier, random init (k=200, t=0.1)", "20.00", "8.20"),
    ]


def test_format_table_shapes():
    from_dicts = format_table([{"a": 1.234, "b": "x|y"}, {"a": None, "b": "z"}])
    assert from_dicts.splitlines()[0].split() == ["|", "a", "|", "b", "|"]
    assert [cells(line) for line in from_dicts.splitlines()[2:]] == [["1.23", "x\\|y"], ["-", "z"]]
    from_lists = format_table([["k", "v"], ["acc", 3.0]])
    assert from_lists.splitlines()[2] == "| acc | 3.00 |"
