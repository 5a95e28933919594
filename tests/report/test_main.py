"""python -m sdclr.report (sdclr.report.__main__): errors as one line."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

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
    # job 0 also drew its map (stage.embed): the report's run carries it as an image
    png = sweep / "0" / "embed.png"
    Image.new("RGB", (8, 8), "white").save(png)
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    metrics["embed"] = {"path": str(png), "method": "pca", "points": 100}
    (sweep / "0" / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out), "--wandb"]) == 0
    (log,) = out.glob("wandb/offline-run-*/run-*.wandb")
    wait_until_written(log)
    types = media_types(log)
    for name in ("linear", "fewshot", "paired_differences", "per_class_accuracy", "problems"):
        assert types[f"results/{name}"] == "table-file", (name, types)
    assert types["group_accuracy"] == "image-file"
    assert types["maps/0/embed"] == "image-file"
    assert "## Paired differences" in capsys.readouterr().out
