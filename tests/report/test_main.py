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
