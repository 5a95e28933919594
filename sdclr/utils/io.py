"""Paths of the checkout, computed once: the repository, its Hydra configs and its split files;
and the natural sort key used wherever names are listed."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONF_DIR = REPO / "conf"
SPLITS_DIR = REPO / "splits"
# The reference code's own split files (VITA-Group/SDCLR at f1490fc), one folder per dataset
# (cifar10, cifar100, imagenet100): the default split.source=official reads them.
OFFICIAL_SPLITS_DIR = SPLITS_DIR / "official"


def natural_key(text: str) -> list[int | str]:
    """Sort key that orders embedded numbers by value (``split2`` before ``split10``). The
    split alternates text and digits, so two keys always compare text with text and numbers
    with numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]
