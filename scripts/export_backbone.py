#!/usr/bin/env python
"""Export a pretrained encoder as a plain timm state_dict (``sdclr-export CHECKPOINT --out
OUT --format pth`` under its old command line; ``sdclr-export CHECKPOINT --out DIR`` writes
the safetensors folder timm loads).

python scripts/export_backbone.py outputs/runs/.../checkpoints/pretrain.pt backbone.pth
"""

import sys

from sdclr.cli.export import legacy_main

if __name__ == "__main__":
    sys.exit(legacy_main())
