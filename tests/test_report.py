"""Tests for sdclr.report: aggregation over a fake Hydra multirun sweep."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sdclr.report.__main__ import main
from sdclr.report.build import build_report
from sdclr.report.jobs import find_job_dirs, read_sweep_spec
from sdclr.report.render import format_job_metrics, format_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIMCLR = "SimCLR"
SDCLR = "SDCLR p=0.9 dual-BN head3"
N_CLASSES = 10
COUNTS = [500, 300, 180, 110, 65, 40, 24, 14, 9, 5]

# (label, method, split) -> linear numbers (acc, many, medium, few, std); fewshot = linear - 10
LINEAR = {
    (SIMCLR, "SimCLR", 1): (80.0, 90.0, 80.0, 70.0, 8.0),
    (SIMCLR, "SimCLR", 2): (82.0, 91.0, 81.0, 72.0, 7.0),
    (SIMCLR, "SimCLR", 3): (84.0, 92.0, 85.0, 74.0, 6.0),
    (SDCLR, "SDCLR", 1): (85.0, 88.0, 86.0, 80.0, 4.0),
    (SDCLR, "SDCLR", 2): (85.0, 89.0, 84.0, 81.0, 5.0),
    (SDCLR, "SDCLR", 3): (88.0, 90.0, 88.0, 85.0, 3.0),
}


def _probe(acc, many, medium, few, std, split):
    # Each split has its own class order: rotate the counts by the split index.
    counts = COUNTS[split:] + COUNTS[:split]
    per_class = [acc + (c - 100) / 50 for c in counts]
    return {
        "acc": acc,
        "many": many,
        "medium": medium,
        "few": few,
        "std": std,
        "per_class": per_class,
        "groups": {"many": [0, 1, 2], "medium": [3, 4, 5, 6], "few": [7, 8, 9]},
        "class_counts": counts,
        "seconds": 30.0,
    }


def _job(root: Path, name: str, overrides: list[str], metrics=None, status=None) -> Path:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if status is not None:
        (job / "status.json").write_text(json.dumps(status))
    return job


def _metrics(label, method, split, linear=True, fewshot=True):
    m = {
        "run": {
            "method": method,
            "label": label,
            "dataset": "cifar10_lt",
            "split": split,
            "pretrain_set": "D_i",
            "backbone": "resnet18",
            "seed": 0,
        },
        "pretrain": {"epochs": 2000, "final_loss": 5.0 + split / 10, "seconds": 100.0},
    }
    nums = LINEAR[(label, method, split)] if (label, method, split) in LINEAR else (50.0,) * 5
    if linear:
        m["linear"] = _probe(*nums, split)
    if fewshot:
        m["fewshot"] = _probe(*(v - 10 for v in nums[:4]), nums[4] + 1, split)
    return m


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "2026-11-22" / "10-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(
        "hydra:\n"
        "  overrides:\n"
        "    task:\n"
        "    - method=simclr,sdclr\n"
        "    - split=split1,split2,split3,split4,split5\n"
        "    - data=cifar10_lt\n"
    )
    i = 0
    for (label, method, split), _nums in LINEAR.items():
        # Jobs 3..5 (SDCLR) have no status.json: completed is inferred from metrics.json.
        status = {"status": "completed", "error": None, "stage": "fewshot"}
        _job(
            root,
            str(i),
            [f"method={method.lower()}", f"split=split{split}", "data=cifar10_lt"],
            metrics=_metrics(label, method, split),
            status=status if method == "SimCLR" else None,
        )
        i += 1
    # 6: failed after the linear probe; its linear numbers must not be averaged in.
    failed = _metrics(SIMCLR, "SimCLR", 4, fewshot=False)
    failed["linear"]["acc"] = 0.0
    _job(
        root,
        "6",
        ["method=simclr", "split=split4", "data=cifar10_lt"],
        metrics=failed,
        status={"status": "failed", "error": "RuntimeError: CUDA out of memory", "stage": "few"},
    )
    # 7: a job dir with only its Hydra config (no metrics, no status).
    _job(root, "7", ["method=sdclr", "split=split4", "data=cifar10_lt"])
    # 8: still running, pretraining only.
    _job(
        root,
        "8",
        ["method=sdclr", "split=split5", "data=cifar10_lt"],
        metrics={"run": {"method": "SDCLR", "label": SDCLR, "split": 5}, "pretrain": {}},
        status={"status": "running", "error": None, "stage": "linear"},
    )
    # method=simclr split=split5 has no job dir at all.
    return root


def _cells(line: str) -> list[str]:
    if not line.startswith("|"):
        return []
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def _pop_std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


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
    assert lin["medium"]["std"] == pytest.approx(_pop_std([80.0, 81.0, 85.0]))
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
    rows = {c[0]: c for c in map(_cells, md.splitlines()) if c and c[0] in "678"}
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


def test_missing_dir_errors(tmp_path: Path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err and "\n" not in err
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no job dirs" in err and "\n" not in err


def test_find_job_dirs_natural_order(tmp_path: Path):
    for name in ("10", "2", "1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "status.json").write_text('{"status": "running"}')
    (tmp_path / ".submitit").mkdir()
    assert [p.name for p in find_job_dirs(tmp_path)] == ["1", "2", "10"]


def test_sweep_spec_expansion(tmp_path: Path):
    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n"
        "  overrides:\n"
        "    task:\n"
        "    - seed=range(0,3)\n"
        "    - +prune=choice(none,p90)\n"
        "    - lrs=[0.1,0.2]\n"
        "  sweeper:\n"
        "    params:\n"
        "      bn: single,dual\n"
    )
    spec, warnings = read_sweep_spec(tmp_path)
    assert warnings == []
    assert spec == {
        "bn": ["single", "dual"],
        "seed": ["0", "1", "2"],
        "prune": ["none", "p90"],
        "lrs": ["[0.1,0.2]"],
    }


def test_format_job_metrics():
    metrics = _metrics(SIMCLR, "SimCLR", 1)
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
    assert "no linear or few-shot results" in only_pretrain


def test_format_table_shapes():
    from_dicts = format_table([{"a": 1.234, "b": "x|y"}, {"a": None, "b": "z"}])
    assert from_dicts.splitlines()[0].split() == ["|", "a", "|", "b", "|"]
    assert [_cells(line) for line in from_dicts.splitlines()[2:]] == [["1.23", "x\\|y"], ["-", "z"]]
    from_lists = format_table([["k", "v"], ["acc", 3.0]])
    assert from_lists.splitlines()[2] == "| acc | 3.00 |"
