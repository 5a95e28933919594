"""Kept for one release: the runner moved to :mod:`sdclr.cli.run` (console scripts installed
before the move point here)."""

from sdclr.cli.run import main

__all__ = ["main"]
