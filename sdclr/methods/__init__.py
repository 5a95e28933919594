"""Layer 4: the two-branch methods (SimCLR / SDCLR, MoCo, BYOL), each a thin piece over models and
losses, and their registry."""
