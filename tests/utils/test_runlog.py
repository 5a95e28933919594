"""The run's console lines and its job directory's run.log (sdclr/utils/runlog.py), and the
epoch line (sdclr/utils/progress.py EpochLines)."""

from __future__ import annotations

import re
import sys
import warnings

import pytest

from sdclr.utils import progress, runlog
from sdclr.utils.progress import EpochLines
from sdclr.utils.runlog import append_to, job_log, note, progress_line, warn


def logged(job_dir) -> list[str]:
    """run.log's lines without their time stamps."""
    text = (job_dir / "run.log").read_text()
    return [re.sub(r"^\[[0-9: -]+\] ", "", line) for line in text.splitlines()]


def terminals(monkeypatch, stdout: bool, stderr: bool) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: stdout, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: stderr, raising=False)


def test_each_kind_of_line_goes_to_its_stream_and_to_run_log(tmp_path, capsys, monkeypatch):
    terminals(monkeypatch, False, False)
    with job_log(tmp_path):
        progress_line("pretrain epoch 1/4  loss 5.0")
        note("kNN monitor off")
        warn("linear probe collapsed: at chance")
    out, err = capsys.readouterr()
    assert out.splitlines() == ["pretrain epoch 1/4  loss 5.0", "kNN monitor off"]
    assert err.splitlines() == ["warning: linear probe collapsed: at chance"]
    assert logged(tmp_path) == [
        "pretrain epoch 1/4  loss 5.0",
        "kNN monitor off",
        "warning: linear probe collapsed: at chance",
    ]


def test_lines_are_in_run_log_as_written(tmp_path, capsys):
    with job_log(tmp_path):
        progress_line("pretrain epoch 1/4")
        assert logged(tmp_path) == ["pretrain epoch 1/4"]  # flushed, the job still running


def test_on_a_terminal_the_bars_show_progress_and_nothing_is_said_twice(
    tmp_path, capsys, monkeypatch
):
    terminals(monkeypatch, True, True)
    assert not runlog.lines_on_stdout()
    with job_log(tmp_path):
        progress_line("pretrain epoch 1/4")
    assert capsys.readouterr().out == ""
    assert logged(tmp_path) == ["pretrain epoch 1/4"]
    # stdout a file, or the bars off (stderr not a terminal): the lines are printed
    for out, err in ((False, True), (True, False)):
        terminals(monkeypatch, out, err)
        assert runlog.lines_on_stdout()


def test_python_warnings_reach_run_log_and_stderr(tmp_path, monkeypatch):
    shown = []  # what prints a warning on stderr, as always
    monkeypatch.setattr(warnings, "showwarning", lambda message, *args: shown.append(message))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with job_log(tmp_path):
            warnings.warn("W&B could not start; logging to metrics.jsonl only", stacklevel=1)
        warnings.warn("after the job", stacklevel=1)
    assert [str(m) for m in shown] == [
        "W&B could not start; logging to metrics.jsonl only",
        "after the job",
    ]
    (line,) = logged(tmp_path)
    assert line.startswith("warning: UserWarning: W&B could not start; logging to metrics.jsonl")


def test_no_job_log_no_file_and_no_duplicate(tmp_path, capsys):
    warn("outside a job")
    with job_log(tmp_path, enabled=False):  # ranks other than 0
        warn("rank 1")
    assert capsys.readouterr().err.splitlines() == ["warning: outside a job", "warning: rank 1"]
    assert not (tmp_path / "run.log").exists()
    with job_log(tmp_path / "missing"):  # a log that cannot be opened: the run goes on
        note("still here")


def test_the_error_a_run_ends_with_is_appended(tmp_path):
    (tmp_path / "run.log").write_text("[2026-01-01 00:00:00] pretrain epoch 1/4\n")
    append_to(tmp_path, "error: the loss became nan")
    assert logged(tmp_path) == ["pretrain epoch 1/4", "error: the loss became nan"]
    append_to(tmp_path / "missing", "error: nowhere")  # left alone, no exception


def test_epoch_line(monkeypatch):
    clock = iter([100.0, 130.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    lines = EpochLines("pretrain", 4)
    line = lines.line(1, 900, 3.0, loss=5.23791, lr=0.5, mask=0.1, knn=None)
    assert line == (
        "pretrain epoch 1/4  loss 5.2379  lr 0.5  mask 0.100  300 img/s  elapsed 0:30  eta 1:30"
    )


def test_epoch_line_of_a_resumed_run_and_a_runaway_probe(monkeypatch):
    clock = iter([0.0, 3700.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    lines = EpochLines("linear", 10, done=8)  # resumed after epoch 8: one epoch run here
    line = lines.line(9, 100, 0.0, loss=2747473.92, val=10.0)
    assert line == "linear epoch 9/10  loss 2.747e+06  val 10.00  elapsed 1:01:40  eta 1:01:40"


@pytest.mark.parametrize("enabled", [True, False])
def test_epoch_lines_print_only_when_enabled(enabled, capsys, monkeypatch):
    terminals(monkeypatch, False, False)
    EpochLines("fewshot", 2, enabled=enabled)(1, 10, 1.0, loss=2.3)
    assert ("fewshot epoch 1/2" in capsys.readouterr().out) == enabled
