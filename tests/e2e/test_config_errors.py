"""The sdclr command refuses bad input with one clear line, before any work: config values,
what Hydra cannot compose, an output directory it cannot create, data of another class count,
a checkpoint that is no checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from runs import TINY, sdclr


def test_cli_rejects_bad_values_before_any_work(tmp_path, env):
    for args, key in [
        (["prune.ratio=1.2"], "prune.ratio"),
        (["pretrain.epoch=3"], "epoch"),
        (["prune=p95"], "p95"),
    ]:
        out = sdclr([*args, f"hydra.run.dir={tmp_path / 'run'}"], env, timeout=120)
        assert out.returncode != 0
        assert key in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
        assert not (tmp_path / "run" / "metrics.json").exists()


# --- bad input the runner's own code never sees, and the cases it meets late (issue 25, 4) --
# Each: exactly one `error:` line on stderr (no traceback), exit 2, and nothing written
# elsewhere: no job directory where none was, an earlier job's files as they were.


def _run(args, env, cwd=None):
    return sdclr(args, env, timeout=300, cwd=cwd)


def _one_error(out: subprocess.CompletedProcess, code: int = 2) -> str:
    """The single `error:` line of a run that stopped on bad input with ``code``."""
    assert out.returncode == code, f"exit {out.returncode}\n{out.stderr[-3000:]}"
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    assert "Traceback" not in out.stderr and "HYDRA_FULL_ERROR" not in out.stderr, out.stderr
    return errors[0]


def _earlier_job(path: Path) -> dict[str, bytes]:
    """A job directory with an earlier run's results (their bytes, to compare after)."""
    path.mkdir(parents=True)
    (path / "status.json").write_text(json.dumps({"status": "completed", "stage": "pretrain"}))
    (path / "metrics.json").write_text(json.dumps({"earlier": {"acc": 12.5}}))
    return _results(path)


def _results(path: Path) -> dict[str, bytes]:
    return {name: (path / name).read_bytes() for name in ("status.json", "metrics.json")}


@pytest.mark.parametrize(
    "override,expected",
    [
        # an unknown group option: the group's options
        ("split=split9", ["split=split9", "split1, split2, split3, split4, split5"]),
        # an unknown key: the keys it could be
        ("foo=1", ["foo", "no key 'foo'", "pretrain", "linear"]),
        ("pretrain.foo=1", ["pretrain.foo", "no key 'foo'", "epochs, batch_size"]),
        ("pretrain.epcohs=3", ["did you mean pretrain.epochs?"]),
        # a value of the wrong type: what the key takes
        ("pretrain.epochs=abc", ["pretrain.epochs=abc", "takes an integer"]),
    ],
)
def test_what_hydra_cannot_compose_is_one_line(override, expected, tmp_path, env):
    job = tmp_path / "job"
    line = _one_error(_run([override, f"hydra.run.dir={job}"], env, cwd=tmp_path))
    assert all(text in line for text in expected), line
    assert not job.exists() and list(tmp_path.iterdir()) == []


def test_hydra_full_error_and_debug_still_show_the_traceback(tmp_path, env):
    args = ["pretrain.foo=1", f"hydra.run.dir={tmp_path / 'job'}"]
    full = _run(args, {**env, "HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0 and "Traceback" in full.stderr, full.stderr
    debug = _run([*args, "debug=true"], env)
    assert debug.returncode == 2 and "Traceback" in debug.stderr, debug.stderr
    assert [ln for ln in debug.stderr.splitlines() if ln.startswith("error:")], debug.stderr


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("multirun", [False, True])
def test_an_output_directory_that_cannot_be_created_is_one_line(multirun, tmp_path, env):
    target = f"/proc/sdclr-test-{os.getpid()}/job"
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    args = [*(["-m"] if multirun else []), *TINY, f"{key}={target}"]
    line = _one_error(_run(args, env, cwd=tmp_path))
    assert target in line and f"{key}=PATH" in line and "/proc is not writable" in line, line
    assert list(tmp_path.iterdir()) == []  # no outputs/ in the working directory either


def test_a_data_config_of_another_class_count_is_one_line(tmp_path, env, data_root, cache_dir):
    job = tmp_path / "job"
    before = _earlier_job(job)
    caches = set(cache_dir.glob("cifar100-*.npz"))
    args = ["data=cifar100_lt", f"data.root={data_root / 'cifar10-jpg.tar.gz'}", *TINY]
    line = _one_error(_run([*args, f"hydra.run.dir={job}"], env))
    assert "has 10 classes" in line and "data.num_classes=100" in line, line
    assert "data.name=cifar100_lt" in line and "choose data=cifar10_lt" in line, line
    assert _results(job) == before
    assert set(cache_dir.glob("cifar100-*.npz")) == caches  # refused before decoding


def test_a_text_file_as_the_checkpoint_is_one_line(tmp_path, env):
    job = tmp_path / "job"
    before = _earlier_job(job)
    notes = tmp_path / "notes.pt"
    notes.write_text("epochs: 2\nlr: 0.5\n")
    args = [*TINY, "stage=linear", f"stage.checkpoint={notes}", f"hydra.run.dir={job}"]
    line = _one_error(_run(args, env))
    assert f"{notes} is a text file" in line and "not a checkpoint" in line, line
    assert "checkpoints/pretrain.pt" in line and "weights_only" not in line, line
    assert _results(job) == before


def test_a_warmup_longer_than_the_pretraining_is_one_line(tmp_path, env):
    job = tmp_path / "job"
    before = _earlier_job(job)
    args = [*TINY, "pretrain.warmup_epochs=3", f"hydra.run.dir={job}"]  # TINY: 2 epochs
    line = _one_error(_run(args, env))
    assert "pretrain.warmup_epochs" in line and "3 is more than pretrain.epochs=2" in line, line
    assert "at most 2" in line, line
    assert _results(job) == before
