"""Reading a sweep (sdclr.report.jobs): job dirs in natural order, the sweep spec."""

from __future__ import annotations

from pathlib import Path

from sdclr.report.jobs import find_job_dirs, missing_combinations, read_sweep_spec


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


def test_missing_combinations_compare_values_as_hydra_reads_them():
    """Hydra writes a job's overrides in its own spelling (``smoke=True`` for the command
    line's ``smoke=true``, ``[8, 16]`` for ``[8,16]``): the job is there, not missing."""
    spec = {"seed": ["0", "1"], "smoke": ["true"], "backbone.channels": ["[8,16]"]}
    jobs = [{"overrides": [f"seed={s}", "smoke=True", "backbone.channels=[8, 16]"]} for s in (0, 1)]
    assert missing_combinations(spec, jobs) == []
    assert missing_combinations(spec, jobs[:1]) == [
        ["seed=1", "smoke=true", "backbone.channels=[8,16]"]
    ]
    assert missing_combinations({"lr": ["1"]}, [{"overrides": ["lr=1.5"]}]) == [["lr=1"]]
