"""Paths of what sdclr ships, computed once from where the package is (never from the
working directory): its Hydra configs and its split files; the source checkout, when there is
one; the natural sort key used wherever names are listed; and the one way files are replaced
whole (:func:`write_atomically`).

The repository keeps the configs in ``conf/`` and the split files in ``splits/``, next to the
package; a wheel carries them inside it as package data, ``sdclr/conf`` and
``sdclr/splits_data`` (pyproject.toml maps the two folders onto those packages). So an
installed wheel finds them inside the package, and a source tree or an editable install
(``make install``), whose package folder has neither, finds them beside it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# The source checkout the package runs from (a source tree or an editable install): the folder
# above the package, with pyproject.toml and conf/. None for an installed wheel.
REPO: Path | None = (
    PACKAGE_DIR.parent
    if (PACKAGE_DIR.parent / "pyproject.toml").is_file() and (PACKAGE_DIR.parent / "conf").is_dir()
    else None
)


def _shipped(packaged: str, in_checkout: str) -> Path:
    """A folder sdclr ships: inside the package when installed from a wheel, else the
    checkout's."""
    inside = PACKAGE_DIR / packaged
    if inside.is_dir() or REPO is None:
        return inside
    return REPO / in_checkout


CONF_DIR = _shipped("conf", "conf")
# The shipped split files (read-only: generated splits and lists are written under split.dir,
# by default <data.cache_dir>/splits, see sdclr.data.splits.splits_dir): official/ and the
# committed generated CIFAR-10 splits, cifar10/split<i>.npz.
SPLITS_DIR = _shipped("splits_data", "splits")
# The reference code's own split files (VITA-Group/SDCLR at f1490fc), one folder per dataset
# (cifar10, cifar100, imagenet100): the default split.source=official reads them.
OFFICIAL_SPLITS_DIR = SPLITS_DIR / "official"


def natural_key(text: str) -> list[int | str]:
    """Sort key that orders embedded numbers by value (``split2`` before ``split10``). The
    split alternates text and digits, so two keys always compare text with text and numbers
    with numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Replace ``path`` whole: ``write(tmp)`` fills a temporary file beside it (a hidden name
    with this process's id, so two processes never share one), which is then renamed over
    ``path``. A reader never sees half a file, a crash or a kill leaves the old one, and a
    failed write leaves no temporary behind (the error is raised)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
