"""The end of a sweep (sdclr.cli.sweep): the report built by the Hydra callback, and the one
sweep directory every job of a multirun composes (basic launcher, submitit's pickle, a
requeue), with the clock moved between them through SDCLR_RUN_TIME."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sdclr.cli.sweep import SweepReport
from sdclr.config.schema import register_configs
from sdclr.utils.io import CONF_DIR
from sdclr.utils.tracking import sweep_group


def _hydra_cfg(sweep_dir: Path, debug: bool = False):
    return OmegaConf.create({"debug": debug, "hydra": {"sweep": {"dir": str(sweep_dir)}}})


def test_the_report_is_built_in_the_sweep_dir_and_named_on_the_last_line(tmp_path, capsys):
    from fake_sweep import write_sweep

    sweep = write_sweep(tmp_path)
    callback = SweepReport()
    callback.on_multirun_start(_hydra_cfg(sweep))
    callback.on_multirun_end(_hydra_cfg(sweep))
    out, err = capsys.readouterr()
    assert err == ""
    last = out.strip().splitlines()[-1]
    assert last.endswith(f"{sweep.absolute() / 'report.md'}")
    assert last.startswith("sweep report (6 completed, 1 failed, 2 incomplete, 1 missing jobs): ")
    assert "## Full-shot" in (sweep / "report.md").read_text()
    assert (sweep / "report.json").is_file()


@pytest.mark.parametrize("debug", [False, True])
def test_a_report_that_cannot_be_built_is_one_error_line(tmp_path, capsys, debug):
    empty = tmp_path / "multirun" / "2026-11-22" / "10-00-00"
    empty.mkdir(parents=True)
    SweepReport().on_multirun_end(_hydra_cfg(empty, debug=debug))  # never raises
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: the sweep's report was not built (no job dirs found")
    assert f"make report DIR={empty.absolute()}" in lines[-1]
    assert ("Traceback" in err) is debug  # the traceback only with debug=true


def test_a_failing_report_builder_is_one_error_line(tmp_path, capsys, monkeypatch):
    from fake_sweep import write_sweep

    def broken(*args, **kwargs):
        raise RuntimeError("plots\nbroke")

    monkeypatch.setattr("sdclr.report.build.build_report", broken)
    SweepReport().on_multirun_end(_hydra_cfg(write_sweep(tmp_path)))
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "RuntimeError: plots broke" in err and "Traceback" not in err


def test_only_rank_zero_builds_the_report(tmp_path, capsys, monkeypatch):
    from fake_sweep import write_sweep

    sweep = write_sweep(tmp_path)
    monkeypatch.setenv("RANK", "1")
    SweepReport().on_multirun_end(_hydra_cfg(sweep))
    assert capsys.readouterr() == ("", "") and not (sweep / "report.md").exists()


def test_the_callback_is_registered_in_the_config():
    from hydra.utils import get_class

    cfg = OmegaConf.load(CONF_DIR / "config.yaml")
    assert get_class(cfg.hydra.callbacks.sweep_report._target_) is SweepReport


@pytest.fixture()
def loader():
    """Hydra's config loader on the suite's config, as the sweeper and launchers use it."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield GlobalHydra.instance().config_loader()
    GlobalHydra.instance().clear()


def _master(loader, launcher: str | None):
    from hydra.types import RunMode

    overrides = ["seed=0,1"] + ([f"hydra/launcher={launcher}"] if launcher else [])
    return loader.load_configuration("config", overrides=overrides, run_mode=RunMode.MULTIRUN)


@pytest.mark.parametrize("launcher", [None, "submitit_local", "slurm"])
def test_every_job_of_a_multirun_composes_the_sweep_dir_it_started_with(
    loader, monkeypatch, launcher
):
    """Jobs that start seconds after the sweep (the basic launcher runs them one after the
    other), on another node from submitit's pickle of the launcher, or requeued from it later,
    all compose the sweep directory (and so the W&B group) the sweep started with."""
    if launcher:
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.setenv("SDCLR_RUN_TIME", "2026-11-22T23:59:58")
    master = _master(loader, launcher)
    callback = SweepReport()
    callback.on_multirun_start(master)  # Hydra calls it first, on the submitting side
    sweep_dir = str(master.hydra.sweep.dir)
    assert sweep_dir == "outputs/multirun/2026-11-22/23-59-58"
    assert str(callback.sweep_dir) == sweep_dir
    pickled = pickle.dumps(master)  # what submitit sends with each job (and each requeue)
    dirs = []
    for started, source in [
        ("2026-11-22T23:59:59", lambda: master),  # job 0, a second later
        ("2026-11-23T00:00:07", lambda: master),  # job 1, the next day
        ("2026-11-23T00:00:09", lambda: pickle.loads(pickled)),  # on a node
        ("2026-11-23T03:10:00", lambda: pickle.loads(pickled)),  # requeued hours later
    ]:
        monkeypatch.setenv("SDCLR_RUN_TIME", started)
        job = loader.load_sweep_config(source(), ["seed=1"])
        dirs.append(str(job.hydra.sweep.dir))
        if launcher:
            assert str(job.hydra.launcher.submitit_folder).startswith(sweep_dir + "/")
    assert dirs == [sweep_dir] * 4
    assert {sweep_group(d) for d in dirs} == {"2026-11-22_23-59-58"}
    # the clock is really read: a sweep composed now gets a directory of its own
    assert str(_master(loader, launcher).hydra.sweep.dir).endswith("2026-11-23/03-10-00")


def test_the_sweep_objective_is_read_from_the_metrics_by_its_dotted_path(capsys):
    from sdclr.cli.sweep import sweep_objective

    metrics = {"linear": {"acc": 41.5, "few": 12}, "pretrain": {"epochs": 2}}
    assert sweep_objective(metrics, "linear.acc", searching=True) == 41.5
    assert sweep_objective(metrics, "linear.few", searching=True) == 12.0
    assert sweep_objective(metrics, None, searching=True) is None
    assert capsys.readouterr().err == ""


def test_a_missing_objective_warns_only_a_searching_sweeper(capsys):
    from sdclr.cli.sweep import sweep_objective

    metrics = {"pretrain": {"epochs": 2}}  # stage=pretrain: no probe ran
    assert sweep_objective(metrics, "linear.acc", searching=False) is None
    assert capsys.readouterr().err == ""
    assert sweep_objective(metrics, "linear.acc", searching=True) is None
    err = capsys.readouterr().err
    assert err.startswith("warning: sweep.objective=linear.acc") and "pretrain" in err
    assert sweep_objective({"linear": {"acc": True}}, "linear.acc", searching=False) is None
