"""Layer 6: the entry points: the Hydra runner and its stages, job files, summaries, the split and
export commands, the benchmark."""
