"""Paired differences, the exact sign-flip test, published numbers, collapsed probes and the
report's tables (sdclr.report.paired, sdclr.report.tables), against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from fake_sweep import SDCLR, SIMCLR, cells, job_metrics, write_job, write_sweep

from sdclr.report.build import build_report, read_tables
from sdclr.report.paired import sign_flip_p


def test_sign_flip_p_by_hand():
    # [1, 2, 3]: the 8 signed sums are 6, 4, 2, 0, 0, -2, -4, -6; |sum| >= 6 twice
    assert sign_flip_p([1.0, 2.0, 3.0]) == 0.25
    # |d| = 2, 1, 3, .5, .5 (sum 7), observed sum 4: |S| >= 4 when the negated |d| sum to
    # <= 1.5 ({}, {1}, {.5}, {.5}, {.5,.5}, {1,.5}, {1,.5}: 7) or >= 5.5 (their 7
    # complements), so p = 14 / 32
    assert sign_flip_p([2.0, -1.0, 3.0, 0.5, -0.5]) == 14 / 32
    # five splits all in favour: the smallest p five splits can give
    assert sign_flip_p([0.4, 1.0, 2.5, 0.1, 3.0]) == 2 / 32
    assert sign_flip_p([0.0, 0.0]) == 1.0
    assert sign_flip_p([]) is None
    # a sum that another order rounds differently still counts as the observed one
    assert sign_flip_p([0.1, 0.2, 0.3]) == sign_flip_p([1.0, 2.0, 3.0])


def _paired(report, stage, metric):
    (entry,) = [e for e in report["paired"] if e["stage"] == stage]
    assert (entry["a"], entry["b"]) == (SIMCLR, SDCLR)
    return entry[metric]


def test_report_pairs_the_methods_split_by_split(tmp_path: Path):
    sweep = write_sweep(tmp_path)
    md = build_report(sweep)
    report = json.loads((sweep / "report.json").read_text())
    acc = _paired(report, "linear", "acc")
    # SDCLR - SimCLR on splits 1, 2, 3 (tests/fake_sweep.py): 85-80, 85-82, 88-84
    assert acc["splits"] == ["1", "2", "3"] and acc["diffs"] == [5.0, 3.0, 4.0]
    assert acc["mean"] == pytest.approx(4.0)
    assert acc["std"] == pytest.approx(math.sqrt(2 / 3))
    assert acc["p"] == 0.25  # 2 of the 8 sign patterns reach |sum| 12
    assert _paired(report, "linear", "many")["diffs"] == [-2.0, -2.0, -2.0]
    assert _paired(report, "linear", "std")["diffs"] == [-4.0, -2.0, -3.0]
    assert _paired(report, "fewshot", "few")["diffs"] == [10.0, 9.0, 11.0]
    assert "## Paired differences (same split, B - A)" in md
    rows = [c for c in map(cells, md.splitlines()) if c and c[0] == f"{SDCLR} - {SIMCLR}"]
    acc_row = [r for r in rows if r[1] == "Acc"][0]
    assert acc_row[2:] == ["3", "1: +5.00, 2: +3.00, 3: +4.00", "4.00 ± 0.82", "0.25"]
    assert len(rows) == 10  # 5 metrics x 2 stages
    # three splits are not the paper's five: no published row
    assert "(published)" not in md


def test_a_collapsed_probe_is_flagged_and_never_averaged(tmp_path: Path):
    sweep = write_sweep(tmp_path)
    metrics_path = sweep / "0" / "metrics.json"  # SimCLR split 1
    metrics = json.loads(metrics_path.read_text())
    metrics["linear"].update(
        acc=10.0, collapsed=True, collapse_reason="best validation top-1 at chance"
    )
    metrics_path.write_text(json.dumps(metrics))
    md = build_report(sweep)
    report = json.loads((sweep / "report.json").read_text())
    assert report["counts"]["collapsed"] == 1
    simclr = report["methods"][0]
    assert simclr["linear"]["n"] == 2 and simclr["linear"]["jobs"] == ["1", "2"]
    assert simclr["linear"]["acc"]["mean"] == pytest.approx(83.0)  # splits 2 and 3 only
    assert simclr["linear"]["collapsed"] == [
        {"job": "0", "split": 1, "reason": "best validation top-1 at chance"}
    ]
    assert simclr["fewshot"]["n"] == 3  # its few-shot probe stands
    assert _paired(report, "linear", "acc")["diffs"] == [3.0, 4.0]
    assert "1 collapsed probe results (listed apart, not averaged)" in md
    assert "## Collapsed probes (not averaged)" in md
    row = [c for c in map(cells, md.splitlines()) if c and c[0] == "0"]
    assert row == [["0", SIMCLR, "linear", "1", "best validation top-1 at chance"]]
    linear_table = md.split("## Full-shot (linear probe)")[1].split("##")[0]
    head = cells(linear_table.strip().splitlines()[0])
    simclr_row = cells(linear_table.strip().splitlines()[2])
    assert head[-1] == "Collapsed" and simclr_row[-1] == "1" and simclr_row[1] == "2"
    problems = read_tables(sweep)["results/problems"]
    assert ["0", "collapsed", "linear", "best validation top-1 at chance"] in problems["data"]


def _paper_run(**changes) -> dict:
    """The run record fields of a job at the paper's setting, from the suite's own defaults
    (so the test also says that the defaults are the published protocol)."""
    from sdclr.cli.summary import protocol_record
    from sdclr.config.compose import compose_config

    run = {
        "split_source": "official",
        "fraction": 1.0,
        "smoke": False,
        "protocol": protocol_record(compose_config(["data=cifar10_lt"])),
    }
    for key, value in changes.items():
        if key.startswith("linear_"):
            run["protocol"]["linear"][key[len("linear_") :]] = value
        elif key in run["protocol"]:
            run["protocol"][key] = value
        else:
            run[key] = value
    return run


def _paper_sweep(root: Path, splits=range(1, 6), **changes) -> Path:
    root.mkdir(parents=True)
    labels = {"SimCLR": "SimCLR shared-BN head2", "SDCLR": "SDCLR p=0.9 dual-BN head3"}
    run = _paper_run(**changes)
    for i, (method, label) in enumerate(labels.items()):
        for split in splits:
            m = job_metrics(label, method, split)
            bn, depth = label.split()[-2][:-3], int(label[-1])
            m["run"].update(bn=bn, head_depth=depth, **run)
            for stage in ("linear", "fewshot"):
                m[stage]["acc"] = 80.0 + i * split  # SDCLR ahead by the split index
            write_job(root, f"{i}{split}", [f"method={method.lower()}", f"split=split{split}"], m)
    return root


def test_the_paper_setting_prints_the_published_numbers_beside_ours(tmp_path: Path):
    sweep = _paper_sweep(tmp_path / "paper")
    md = build_report(sweep)
    lines = md.split("## Full-shot (linear probe)")[1].split("## ")[0].strip().splitlines()
    rows = {c[0]: c for c in map(cells, lines) if c}
    assert rows["SimCLR (published)"][2:6] == ["-", "78.18 ± 4.18", "76.23 ± 5.33", "71.37 ± 7.07"]
    assert rows["SDCLR (published)"][2:6] == ["-", "86.44 ± 3.12", "81.84 ± 4.78", "76.23 ± 6.29"]
    order = [c[0] for c in map(cells, lines) if c][2:]
    assert order == [
        "SimCLR shared-BN head2",
        "SimCLR (published)",
        "SDCLR p=0.9 dual-BN head3",
        "SDCLR (published)",
    ]
    assert "Rows marked (published): Jiang et al., Self-Damaging Contrastive Learning" in md
    assert "Table 4" in md and "issue #2" in md
    assert "No published row beside" not in md
    # the legend: points here, a fraction in the reference's analysis script
    assert "percentage points (the reference's analysis script gives it as a fraction" in md
    few = md.split("## Few-shot")[1].split("## ")[0]
    assert "(published)" not in few  # the paper's numbers are full-shot
    report = json.loads((sweep / "report.json").read_text())
    (acc,) = [e["acc"] for e in report["paired"] if e["stage"] == "linear"]
    assert acc["diffs"] == [1.0, 2.0, 3.0, 4.0, 5.0] and acc["p"] == 2 / 32
    tables = read_tables(sweep)
    results = tables["results/linear"]
    col = results["columns"].index
    published = [r for r in results["data"] if r[col("source")] == "published"]
    assert [(r[col("method")], r[col("many_mean")], r[col("many_std")]) for r in published] == [
        ("SimCLR", 78.18, 4.18),
        ("SDCLR", 86.44, 3.12),
    ]
    per_class = tables["results/per_class_accuracy"]
    assert len(per_class["data"]) == 10 * 2 * 10  # jobs x stages x classes
    assert {"job", "method", "stage", "split", "class", "class_count", "acc"} <= set(
        per_class["columns"]
    )
    paired = tables["results/paired_differences"]
    assert len(paired["data"]) == 2 * 5  # stages x metrics


def test_accuracy_gain_and_its_standard_error_by_hand():
    from sdclr.report.paired import accuracy_gain

    gain, se = accuracy_gain(60.0, 50.0, 1000)
    # sqrt(0.6 * 0.4 / 1000 + 0.5 * 0.5 / 1000) = sqrt(0.00049) = 0.0221359...
    assert gain == 10.0 and se == pytest.approx(2.2135943621178655)
    assert accuracy_gain(100.0, 0.0, 10) == (100.0, 0.0)
    assert accuracy_gain(50.0, 50.0, 0)[1] == math.inf


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"split_source": "generated"}, "split.source=generated ran, the paper's is official"),
        ({"pretrain_epochs": 2}, "pretrain.epochs=2 ran, the paper's is 2000"),
        ({"fraction": 0.05}, "data.fraction=0.05 ran, the paper's is 1"),
        (
            {"linear_lr_step": "epoch_end"},
            "linear.lr_step=epoch_end ran, the paper's is epoch_start",
        ),
        ({"linear_normalize": True}, "linear.normalize=true ran, the paper's is false"),
        ({"dataset": "cifar100_lt"}, "data=cifar100_lt ran, the paper's is cifar10_lt"),
    ],
)
def test_any_other_setting_shows_no_published_row_and_says_why(tmp_path: Path, changes, reason):
    md = build_report(_paper_sweep(tmp_path / "sweep", **changes))
    linear = md.split("## Full-shot (linear probe)")[1].split("## ")[0]
    assert "(published)" not in linear
    assert f"SimCLR shared-BN head2: {reason}" in linear
    assert f"SDCLR p=0.9 dual-BN head3: {reason}" in linear


def test_published_rows_need_all_five_splits_and_a_recorded_schedule(tmp_path: Path):
    md = build_report(_paper_sweep(tmp_path / "four", splits=range(1, 5)))
    assert "(published)" not in md
    assert "splits 1, 2, 3, 4 ran, the paper averages all five" in md
    sweep = _paper_sweep(tmp_path / "old")
    for metrics_path in sweep.glob("*/metrics.json"):  # jobs of an older version
        metrics = json.loads(metrics_path.read_text())
        del metrics["run"]["protocol"]
        metrics_path.write_text(json.dumps(metrics))
    md = build_report(sweep)
    assert "(published)" not in md
    assert "do not record their schedule (run by an older version)" in md


def test_only_the_papers_recipes_get_a_published_row(tmp_path: Path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    for split in range(1, 6):  # SDCLR at p=0.9 but with shared BN: not the paper's recipe
        m = job_metrics("SDCLR p=0.9 shared-BN head3", "SDCLR", split)
        m["run"].update(bn="shared", head_depth=3, **_paper_run())
        write_job(sweep, str(split), [f"split=split{split}"], m)
    md = build_report(sweep)
    assert "(published)" not in md
    assert "the paper publishes plain SimCLR and SDCLR p=0.9 (dual BN, three-layer head) only" in md


def test_collapsed_probes_still_get_their_reason(tmp_path: Path):
    sweep = _paper_sweep(tmp_path / "sweep", fraction=0.02)
    for metrics_path in sweep.glob("*/metrics.json"):  # every full-shot probe collapsed
        metrics = json.loads(metrics_path.read_text())
        metrics["linear"].update(collapsed=True, collapse_reason="at chance")
        metrics_path.write_text(json.dumps(metrics))
    md = build_report(sweep)
    assert "SimCLR shared-BN head2: data.fraction=0.02 ran, the paper's is 1" in md
    sweep = _paper_sweep(tmp_path / "paper")
    for metrics_path in sweep.glob("*/metrics.json"):
        metrics = json.loads(metrics_path.read_text())
        metrics["linear"].update(collapsed=True, collapse_reason="at chance")
        metrics_path.write_text(json.dumps(metrics))
    md = build_report(sweep)
    assert "(published)" not in md
    assert "SimCLR shared-BN head2: no full-shot result that did not collapse" in md
