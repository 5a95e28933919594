"""``python -m sdclr.splits``: the split command lives in :mod:`sdclr.cli.splits`."""

import sys

from sdclr.cli.splits import main

if __name__ == "__main__":
    sys.exit(main())
