"""``python -m sdclr.report DIR``."""

import sys

from sdclr.report.build import main

sys.exit(main())
