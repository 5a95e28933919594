"""Layer 3: the networks: backbone, the contrastive model with its dense and pruned branches,
pruning, checkpoints and export."""
