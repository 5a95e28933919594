"""One sweep, one directory: ``sdclr -m`` with Hydra's default directories (no
``hydra.sweep.dir`` override, in a fresh working directory), jobs that start in different
seconds, one W&B group, the report built at the end, and ``make report DIR=`` rebuilding it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from runs import ONE_EPOCH, ok
from wandb_log import records

from sdclr.utils.tracking import sweep_group

REPO = Path(__file__).resolve().parents[2]

FAST = ONE_EPOCH


def wandb_group(job: Path) -> str:
    (log,) = job.glob("wandb/offline-run-*/run-*.wandb")
    for rec in records(log):
        if rec.WhichOneof("record_type") == "run":
            return rec.run.run_group
    raise AssertionError(f"no run record in {log}")


def test_a_default_sweep_is_one_directory_with_one_group_and_its_report(tmp_path, env):
    cwd = tmp_path / "work"
    cwd.mkdir()
    env = dict(env, WANDB_DISABLE_GIT="true", NETRC=str(tmp_path / "no-netrc"))  # offline
    for key in ("WANDB_MODE", "SDCLR_RUN_TIME"):  # the real clock, every job its own start
        env.pop(key, None)
    out = ok(
        subprocess.run(
            [sys.executable, "-m", "sdclr", "-m", "split=split1,split2", "logger=wandb", *FAST],
            cwd=cwd,
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    )
    sweeps = sorted((cwd / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 1, [p.relative_to(cwd).as_posix() for p in sweeps]  # one directory
    sweep = sweeps[0]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [j.name for j in jobs] == [
        "0_cifar10_lt_split1_sdclr-p90",
        "1_cifar10_lt_split2_sdclr-p90",
    ]
    assert all((j / "metrics.json").is_file() for j in jobs)
    # the second job started seconds after the first (Hydra writes .hydra/ as a job starts),
    # so a time resolved per job would have named another directory
    starts = [(j / ".hydra" / "config.yaml").stat().st_mtime for j in jobs]
    assert len({time.strftime("%Y-%m-%d/%H-%M-%S", time.localtime(t)) for t in starts}) == 2
    assert {wandb_group(j) for j in jobs} == {sweep_group(sweep)}
    # the report of the sweep, built as it ended, named on the last line
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("sweep report (2 completed jobs): "), last
    assert Path(last.split(": ", 1)[1]).resolve() == (sweep / "report.md").resolve()
    built = (sweep / "report.md").read_text()
    (sweep / "report.md").unlink()
    # make report DIR= (README) rebuilds it, and finds every job
    rebuilt = subprocess.run(
        ["make", "-C", str(REPO), "report", f"DIR={sweep}", f"BIN={Path(sys.executable).parent}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert (sweep / "report.md").read_text() == built
    report = json.loads((sweep / "report.json").read_text())
    counts = report["counts"]
    assert (counts["job_dirs"], counts["completed"], counts["missing"]) == (2, 2, 0)
    assert counts["expected"] == 2 and not report["failed"] and not report["incomplete"]
    (method,) = report["methods"]
    assert sorted(method["jobs"]) == [j.name for j in jobs]
