"""sdclr: SimCLR and Self-Damaging Contrastive Learning on long-tailed images."""

__version__ = "0.1.0"
