"""python -m sdclr.splits (sdclr.cli.splits): split lists written for an image folder, one
draw per split and settings, never overwritten; on conftest's small ImageNet-style ``tree``."""

from __future__ import annotations

from imagetree import folder_args


def test_splits_command_writes_lists_for_a_folder(tree, tmp_path, capsys):
    from sdclr.cli.splits import main

    args = folder_args(tree)
    profile = ["data.profile=exp", "data.head_count=20", "data.tail_count=2"]
    rc = main(["--out", str(tmp_path), "--splits", "1,2", *args, *profile])
    assert rc == 0
    out = capsys.readouterr().out
    assert "exp 20 -> 2" in out
    (folder,) = (tmp_path / "folder").iterdir()  # <out>/<data.name>/<folder key>/split<i>
    one = (folder / "split1" / "D_i.txt").read_text()
    two = (folder / "split2" / "D_i.txt").read_text()
    assert one != two  # each split draws its own class order
    rc = main(["--out", str(tmp_path), "--splits", "1", *args, *profile])
    assert rc == 0 and "exists" in capsys.readouterr().out  # never overwritten
    # other settings draw other lists: a folder key of their own, the first lists kept
    rc = main(["--out", str(tmp_path), "--splits", "1", *args, "data.tail_count=4", *profile[:2]])
    assert rc == 0 and "exp 20 -> 4" in capsys.readouterr().out
    assert len(list((tmp_path / "folder").iterdir())) == 2
    assert (folder / "split1" / "D_i.txt").read_text() == one
