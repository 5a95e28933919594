"""A log a batch job can be watched by: with stdout not a terminal, one line per epoch, on
stdout and in the job directory's run.log, written as the run goes; warnings and errors on
stderr and in run.log (sdclr/utils/runlog.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from runs import TINY, read, seen_while_running

PRETRAIN = re.compile(
    r"^(?:\[[0-9: -]+\] )?pretrain epoch (\d)/4  loss \S+  lr \S+  mask 0\.100  \d+ img/s  "
    r"elapsed \d+:\d\d  eta \d+:\d\d$",
    re.M,
)
PROBE = re.compile(
    r"^(?:\[[0-9: -]+\] )?(linear|fewshot) epoch (\d)/2  loss \S+ .*\d+ img/s  "
    r"elapsed \d+:\d\d  eta \d+:\d\d$",
    re.M,
)
#: generous: the first epoch of a tiny run takes seconds to a minute on a busy CPU
TIMEOUT_S = 900


def test_epoch_lines_are_written_as_the_run_goes(tmp_path, env):
    job = tmp_path / "job"
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    env = {k: v for k, v in env.items() if k != "PYTHONUNBUFFERED"}  # the lines flush themselves
    args = [a for a in TINY if not a.startswith("pretrain.epochs=")]
    # fewshot.lr=1e30 diverges the few-shot probe: its collapse warning, every time
    args += ["pretrain.epochs=4", "fewshot.lr=1e30", f"hydra.run.dir={job}"]
    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sdclr", *args], stdout=out, stderr=err, env=env
        )
        try:
            paths = [stdout, job / "run.log"]
            assert seen_while_running(proc, paths, PRETRAIN, TIMEOUT_S), read(stderr)[-3000:]
            assert proc.wait(timeout=TIMEOUT_S) == 0, read(stderr)[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    printed, log, errors = read(stdout), read(job / "run.log"), read(stderr)
    for text in (printed, log):
        assert [int(m) for m in PRETRAIN.findall(text)] == [1, 2, 3, 4], text
        assert PROBE.findall(text) == [
            ("linear", "1"),
            ("linear", "2"),
            ("fewshot", "1"),
            ("fewshot", "2"),
        ], text
    assert "\r" not in printed + errors  # no progress bar without a terminal
    # the log's lines are the printed ones, time-stamped
    stamped = re.compile(
        r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] (pretrain|linear|fewshot) epoch ", re.M
    )
    assert len(stamped.findall(log)) == 8, log
    assert "job directory:" in log  # the summary, at the end
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["fewshot"]["collapsed"]
    warnings = [line for line in errors.splitlines() if line.startswith("warning:")]
    assert any(line.startswith("warning: fewshot probe collapsed") for line in warnings)
    for line in warnings:
        assert line in log


def test_the_error_line_is_also_in_run_log(tmp_path, env):
    job = tmp_path / "job"
    out = subprocess.run(
        [sys.executable, "-m", "sdclr", "pretrain.epochs=0", f"hydra.run.dir={job}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.splitlines()  # still exactly one error line on stderr
    assert line.startswith("error: ") and "pretrain.epochs" in line
    assert read(job / "run.log").splitlines()[-1].endswith(line)
