"""sdclr.utils.io: files replaced whole."""

from __future__ import annotations

import pytest


def test_write_atomically_replaces_the_file_whole_and_leaves_nothing_when_it_fails(tmp_path):
    from sdclr.utils.io import write_atomically

    path = tmp_path / "metrics.json"
    path.write_text("old")
    write_atomically(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new"

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomically(path, half_then_fail)
    assert path.read_text() == "new"  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary left
