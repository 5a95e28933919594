"""``python -m sdclr.bench``: the benchmark lives in :mod:`sdclr.cli.bench`."""

import sys

from sdclr.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
