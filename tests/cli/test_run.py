"""The stage sequence of a run (sdclr.cli.run.run_stages): a stop signal that arrives during
a stage that finishes anyway stops the run before the next stage begins."""

from __future__ import annotations

import signal

import pytest

from sdclr.cli import run as run_module
from sdclr.cli.run import run_stages
from sdclr.utils.signals import Interrupted, StopSignal


class RecordedJob:
    """What run_stages asks of a job: its status and metrics writes, in order."""

    wandb_id = None

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def write_status(self, status: str, stage: str, wandb_id=None) -> None:
        self.calls.append((status, stage))

    def write_metrics(self) -> None:
        self.calls.append(("metrics", ""))


def test_a_signal_during_a_stage_stops_the_run_before_the_next(monkeypatch):
    ran = []

    def knn(job, stage, stop):  # the kNN classifier runs to its end whatever arrives
        ran.append(stage)
        signal.raise_signal(signal.SIGTERM)

    def probe(job, stage, stop):
        ran.append(stage)

    monkeypatch.setitem(run_module.STAGES, "knn", knn)
    monkeypatch.setitem(run_module.STAGES, "linear", probe)
    job = RecordedJob()
    with pytest.raises(Interrupted, match="SIGTERM received: stopped before the linear stage"):
        with StopSignal() as stop:
            run_stages(job, ["knn", "linear"], stop)
    assert ran == ["knn"]  # the probe never started
    assert job.calls == [("running", "knn"), ("metrics", "")]  # the kNN result was kept


def test_without_a_signal_every_stage_runs(monkeypatch):
    ran = []
    for name in ("knn", "linear"):
        monkeypatch.setitem(run_module.STAGES, name, lambda job, stage, stop: ran.append(stage))
    with StopSignal() as stop:
        run_stages(RecordedJob(), ["knn", "linear"], stop)
    assert ran == ["knn", "linear"]
