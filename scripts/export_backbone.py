#!/usr/bin/env python
"""Export a pretrained encoder as a plain timm state_dict.

python scripts/export_backbone.py outputs/runs/.../checkpoints/pretrain.pt backbone.pth
"""

import sys

from sdclr.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
