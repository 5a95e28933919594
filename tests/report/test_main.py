"""python -m sdclr.report (sdclr.report.__main__): errors as one line."""

from __future__ import annotations

from pathlib import Path

from sdclr.report.__main__ import main


def test_missing_dir_errors(tmp_path: Path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err and "\n" not in err
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no job dirs" in err and "\n" not in err


def test_wandb_gets_the_reports_tables_as_tables(tmp_path: Path, monkeypatch, capsys):
    from fake_sweep import write_sweep
    from wandb_log import media_types, wait_until_written

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no credentials: offline
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    sweep = write_sweep(tmp_path)
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out), "--wandb"]) == 0
    (log,) = out.glob("wandb/offline-run-*/run-*.wandb")
    wait_until_written(log)
    types = media_types(log)
    for name in ("linear", "fewshot", "paired_differences", "per_class_accuracy", "problems"):
        assert types[f"results/{name}"] == "table-file", (name, types)
    assert types["group_accuracy"] == "image-file"
    assert "## Paired differences" in capsys.readouterr().out
